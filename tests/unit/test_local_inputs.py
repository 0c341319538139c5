"""A model's local inputs (warmd.store.local) and the watches on them (warmd.watch): what a fingerprint
notices, which files a spec depends on, and which file events wake the catalog."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from warmd.providers import PROVIDERS
from warmd.spec import parse_spec_file
from warmd.store import local
from warmd.watch import Watches


def _touch_later(path: Path, data: bytes) -> None:
    """Rewrite keeping the size, with a later mtime (coarse clocks would hide a same-tick rewrite)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_fingerprint_sees_edits_in_place_replacements_and_appearances(tmp_path: Path) -> None:
    w = tmp_path / "w.safetensors"
    missing = local.fingerprint([w])
    w.write_bytes(b"12345678")
    first = local.fingerprint([w])
    assert first != missing and local.fingerprint([w]) == first          # stable while untouched
    _touch_later(w, b"87654321")                                           # same size, new mtime
    second = local.fingerprint([w])
    assert second != first
    st = w.stat()
    other = tmp_path / "w.new"
    other.write_bytes(b"87654321")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    other.replace(w)                                                       # same size and mtime, new inode
    assert local.fingerprint([w]) != second
    assert local.fingerprint([]) == ""


def test_a_folder_counts_every_file_under_it_but_dot_entries(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "model.safetensors").write_bytes(b"x" * 10)
    first = local.fingerprint([folder])
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("")
    (folder / ".DS_Store").write_text("")
    assert local.fingerprint([folder]) == first
    (folder / "sub" / "model.safetensors").write_bytes(b"x" * 11)
    assert local.fingerprint([folder]) != first


def test_inputs_are_the_source_and_the_torch_factory_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"")
    spec_file = tmp_path / "m.yaml"
    spec_file.write_text("provider: torch\nsource: {path: w.safetensors}\noptions: {factory: 'net.py:build'}\n")
    spec = parse_spec_file(spec_file, tmp_path, [tmp_path], PROVIDERS)
    assert local.Scan(PROVIDERS).inputs(spec) == (tmp_path / "w.safetensors", tmp_path / "net.py")
    spec_file.write_text("provider: torch\nsource: {path: w.safetensors}\noptions: {factory: 'pkg.net:build'}\n")
    spec = parse_spec_file(spec_file, tmp_path, [tmp_path], PROVIDERS)
    assert local.Scan(PROVIDERS).inputs(spec) == (tmp_path / "w.safetensors",)    # an installed module: not ours

    site = tmp_path / "site"
    (site / "mypkg" / "model").mkdir(parents=True)
    (site / "mypkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    spec_file.write_text("provider: sentence-transformers\nsource: {package: mypkg, subdir: model}\n")
    spec = parse_spec_file(spec_file, tmp_path, [tmp_path], PROVIDERS)
    assert local.Scan(PROVIDERS).inputs(spec) == (site / "mypkg" / "model",)
    spec_file.write_text("provider: sentence-transformers\nsource: {package: not_installed_pkg}\n")
    assert local.Scan(PROVIDERS).inputs(parse_spec_file(spec_file, tmp_path, [tmp_path], PROVIDERS)) == ()


def test_watches_wake_only_for_paths_that_matter(tmp_path: Path) -> None:
    specs, home, model = tmp_path / "specs", tmp_path / "home", tmp_path / "home" / "model"
    for folder in (specs / "sub", model):
        folder.mkdir(parents=True)
    weights = home / "w.safetensors"
    weights.write_bytes(b"")
    flag = threading.Event()
    watches = Watches(flag)
    watches.update([specs], [model], [weights])
    try:
        def wakes(action, within: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
            time.sleep(0.2)
            flag.clear()
            action()
            return flag.wait(within)

        # (the two that must not wake run first: no earlier event can arrive late and spoil them)
        assert not wakes(lambda: (home / "notes.txt").write_text("unrelated"), within=1.0)   # beside a watched file
        assert not wakes(lambda: (specs / "sub" / "x.yaml").write_text(""), within=1.0)   # the specs folder is shallow
        assert wakes(lambda: weights.write_bytes(b"new"))
        assert wakes(lambda: (specs / "a.yaml").write_text(""))
        assert wakes(lambda: (model / "deep").mkdir() or (model / "deep" / "f").write_text(""))
        model.rename(tmp_path / "gone")                 # a watched folder replaced by a new one
        model.mkdir()
        watches.update([specs], [model], [weights])
        assert wakes(lambda: (model / "f").write_text(""))
    finally:
        watches.stop()
