"""The catalog's watches come on after its first scan, from its own thread (off the daemon's path to
ready), and lose nothing: a spec file added before they are on still appears; a stop before them leaves none."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from warmd import catalog as catalog_module
from warmd.catalog import Catalog
from warmd.events import EventBus
from warmd.providers import PROVIDERS
from warmd.watch import Watches

BODY = "provider: sentence-transformers\nsource: {package: some_pkg}\n"


def _appears(catalog: Catalog, name: str, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if catalog.get(name) is not None:
            return True
        time.sleep(0.02)
    return False


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def test_a_spec_added_before_the_watches_are_on_appears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "SAFETY_RESCAN_S", 60.0)     # only the watches or the thread's rescan
    (tmp_path / "a.yaml").write_text(BODY)
    catalog = Catalog(tmp_path, [tmp_path], dict(PROVIDERS), EventBus(), debounce_s=0.01)
    update = catalog._watches.update
    callers: list[str] = []

    def late_update(*args: list[Path]) -> None:
        callers.append(threading.current_thread().name)
        if len(callers) == 1:
            (tmp_path / "b.yaml").write_text(BODY)      # after the first scan, before the watches
        update(*args)

    monkeypatch.setattr(catalog._watches, "update", late_update)
    catalog.start()
    assert catalog.get("a") is not None and callers == []      # the first scan put no watch on
    try:
        assert _appears(catalog, "b")
        (tmp_path / "c.yaml").write_text(BODY)          # and once they are on, they see the folder
        assert _appears(catalog, "c")
        assert set(callers) == {"catalog"}              # all from the catalog's thread
    finally:
        catalog.stop()


def test_a_stop_before_the_watches_come_on_leaves_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(threading.enumerate())
    catalog = Catalog(tmp_path, [tmp_path], dict(PROVIDERS), EventBus())
    callers: list[str] = []
    monkeypatch.setattr(catalog._watches, "update", lambda *args: callers.append("update"))
    catalog.start()
    t0 = time.monotonic()
    catalog.stop()                                      # while the thread waits to put them on
    assert time.monotonic() - t0 < 1 and callers == [] and _new_threads(before) == []


def test_a_stop_while_the_watches_come_on_leaves_no_observer(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "WATCH_AFTER_S", 0.0)
    before = set(threading.enumerate())
    catalog = Catalog(tmp_path, [tmp_path], dict(PROVIDERS), EventBus())
    schedule, entered, release = catalog._watches._schedule, threading.Event(), threading.Event()

    def held_schedule(key: tuple[str, bool]) -> None:
        entered.set()
        release.wait(5)          # inside the update, its observer started: stop() comes now
        schedule(key)

    monkeypatch.setattr(catalog._watches, "_schedule", held_schedule)
    catalog.start()
    assert entered.wait(5) and catalog._watches._observer is not None
    timer = threading.Timer(0.3, release.set)
    timer.start()
    catalog.stop()
    timer.join()
    assert _new_threads(before) == []


def test_a_rescan_from_another_thread_leaves_the_watches_to_the_catalogs(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "WATCH_AFTER_S", 60.0)
    catalog = Catalog(tmp_path, [tmp_path], dict(PROVIDERS), EventBus())
    callers: list[str] = []
    monkeypatch.setattr(catalog._watches, "update", lambda *args: callers.append("update"))
    catalog.start()
    try:
        (tmp_path / "a.yaml").write_text(BODY)
        catalog.rescan()            # as `warm add` or a V2 load with a config does, on a request's thread
        assert catalog.get("a") is not None and callers == []
    finally:
        catalog.stop()


def test_an_update_after_stop_watches_nothing(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    flag = threading.Event()
    watches = Watches(flag)
    watches.stop()
    watches.update([tmp_path], [], [])
    (tmp_path / "a.yaml").write_text("")
    assert not flag.wait(0.5) and _new_threads(before) == []


def test_watches_that_fail_to_come_on_leave_the_rescans_running(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "WATCH_AFTER_S", 0.0)
    monkeypatch.setattr(catalog_module, "SAFETY_RESCAN_S", 0.1)
    catalog = Catalog(tmp_path, [tmp_path], dict(PROVIDERS), EventBus())

    def failing_update(*args: list[Path]) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(catalog._watches, "update", failing_update)
    catalog.start()
    try:
        (tmp_path / "a.yaml").write_text(BODY)
        assert _appears(catalog, "a")           # the safety rescans go on without the watches
        assert catalog._thread is not None and catalog._thread.is_alive()
    finally:
        catalog.stop()
