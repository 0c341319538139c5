"""Polling for a condition in tests, with a deadline (never a bare sleep-and-hope)."""
from __future__ import annotations

import time
from typing import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02) -> None:
    """Return as soon as predicate() is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def succeeds(call: Callable[[], object]) -> bool:
    """Whether call() returns without a WarmdError (for polling: "the daemon serves this again")."""
    from warm import WarmdError

    try:
        call()
        return True
    except WarmdError:
        return False
