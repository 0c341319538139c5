"""Long operations as jobs — loads, downloads, plugin installs and updates — in one daemon-wide registry.

Every long operation is a `Job`: an id, a kind (`load`, `download`, `plugin.install`, `plugin.update`), the
model it is for (empty for a plugin's: its events name the plugin), its events
(each carries the job's id; `job.progress` with phase, done/total and unit) and cooperative cancellation.
`Jobs` holds the jobs while they run:
- `Status.jobs` lists them (`running`), with each one's latest progress;
- `CancelJob` cancels any of them by id (`cancel`): a download stops at its next chunk and keeps its
  partial files; a load stops at its next step (before or after the provider's load, never inside it,
  leaving the download it waits on);
- `follow(job)` subscribes to one job by id: its events and those of the jobs it waits on (a load that
  downloads first), with the latest event of each kind they already published replayed first, so a caller
  that joins late (a second spec sharing a running transfer, a second `warm load`) sees where it stands.
A job leaves the registry when its owner calls `finish`; its id cancels nothing after that.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

from warmd.errors import Code, WarmdError
from warmd.events import EventBus, Subscription
from warmd.v1 import warmd_pb2 as pb


@dataclass(eq=False)
class Job:
    kind: str                     # "load" | "download" | "plugin.install" | "plugin.update"
    model: str
    bus: EventBus
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    last: pb.Progress | None = None     # the latest progress, for clients that join late (Status.jobs)
    last_message: str = ""
    _cancel: threading.Event = field(default_factory=threading.Event)
    _waits_on: list["Job"] = field(default_factory=list)
    _latest: dict[str, pb.Event] = field(default_factory=dict)    # kind -> latest event, for followers
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _on_cancel: list[Callable[[], None]] = field(default_factory=list)

    def publish(self, kind: str, **fields) -> pb.Event:  # type: ignore[no-untyped-def]
        """Publish one of this job's events (its id and model filled in) and keep it for late followers."""
        fields.setdefault("model", self.model)
        with self._lock:    # a follower reading `history` sees every event numbered before it subscribed
            event = self.bus.publish(kind, job_id=self.id, **fields)
            self._latest[kind] = event
        return event

    def progress(self, phase: str, done: int = 0, total: int = 0, unit: str = "steps",
                 message: str = "", **fields) -> None:  # type: ignore[no-untyped-def]
        """Publish `job.progress` (with `fields`, e.g. a plugin's name) and keep it as the latest."""
        self.last = pb.Progress(phase=phase, done=done, total=total, unit=unit)
        self.last_message = message
        self.publish("job.progress", message=message, progress=pb.Progress(phase=phase, done=done, total=total,
                                                                           unit=unit), **fields)

    def wait_on(self, other: "Job") -> None:
        """This job waits for `other` (a load for its download): its followers see `other`'s events too."""
        with self._lock:
            if other not in self._waits_on:
                self._waits_on.append(other)

    def family(self) -> list["Job"]:
        """This job and the jobs it waits on, transitively."""
        seen: list[Job] = []
        todo = [self]
        while todo:
            job = todo.pop()
            if job not in seen:
                seen.append(job)
                with job._lock:
                    todo += job._waits_on
        return seen

    def history(self) -> list[pb.Event]:
        with self._lock:
            return list(self._latest.values())

    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            callbacks, self._on_cancel = self._on_cancel, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the job is cancelled (at once if it is): for work that stops from another
        thread (a plugin's gate, which kills its runner processes)."""
        with self._lock:
            if not self._cancel.is_set():
                self._on_cancel.append(callback)
                return
        callback()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise `cancelled` if someone cancelled this job; call between steps."""
        if self._cancel.is_set():
            raise WarmdError(Code.CANCELLED, f"{self.kind} of {self.model!r} was cancelled")


class Follower:
    """One job's events by id: those already published (latest of each kind), then live ones, once each."""

    def __init__(self, bus: EventBus, job: Job) -> None:
        self.job = job
        self._ids: set[str] = set()
        self._replayed: set[str] = set()
        self._seen: set[int] = set()
        self._pending: list[pb.Event] = []
        self.sub: Subscription = bus.subscribe(match=lambda e: e.job_id in self._ids)
        self._catch_up()

    def get(self, timeout: float) -> pb.Event | None:
        """The next event (None on timeout or after `wake`), in publishing order."""
        self._catch_up()
        while True:
            while self._pending:
                event = self._pending.pop(0)
                if event.seq not in self._seen:
                    self._seen.add(event.seq)
                    return event
            event = self.sub.get(timeout)
            if event is None:
                return None
            self._pending.append(event)

    def wake(self) -> None:
        self.sub.wake()

    def close(self) -> None:
        self.sub.close()

    def _catch_up(self) -> None:
        """Subscribe to jobs that joined the family since, and replay what they published before."""
        fresh = [j for j in self.job.family() if j.id not in self._replayed]
        for job in fresh:
            self._ids.add(job.id)       # live from here on ...
            self._replayed.add(job.id)
            self._pending += job.history()  # ... and what came before (duplicates are dropped by seq)
        self._pending.sort(key=lambda e: e.seq)


class Jobs:
    """Every running job of the daemon, by id."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._running: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, model: str) -> Job:
        job = Job(kind, model, self.bus)
        with self._lock:
            self._running[job.id] = job
        return job

    def finish(self, job: Job) -> None:
        with self._lock:
            self._running.pop(job.id, None)

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    def cancel(self, job_id: str) -> None:
        """Cancel a running job.

        Raises:
            WarmdError: `invalid_argument` when no job with that id is running.
        """
        with self._lock:
            job = self._running.get(job_id)
        if job is None:
            raise WarmdError(Code.INVALID_ARGUMENT, f"no running job {job_id!r}; `warm status` lists them")
        job.cancel()

    def follow(self, job: Job) -> Follower:
        """Subscribe to `job` by id (see the module docstring); close the follower when done."""
        return Follower(self.bus, job)
