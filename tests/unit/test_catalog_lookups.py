"""The catalog without a daemon: lookups by name and what a rescan announces."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from warmd.catalog import Catalog
from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.providers import PROVIDERS


def _catalog(specs: Path) -> tuple[Catalog, EventBus]:
    bus = EventBus()
    catalog = Catalog(specs, [specs], dict(PROVIDERS), bus)
    catalog.rescan()
    return catalog, bus


def test_an_unknown_model_name_suggests_the_nearest_one(tmp_path: Path) -> None:
    (tmp_path / "minilm.yaml").write_text("provider: sentence-transformers\nsource: {package: some_pkg}\n")
    catalog, _ = _catalog(tmp_path)
    assert catalog.require("minilm").name == "minilm"
    with pytest.raises(WarmdError) as info:
        catalog.require("minlm")
    assert info.value.code is Code.MODEL_NOT_FOUND
    assert info.value.message == "no model named 'minlm' (did you mean 'minilm'?); `warm ls` lists them"
    with pytest.raises(WarmdError) as info:
        catalog.require("resnet", listed_by="RepositoryIndex lists them")
    assert info.value.message == "no model named 'resnet'; RepositoryIndex lists them"


def test_a_rescan_sees_an_edited_weights_file_as_a_new_version(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"1")
    (tmp_path / "a.yaml").write_text("provider: torch\nsource: {path: w.safetensors}\noptions: {factory: 'net.py:f'}\n")
    catalog, bus = _catalog(tmp_path)
    sub = bus.subscribe(kinds=["catalog."])
    before = catalog.require("a")
    catalog.rescan()
    assert catalog.require("a") is before and sub.get(timeout=0) is None     # nothing changed, nothing said
    (tmp_path / "w.safetensors").write_bytes(b"22")
    catalog.rescan()
    after = catalog.require("a")
    assert after.signature != before.signature and after.content != before.content
    event = sub.get(timeout=0)
    assert (event.kind, event.model) == ("catalog.changed", "a") and event.message.startswith("local files changed")
    (tmp_path / "net.py").write_text("def f(): ...\n")                 # the factory module appears
    catalog.rescan()
    assert catalog.require("a").signature != after.signature


def test_the_first_scan_logs_its_models_at_debug_and_later_changes_at_info(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    body = "provider: sentence-transformers\nsource: {package: some_pkg}\n"
    (tmp_path / "a.yaml").write_text(body)
    (tmp_path / "broken.yaml").write_text("provider: [\n")
    with caplog.at_level(logging.DEBUG, logger="warmd.catalog"):
        catalog, _ = _catalog(tmp_path)                 # the ready line counts a; broken.yaml is warned
        assert [(r.levelno, r.getMessage()) for r in caplog.records if "catalog.added" in r.getMessage()] == [
            (logging.DEBUG, "catalog.added a: added from a.yaml")]
        assert any(r.levelno == logging.WARNING and "broken.yaml" in r.getMessage() for r in caplog.records)
        caplog.clear()
        (tmp_path / "b.yaml").write_text(body)
        catalog.rescan()
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
            (logging.INFO, "catalog.added b: added from b.yaml")]
