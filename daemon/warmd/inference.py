"""Running a model: one path for every API (warmd.v1 Infer, V2 ModelInfer and ModelStreamInfer), which
also keeps the per-model statistics that V2's ModelStatistics reports."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from warmd.errors import WarmdError
from warmd.providers import InferRequest, InferResult
from warmd.scheduler import Resident, Scheduler


@dataclass
class ModelStats:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0      # items: the first dimension of the first input, or 1
    execution_count: int = 0      # provider calls
    last_inference_ms: int = 0


class Inference:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._stats: dict[str, ModelStats] = {}
        self._lock = threading.Lock()

    def run(self, model: str, request: InferRequest, keep_alive: float | None = None) -> tuple[Resident, InferResult]:
        """Hold the model (loading it if needed) and run one request on it.

        Raises:
            WarmdError: whatever the scheduler or provider raised (the failure is counted).
        """
        t0 = time.perf_counter_ns()
        try:
            with self.scheduler.acquire(model, keep_alive=keep_alive) as resident:
                result = resident.provider.infer(request)
        except WarmdError:
            self._record(model, request, t0, ok=False)
            raise
        self._record(model, request, t0, ok=True)
        return resident, result

    def _record(self, model: str, request: InferRequest, t0: int, ok: bool) -> None:
        elapsed = time.perf_counter_ns() - t0
        first = next(iter(request.tensors.values()), None)
        items = (first.shape[0] if first is not None and first.ndim else 1) if request.tensors else \
            max(1, len(request.text))
        with self._lock:
            stats = self._stats.setdefault(model, ModelStats())
            if ok:
                stats.success_count += 1
                stats.success_ns += elapsed
                stats.inference_count += items
                stats.execution_count += 1
            else:
                stats.fail_count += 1
                stats.fail_ns += elapsed
            stats.last_inference_ms = int(time.time() * 1000)

    def stats(self, model: str) -> ModelStats:
        with self._lock:
            return ModelStats(**vars(self._stats.get(model, ModelStats())))
