"""Watching the files the catalog depends on: the specs folder and every model's local inputs.

`Watches.update()` is given the paths that matter (shallow folders: their own entries, as the specs
folder; deep folders: everything under them, as a folder source; files: that file) and keeps one watchdog
observer's watches in line with them: a file is watched through its folder, a folder that is deleted and
made again (a new inode) is watched afresh, one that does not exist yet is picked up by a later update (the
catalog's safety rescan calls it). An event sets the flag only when it touches a path that matters, so
watching a busy folder for one weights file costs no rescans. watchdog is imported, and its observer
started, at the first update (the catalog's thread makes it a moment after its first scan, off the daemon's
path to ready); after `stop()` an update watches nothing.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent
    from watchdog.observers import Observer
    from watchdog.observers.api import ObservedWatch

log = logging.getLogger(__name__)


class Watches:
    """One observer, made at the first update; events come on the observer's thread."""

    def __init__(self, flag: threading.Event) -> None:
        self._handler = _Poke(flag)
        self._observer: Observer | None = None
        self._scheduled: dict[tuple[str, bool], tuple[ObservedWatch, int]] = {}   # (folder, recursive) -> watch, inode
        self._lock = threading.Lock()      # `stop()` may come from another thread, before the first update
        self._stopped = False

    def update(self, shallow: list[Path], deep: list[Path], files: list[Path]) -> None:
        """Watch the entries of `shallow` folders, everything under `deep` ones, and each of `files`."""
        with self._lock:
            if not self._stopped:
                self._update(shallow, deep, files)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=2)

    def _update(self, shallow: list[Path], deep: list[Path], files: list[Path]) -> None:
        wanted: dict[tuple[str, bool], None] = {}
        for folder in shallow:
            wanted[(str(folder), False)] = None
        for folder in deep:
            wanted[(str(folder), True)] = None
        for file in files:
            wanted.setdefault((str(file.parent), False), None)
        self._handler.relevant(frozenset(map(str, shallow)), tuple(map(str, deep)), frozenset(map(str, files)))
        if self._observer is None or not self._observer.is_alive():
            from watchdog.observers import Observer     # here, not at import: the daemon answers before it

            self._observer, self._scheduled = Observer(), {}
            self._observer.daemon = True
            self._observer.start()
        for key in [k for k in self._scheduled if k not in wanted]:
            self._unschedule(key)
        for key in wanted:
            self._schedule(key)

    def _schedule(self, key: tuple[str, bool]) -> None:
        folder, recursive = key
        try:
            inode = os.stat(folder).st_ino
        except OSError:
            inode = -1
        known = self._scheduled.get(key)
        if known is not None and known[1] == inode:
            return
        if known is not None:
            self._unschedule(key)      # deleted, or deleted and made again: its old watch sees nothing
        if inode == -1 or not os.path.isdir(folder):
            return
        try:
            watch = self._observer.schedule(self._handler, folder, recursive=recursive)  # type: ignore[union-attr]
        except OSError as exc:      # e.g. out of inotify watches: the safety rescan still sees changes
            log.warning("cannot watch %s (%s); changes there are seen by the periodic rescan", folder, exc)
            return
        self._scheduled[key] = (watch, inode)

    def _unschedule(self, key: tuple[str, bool]) -> None:
        watch, _ = self._scheduled.pop(key)
        try:
            self._observer.unschedule(watch)  # type: ignore[union-attr]
        except (KeyError, OSError):
            pass


class _Poke:
    """Sets the flag for an event on a watched file, in a shallow folder, or anywhere under a deep one.

    The observer calls a handler's `dispatch()` only; not a watchdog FileSystemEventHandler, so that importing
    this module does not import watchdog."""

    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag
        self._paths: tuple[frozenset[str], tuple[str, ...], frozenset[str]] = (frozenset(), (), frozenset())

    def relevant(self, shallow: frozenset[str], deep: tuple[str, ...], files: frozenset[str]) -> None:
        self._paths = (shallow, deep, files)     # swapped whole: the observer's thread reads it

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        shallow, deep, files = self._paths
        for path in (event.src_path, getattr(event, "dest_path", "")):
            path = os.fsdecode(path)
            if not path:
                continue
            if (path in files or path in shallow or os.path.dirname(path) in shallow
                    or any(path == d or path.startswith(d + os.sep) for d in deep)):
                self.flag.set()
                return
