"""Event fan-out: every part of the daemon publishes `warmd.v1.Event`s here; every stream reads them.

A subscriber that falls more than `SUBSCRIBER_BACKLOG` events behind is closed (its stream ends with
`unavailable`) rather than silently missing events; clients reconnect.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import Callable, Iterable

from warmd.v1 import warmd_pb2 as pb

log = logging.getLogger(__name__)
SUBSCRIBER_BACKLOG = 4096


class Subscription:
    """A bounded queue of events matching a filter. Iterate with `get()`; `None` means closed."""

    _CLOSED = object()
    _WAKE = object()

    def __init__(self, bus: "EventBus", match: Callable[[pb.Event], bool]) -> None:
        self._bus, self._match = bus, match
        self._queue: queue.Queue = queue.Queue(maxsize=SUBSCRIBER_BACKLOG)
        self.closed = False
        self.overflowed = False

    def get(self, timeout: float) -> pb.Event | None:
        """The next event, or None on timeout, on `wake()`, or once closed (check `closed`)."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if item is self._CLOSED or item is self._WAKE else item

    def wake(self) -> None:
        """Make a waiting `get()` return None now (the reader has something else to look at)."""
        try:
            self._queue.put_nowait(self._WAKE)
        except queue.Full:
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._remove(self)
            try:
                self._queue.put_nowait(self._CLOSED)
            except queue.Full:
                pass

    def _offer(self, event: pb.Event) -> None:
        if not self._match(event):
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.overflowed = True
            log.warning("closing a watch stream that fell %d events behind", SUBSCRIBER_BACKLOG)
            self.close()


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def publish(self, kind: str, **fields) -> pb.Event:  # type: ignore[no-untyped-def]
        """Build an Event of `kind` with the given fields, number it, and hand it to every subscriber."""
        with self._lock:
            event = pb.Event(seq=next(self._seq), time=time.time(), kind=kind, **fields)
            subs = list(self._subs)
        log.debug("event %s %s %s", kind, fields.get("model", ""), fields.get("message", ""))
        for sub in subs:
            sub._offer(event)
        return event

    def subscribe(self, kinds: Iterable[str] = (), model: str = "",
                  match: Callable[[pb.Event], bool] | None = None) -> Subscription:
        """Events whose kind starts with one of `kinds` (all if empty), about `model` if given, for which
        `match` (if given) is true."""
        prefixes = tuple(kinds)

        def matches(e: pb.Event) -> bool:
            return ((not prefixes or e.kind.startswith(prefixes)) and (not model or e.model == model)
                    and (match is None or match(e)))

        sub = Subscription(self, matches)
        with self._lock:
            self._subs.append(sub)
        return sub

    def close_all(self) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
