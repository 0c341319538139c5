"""Small helpers for tests (and benchmarks) that talk to a running daemon: polling for a condition with a
deadline (never a bare sleep-and-hope), a call's outcome, a free loopback port, a process's memory."""
from __future__ import annotations

import socket
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


def error_code(call: Callable[[], object]):  # type: ignore[no-untyped-def]
    """The warm.Code that call() failed with, or None if it succeeded."""
    from warm import WarmdError

    try:
        call()
    except WarmdError as err:
        return err.code
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid`, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
