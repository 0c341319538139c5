"""What makes a catalog of 10 000 specs cheap to list and to rescan: files states remembered between
listings (and read again when they may have changed), one look at the scheduler for all models, ListModels
answered from each model's bytes kept, spec files not read again while their stat is unchanged."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from warmd import catalog as catalog_module
from warmd.api.service import WarmdService, model_proto
from warmd.app import App
from warmd.config import Settings
from warmd.store import sources
from warmd.v1 import warmd_pb2 as pb

SPEC = "provider: torch\ntask: custom\nsource: {path: w.safetensors}\noptions: {factory: 'net.py:f'}\n"


@pytest.fixture
def app(tmp_path: Path) -> App:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "w.safetensors").write_bytes(b"1234")
    for name in ("a", "b", "c"):
        (specs / f"{name}.yaml").write_text(SPEC)
    settings = Settings(specs_dir=specs, data_dir=tmp_path / "data", plugins_dir=tmp_path / "plugins",
                        profiles_dir=tmp_path / "profiles", token_file=tmp_path / "config" / "token",
                        path_roots=[tmp_path])
    app = App(settings)
    app.catalog.rescan()
    return app


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    original = sources.PathSource.state

    def state(self, store, spec):  # type: ignore[no-untyped-def]
        reads.append(spec.name)
        return original(self, store, spec)

    monkeypatch.setattr(sources.PathSource, "state", state)
    return reads


def test_a_listing_reads_each_sources_files_once_until_they_change(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _count_reads(monkeypatch)
    # a, b and c have one source: its files are read once for the three
    assert [m.files.bytes_on_disk for m in app.models()] == [4, 4, 4] and len(reads) == 1
    assert [m.files.bytes_on_disk for m in app.models()] == [4, 4, 4] and len(reads) == 1   # remembered
    weights = app.settings.specs_dir / "w.safetensors"
    weights.write_bytes(b"123456")
    os.utime(weights, ns=(time.time_ns() + 10**9,) * 2)
    app.catalog.rescan()                     # what the watcher's event does: a new fingerprint (spec.content)
    assert [m.files.bytes_on_disk for m in app.models()] == [6, 6, 6] and len(reads) == 2
    assert app.model("a").files.bytes_on_disk == 6 and len(reads) == 3      # one model's view reads now
    (app.settings.specs_dir / "other.safetensors").write_bytes(b"12")
    (app.settings.specs_dir / "d.yaml").write_text(SPEC.replace("w.safetensors", "other.safetensors"))
    app.catalog.rescan()
    assert [m.files.bytes_on_disk for m in app.models()] == [6, 6, 6, 2] and len(reads) == 4    # d's own


def test_a_listing_reads_again_after_the_store_changed_files(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _count_reads(monkeypatch)
    app.models()[0].files
    app.store.downloads.know_size(app.spec("a"), 10)      # a size learned, a download ended...
    app.models()[0].files
    assert reads == ["a", "a"]


def test_list_models_answers_each_models_message_from_kept_bytes(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    service = WarmdService(app)
    first = pb.ListModelsResponse.FromString(service.ListModels(pb.ListModelsRequest(), None))
    assert [m.name for m in first.models] == ["a", "b", "c"]
    assert list(first.models) == [model_proto(m) for m in app.models()]
    built: list[str] = []
    monkeypatch.setattr("warmd.api.service.model_proto", lambda m: built.append(m.name) or model_proto(m))
    app.scheduler.pin("b", True)             # b shows another pin: only its message is built again
    again = pb.ListModelsResponse.FromString(service.ListModels(pb.ListModelsRequest(), None))
    assert built == ["b"] and [m.pin for m in again.models] == [False, True, False]
    only = pb.ListModelsResponse.FromString(service.ListModels(pb.ListModelsRequest(tag="none"), None))
    assert list(only.models) == []


def test_a_rescan_does_not_read_spec_files_whose_stat_is_unchanged(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[Path] = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or original(self))
    app.catalog.rescan()
    assert len(read) == 3           # changed within RACY_NS (just written): read, whatever their stat says
    monkeypatch.setattr(catalog_module, "RACY_NS", 0)    # as if written long ago
    app.catalog.rescan()            # their stat is recorded
    read.clear()
    app.catalog.rescan()
    assert read == []
    edited = app.settings.specs_dir / "b.yaml"
    edited.write_text(SPEC + "description: edited\n")
    app.catalog.rescan()
    assert set(read) == {edited} and app.spec("b").description == "edited"   # (parsing reads it too)


def test_an_unfiltered_listing_is_kept_whole_until_what_it_rests_on_changes(app: App,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    service = WarmdService(app)
    listing = lambda: pb.ListModelsResponse.FromString(service.ListModels(pb.ListModelsRequest(), None))  # noqa: E731
    listing()
    lists: list[int] = []
    original = App.models
    monkeypatch.setattr(App, "models", lambda self, *a: lists.append(1) or original(self, *a))
    assert [m.name for m in listing().models] == ["a", "b", "c"] and lists == []       # from the kept bytes
    app.scheduler.pin("b", True)                 # b is in the scheduler's views now: listed anew, alone
    assert [m.pin for m in listing().models] == [False, True, False] and lists == [1]
    assert [m.pin for m in listing().models] == [False, True, False] and lists == [1]
    app.store.downloads.know_size(app.spec("c"), 10)            # what the store knows of files changed
    listing()
    assert lists == [1, 1]
    edited = app.settings.specs_dir / "a.yaml"
    edited.write_text(SPEC + "description: edited\n")
    app.catalog.rescan()                         # the catalog changed
    assert listing().models[0].description == "edited" and lists == [1, 1, 1]
    monkeypatch.setattr(app.store.downloads, "running", lambda: True)     # a download runs: never kept
    listing()
    listing()
    assert lists == [1, 1, 1, 1, 1]
