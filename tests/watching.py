"""A daemon's Watch stream collected in a thread, for tests that wait for events with a deadline."""
from __future__ import annotations

import queue
import threading
import time


class Events:
    """Collects the daemon's watch stream in a thread; `expect()` waits for one event."""

    def __init__(self, client) -> None:  # type: ignore[no-untyped-def]
        from warm import WarmdError

        self.queue: queue.Queue = queue.Queue()
        stream = client.watch()

        def pump() -> None:
            try:
                for event in stream:
                    self.queue.put(event)
            except WarmdError:
                pass

        threading.Thread(target=pump, daemon=True).start()

    def expect(self, kind: str, model: str = "", timeout: float = 1.5, file: str = ""):  # type: ignore[no-untyped-def]
        """The next event of `kind` (for `model`, about a file whose path contains `file`), skipping others."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                event = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(f"{event.kind}:{event.model or event.file}")
            if event.kind == kind and (not model or event.model == model) and file in event.file:
                return event
        raise AssertionError(f"no {kind} {model or file} within {timeout}s; saw {seen}")

    def catalog_events_during(self, seconds: float) -> list[str]:
        time.sleep(seconds)
        out = []
        while not self.queue.empty():
            e = self.queue.get()
            if e.kind.startswith("catalog."):
                out.append(f"{e.kind}:{e.model or e.file}")
        return out
