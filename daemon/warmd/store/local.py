"""A model's local inputs: the files of its `path` or `package` source, the manifest of its `ollama`
source (which names the blobs by digest: a re-pulled tag is a new manifest), and the files its provider's
options name (a torch factory module), with a cheap fingerprint of what they hold.

Rules held here:
- the fingerprint covers every file's name, size, mtime and inode, never its bytes: stat'ing is fast
  enough for a folder of 100 specs at every rescan, hashing gigabytes of weights is not. An edit in
  place changes size or mtime, a replace (save to a temp file, rename) changes the inode; a tool that
  rewrites a file keeping its size, mtime and inode goes unseen (give the source a `sha256` for that).
- a missing input is part of the fingerprint, so its appearing is a change too;
- in a source folder, names starting with `.` (`.git`, `.cache`) are not model files, and at most
  `MAX_FILES` files are looked at (a `path:` pointing at a home folder must not cost a full walk);
- nothing here touches the network or imports a package (`package` sources are found, not imported).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from warmd.errors import WarmdError
from warmd.spec import ModelSpec, Source
from warmd.store.sources import handler, package_path

MAX_FILES = 10_000


class Scan:
    """One rescan's look at the models' local inputs: each package is found once and each set of inputs
    fingerprinted once (100 specs of one package cost one lookup and one walk).

    Args:
        providers: provider classes by name (for their `option_files`).
    """

    def __init__(self, providers: Mapping[str, Any]) -> None:
        self.providers = providers
        self._located: dict[Source, Path | None] = {}
        self._fingerprints: dict[tuple[Path, ...], str] = {}

    def inputs(self, spec: ModelSpec) -> tuple[Path, ...]:
        """The local files and folders a model is built from (they need not exist): its source (path,
        package, or an Ollama manifest) and the files its provider's options name. Remote, hub and url
        sources have none here (a digest or a commit pins those)."""
        found = handler(spec.source).inputs(spec, self)
        provider = self.providers.get(spec.provider)
        if provider is not None:
            found += provider.option_files(spec)
        return tuple(found)

    def fingerprint(self, paths: tuple[Path, ...]) -> str:
        if paths not in self._fingerprints:
            self._fingerprints[paths] = fingerprint(list(paths))
        return self._fingerprints[paths]

    def package(self, src: Source) -> Path | None:
        """The folder of a `package` source, found once per scan (None while the package is not installed)."""
        if src not in self._located:
            try:
                self._located[src] = package_path(src)
            except WarmdError:
                self._located[src] = None     # not installed (yet): installing it changes the fingerprint
        return self._located[src]


def fingerprint(paths: list[Path]) -> str:
    """sha256 over (name, size, mtime, inode) of every file under `paths`; "" when there are none."""
    if not paths:
        return ""
    h = hashlib.sha256()
    for path in paths:
        h.update(f"{path}\0".encode())
        for name, st in _files(path):
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0".encode())
    return h.hexdigest()


def _files(path: Path) -> Iterator[tuple[str, os.stat_result | _Missing]]:
    try:
        st = path.stat()
    except OSError:
        yield "", _MISSING
        return
    if not path.is_dir():
        yield "", st
        return
    seen = 0
    for folder, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            full = os.path.join(folder, name)
            try:
                yield os.path.relpath(full, path), os.stat(full)
            except OSError:
                yield os.path.relpath(full, path), _MISSING     # a dangling link or a file just deleted
            seen += 1
            if seen >= MAX_FILES:
                return


class _Missing:
    st_size = st_mtime_ns = st_ino = -1


_MISSING = _Missing()
