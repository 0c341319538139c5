"""Shutting down politely: every call but health checks passes this gate, which counts the calls under way,
and once the daemon drains, answers new ones `unavailable` "warmd is shutting down" (not a closed socket,
which a client can only report as "not reachable"). The HTTP front counts its requests through the same
gate (`admit`, `leave`), so one drain waits for every front.

Every gRPC method but health and reflection passes it (api/aio.py builds the handlers).
"""
from __future__ import annotations

import threading

from warmd.errors import Code, WarmdError


class Drain:
    """Counts calls in their servicer; refuses new ones after `close()`."""

    def __init__(self) -> None:
        # Every call takes the plain lock twice: `with` on it runs no Python (a Condition's own __enter__ does).
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._running = 0
        self._refusal: WarmdError | None = None

    def close(self, drain_timeout: float) -> None:
        """From now on new calls are refused, saying how long the calls under way have."""
        with self._lock:
            self._refusal = WarmdError(Code.UNAVAILABLE, f"warmd is shutting down (calls under way get up to "
                                       f"{drain_timeout:g} s to finish); retry once it is started again")

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in a servicer, at most `timeout` seconds. Returns whether none is."""
        with self._changed:
            return self._changed.wait_for(lambda: self._running == 0, timeout)

    def running(self) -> int:
        with self._lock:
            return self._running

    def admit(self) -> None:
        """Count a call in (`leave` counts it out).

        Raises:
            WarmdError: `unavailable` once the daemon drains.
        """
        with self._lock:
            if self._refusal is not None:
                raise self._refusal
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._refusal is not None:
                self._changed.notify_all()      # only wait_idle waits, and only once the drain began
