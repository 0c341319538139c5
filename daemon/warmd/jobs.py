"""Long operations (loads now; downloads later) as jobs: an id, progress events, and cancellation."""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.v1 import warmd_pb2 as pb


@dataclass
class Job:
    kind: str                     # "load"
    model: str
    bus: EventBus
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _cancel: threading.Event = field(default_factory=threading.Event)
    last: pb.Progress | None = None     # the latest progress, for clients that join late (Status.jobs)
    last_message: str = ""

    def progress(self, phase: str, done: int = 0, total: int = 0, unit: str = "steps",
                 message: str = "") -> None:
        self.last = pb.Progress(phase=phase, done=done, total=total, unit=unit)
        self.last_message = message
        self.bus.publish("job.progress", model=self.model, job_id=self.id, message=message,
                         progress=pb.Progress(phase=phase, done=done, total=total, unit=unit))

    def cancel(self) -> None:
        self._cancel.set()

    def check(self) -> None:
        """Raise `cancelled` if someone cancelled this job; call between steps."""
        if self._cancel.is_set():
            raise WarmdError(Code.CANCELLED, f"{self.kind} of {self.model!r} was cancelled")
