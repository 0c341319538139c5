"""Dynamic batching: requests to one model that arrive within `max_delay_ms` of each other run as one
provider call of up to `max_batch` requests, their tensors (or texts) joined along the first dimension and
the outputs split back. Results are those of unbatched calls for models whose rows are independent (the
usual case: the batch dimension is what `max_batch` asserts).

Only requests with the same input names, dtypes, devices, trailing shapes, parameters and outputs asked for
on the device share a batch. Tensors are numpy arrays, or torch tensors on a GPU (CUDA shared memory), joined
and split where they are.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from warmd.errors import Code, WarmdError
from warmd.providers import InferRequest, InferResult
from warmd.scheduler import Resident, Scheduler


@dataclass(eq=False)       # compared by identity: fields hold arrays
class _Item:
    request: InferRequest
    keep_alive: float | None
    future: Future = field(default_factory=Future)

    def rows(self) -> int:
        first = next(iter(self.request.tensors.values()), None)
        return len(self.request.text) if first is None else int(first.shape[0])

    def key(self) -> tuple:
        tensors = tuple(sorted((n, str(a.dtype), str(getattr(a, "device", "cpu")), tuple(a.shape[1:]))
                               for n, a in self.request.tensors.items()))
        return (tensors, bool(self.request.text), json.dumps(self.request.parameters, sort_keys=True, default=str),
                self.request.device_outputs)


class Batcher:
    """One model's batch queue and the thread that drains it."""

    def __init__(self, scheduler: Scheduler, model: str, max_batch: int, max_delay_s: float,
                 executed: Callable[[str], None]) -> None:
        self.scheduler, self.model = scheduler, model
        self.max_batch, self.max_delay_s = max_batch, max_delay_s
        self._executed = executed
        self._queue: queue.Queue[_Item] = queue.Queue()
        threading.Thread(target=self._loop, name=f"batch-{model}", daemon=True).start()

    def submit(self, request: InferRequest, keep_alive: float | None) -> tuple[Resident, InferResult]:
        """Queue one request and wait for its share of a batch's result."""
        item = _Item(request, keep_alive)
        self._queue.put(item)
        return item.future.result()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.max_delay_s
            while len(batch) < self.max_batch and (wait := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self._queue.get(timeout=wait))
                except queue.Empty:
                    break
            groups: dict[tuple, list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.key(), []).append(item)
            for items in groups.values():
                try:
                    self._run(items)
                except BaseException as exc:  # noqa: BLE001 - the thread must outlive any one batch
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(exc)

    def _run(self, items: list[_Item]) -> None:
        live = [i for i in items if not i.request.context.cancelled.is_set()]
        for item in items:
            if item not in live:
                item.future.set_exception(WarmdError(Code.CANCELLED, "the caller cancelled the request"))
        if not live:
            return
        first = live[0].request
        try:
            joined = InferRequest(
                tensors={n: _join([i.request.tensors[n] for i in live]) for n in first.tensors},
                text=[t for i in live for t in i.request.text], parameters=first.parameters,
                device_outputs=first.device_outputs)
            keep_alive = next((i.keep_alive for i in live if i.keep_alive is not None), None)
            with self.scheduler.acquire(self.model, keep_alive=keep_alive) as resident:
                result = resident.provider.infer(joined)
            self._executed(self.model)
            shares = _split(result, [i.rows() for i in live])
        except BaseException as exc:  # noqa: BLE001 - every waiter hears about it
            for item in live:
                item.future.set_exception(exc)
            return
        for item, share in zip(live, shares):
            item.future.set_result((resident, share))


def _is_torch(array: Any) -> bool:
    return type(array).__module__.startswith("torch")


def _join(arrays: list[Any]) -> Any:
    import numpy as np

    if _is_torch(arrays[0]):
        import torch

        return torch.cat(arrays)
    return np.concatenate(arrays)


def _cut(array: Any, rows: list[int]) -> list[Any]:
    import numpy as np

    return list(array.split(rows)) if _is_torch(array) else np.split(array, np.cumsum(rows)[:-1])


def _split(result: InferResult, rows: list[int]) -> list[InferResult]:
    import numpy as np

    total = sum(rows)
    bad = [n for n, a in result.tensors.items() if a.ndim == 0 or a.shape[0] != total]
    if bad or (result.json is not None and not (isinstance(result.json, list) and len(result.json) == total)):
        raise WarmdError(Code.PROVIDER_FAILED, f"output(s) {', '.join(bad) or 'json'} do not have the batch as "
                         f"their first dimension ({total} rows); remove max_batch from the spec")
    cuts = np.cumsum(rows)[:-1]
    tensors = {n: _cut(a, rows) for n, a in result.tensors.items()}
    jsons: list[Any] = [None] * len(rows) if result.json is None else \
        [result.json[a:b] for a, b in zip([0, *cuts], [*cuts, total])]
    return [InferResult(tensors={n: parts[k] for n, parts in tensors.items()}, json=jsons[k])
            for k in range(len(rows))]
