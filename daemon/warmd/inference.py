"""Running a model: one path for every API (warmd.v1 Infer and InferStream, V2 ModelInfer and
ModelStreamInfer). It admits calls per model (`max_in_flight` running, `max_queue` waiting, beyond that
`busy` at once, never a hang) and keeps the per-model statistics that V2's ModelStatistics reports."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from warmd.batching import Batcher
from warmd.errors import Code, WarmdError
from warmd.providers import InferRequest, InferResult
from warmd.scheduler import Resident, Scheduler
from warmd.spec import ModelSpec

QUEUE_POLL_S = 0.05     # how often a queued call looks at its cancellation and deadline


@dataclass
class ModelStats:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0      # items: the first dimension of the first input, or 1
    execution_count: int = 0      # provider calls (fewer than requests when batching)
    last_inference_ms: int = 0
    queue_count: int = 0
    queue_ns: int = 0


class _Gate:
    """One model's admission: how many calls run and how many wait."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.changed = threading.Condition()


class Inference:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._stats: dict[str, ModelStats] = {}
        self._gates: dict[str, _Gate] = {}
        self._batchers: dict[tuple, Batcher] = {}
        self._lock = threading.Lock()
        # Told about every finished call: (model, "ok" or the error code, seconds). Metrics sets it.
        self.observer: Callable[[str, str, float], None] | None = None

    def run(self, model: str, request: InferRequest, keep_alive: float | None = None) -> tuple[Resident, InferResult]:
        """Admit the call, hold the model (loading it if needed) and run the request on it.

        Raises:
            WarmdError: `busy` when the model's queue is full; `cancelled` / `deadline_exceeded` when the
                caller gave up while queued or running; whatever the scheduler or provider raised. Every
                failure is counted.
        """
        spec = self.scheduler.catalog.require(model)   # not counted: statistics exist only for catalog models
        t0 = time.perf_counter_ns()
        gate = self._gate(model)
        try:
            self._admit(spec, gate, request)
            queued = time.perf_counter_ns() - t0
            try:
                request.context.check()
                batcher = self._batcher(spec)
                if batcher is not None:
                    resident, result = batcher.submit(request, keep_alive)
                else:
                    with self.scheduler.acquire(model, keep_alive=keep_alive) as resident:
                        result = resident.provider.infer(request)
                    self._executed(model)
            finally:
                with gate.changed:
                    gate.running -= 1
                    gate.changed.notify()
        except WarmdError as err:
            self._record(model, request, t0, ok=False, code=err.code.value)
            raise
        self._record(model, request, t0, ok=True, queued_ns=queued)
        return resident, result

    def _gate(self, model: str) -> _Gate:
        with self._lock:
            return self._gates.setdefault(model, _Gate())

    def _batcher(self, spec: ModelSpec) -> Batcher | None:
        """The model's batcher when its spec asks for batching and its provider can batch."""
        cls = self.scheduler.providers.get(spec.provider)
        if spec.max_batch <= 1 or cls is None or not cls.batchable:
            return None
        key = (spec.name, spec.max_batch, spec.max_delay_ms)
        with self._lock:
            if key not in self._batchers:
                self._batchers[key] = Batcher(self.scheduler, spec.name, spec.max_batch, spec.max_delay_ms / 1000,
                                              self._executed)
            return self._batchers[key]

    def _executed(self, model: str) -> None:
        with self._lock:
            self._stats.setdefault(model, ModelStats()).execution_count += 1

    def _admit(self, spec: ModelSpec, gate: _Gate, request: InferRequest) -> None:
        model = spec.name
        with gate.changed:
            if gate.running >= spec.max_in_flight:
                if gate.waiting >= spec.max_queue:
                    raise WarmdError(Code.BUSY, f"model {model!r} is busy: {gate.running} running, {gate.waiting} "
                                     f"waiting (max_in_flight {spec.max_in_flight}, max_queue {spec.max_queue} "
                                     "in its spec); retry later")
                gate.waiting += 1
                try:
                    while gate.running >= spec.max_in_flight:
                        request.context.check()
                        gate.changed.wait(QUEUE_POLL_S)
                finally:
                    gate.waiting -= 1
            gate.running += 1

    def queue_depth(self, model: str) -> tuple[int, int]:
        """(running, waiting) calls of `model` now."""
        gate = self._gate(model)
        with gate.changed:
            return gate.running, gate.waiting

    def _record(self, model: str, request: InferRequest, t0: int, ok: bool, queued_ns: int = 0,
                code: str = "ok") -> None:
        elapsed = time.perf_counter_ns() - t0
        if self.observer is not None:
            self.observer(model, code, elapsed / 1e9)
        first = next(iter(request.tensors.values()), None)
        items = (first.shape[0] if first is not None and first.ndim else 1) if request.tensors else \
            max(1, len(request.text))
        with self._lock:
            stats = self._stats.setdefault(model, ModelStats())
            if ok:
                stats.success_count += 1
                stats.success_ns += elapsed
                stats.inference_count += items
                stats.queue_count += 1
                stats.queue_ns += queued_ns
            else:
                stats.fail_count += 1
                stats.fail_ns += elapsed
            stats.last_inference_ms = int(time.time() * 1000)

    def stats(self, model: str) -> ModelStats:
        with self._lock:
            return ModelStats(**vars(self._stats.get(model, ModelStats())))
