"""Dynamic batching: requests to one model that arrive within `max_delay_ms` of each other run as one
provider call of up to `max_batch` requests, their tensors (or texts) joined along the first dimension and
the outputs split back. Results are those of unbatched calls for models whose rows are independent (the
usual case: the batch dimension is what `max_batch` asserts).

Only requests with the same input names, dtypes, devices, trailing shapes, parameters and outputs asked for
on the device share a batch. Tensors are numpy arrays, or torch tensors on a GPU (CUDA shared memory), joined
and split where they are.

Two ways a batch forms, by where its calls run (api/aio.py):
- on worker threads (`submit`): the batcher's own thread gathers the requests and runs the batch;
- on the gRPC event loop (`join`), for small requests to an in-process model: each call takes a `Seat` in
  the open batch and waits on the loop, with no thread hand-off of its own. The batch is ready when full or
  `max_delay_ms` after it opened. Batches run one at a time: on the loop when the model's batch forward is
  quick there (inference.py's QUICK_S, as for calls), else on the batcher's second thread while the loop takes
  the next calls. A batch ready while another runs keeps taking seats until it starts,
  so batches grow with the load. When it ran, the loop grants every seat and each call runs again and takes
  its share.

A batcher's two threads start with its first batch and end after IDLE_S with none: a removed spec's
batcher (one per model name, inference.py) keeps no thread.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from warmd.errors import Code, WarmdError
from warmd.providers import InferRequest, InferResult
from warmd.scheduler import Resident, Scheduler

log = logging.getLogger(__name__)
T = TypeVar("T")
IDLE_S = 60.0       # a batcher's thread ends after this long with nothing to do; the next batch starts it


@dataclass(eq=False)       # compared by identity: fields hold arrays
class _Item:
    """One call's request in a batch and, once the batch ran, its share of the result or the batch's error.
    A call on a worker thread waits on `future` (`submit`); a seat on the event loop reads the outcome once
    its batch ran, and needs no Future (each makes a Condition and its RLock: ~1 µs a call)."""

    request: InferRequest
    keep_alive: float | None
    future: Future | None = None
    share: tuple[Resident, InferResult] | None = None
    error: BaseException | None = None

    def rows(self) -> int:
        first = next(iter(self.request.tensors.values()), None)
        return len(self.request.text) if first is None else int(first.shape[0])

    def key(self) -> tuple:
        """What the requests in one batch have in common. Dtypes and devices stay objects: `str()` of a numpy
        dtype runs Python code (~2.5 µs a call)."""
        tensors = tuple((n, a.dtype, getattr(a, "device", None), a.shape[1:])
                        for n, a in sorted(self.request.tensors.items()))
        parameters = self.request.parameters    # most calls have none: json.dumps only for those that do
        return (tensors, bool(self.request.text), json.dumps(parameters, sort_keys=True, default=str) if parameters
                else "", self.request.device_outputs)

    def settle(self, share: tuple[Resident, InferResult] | None = None, error: BaseException | None = None) -> None:
        """The call's share, or the error that ended its batch; the first outcome stands."""
        if self.share is not None or self.error is not None:
            return
        self.share, self.error = share, error
        if self.future is not None:
            if error is None:
                self.future.set_result(share)
            else:
                self.future.set_exception(error)


class Batcher:
    """One model's batch queue and the thread that drains it."""

    def __init__(self, scheduler: Scheduler, model: str, max_batch: int, max_delay_s: float,
                 executed: Callable[[str], None], quick: Callable[[], bool],
                 timed: Callable[[float, bool], None]) -> None:
        """A batcher; its two threads (calls from worker threads; batches from the loop) start when needed.

        Args:
            executed: told of each batch that ran as one provider call.
            quick: whether the next loop batch runs on the loop (else on this batcher's thread).
            timed: told of each batch's forward: seconds, and whether it ran on the loop.
        """
        self.scheduler, self.model = scheduler, model
        self.max_batch, self.max_delay_s = max_batch, max_delay_s
        self._executed, self._quick, self._timed = executed, quick, timed
        self._calls: _Drain[_Item] = _Drain(f"batch-{model}", self._gather)     # from worker threads
        # The event loop's alone: batches taking seats (by _Item.key()), those ready to run behind the one
        # running, and whether one runs.
        self._open: dict[tuple, _LoopBatch] = {}
        self._waiting: collections.deque[_LoopBatch] = collections.deque()
        self._running = False
        self._runs: _Drain[tuple[_LoopBatch, list[_Item], asyncio.AbstractEventLoop]] = \
            _Drain(f"batch-{model}-loop", self._run_off_loop)

    def configure(self, max_batch: int, max_delay_s: float) -> None:
        """The spec's sizes now (an edit): the next batch to open, and the thread's next batch, use them."""
        self.max_batch, self.max_delay_s = max_batch, max_delay_s

    def join(self, request: InferRequest, keep_alive: float | None, leave: Callable[[], None],
             t0: int, queued_ns: int) -> Seat:
        """(On the event loop.) Take a seat in the open batch of requests like this one, opening one if there
        is none; a batch that is full is ready at once.

        Args:
            leave: gives the call's admission slot back; the seat holds it until its share is taken.
            t0, queued_ns: the call's start and its wait for admission (its statistics).
        Returns:
            The seat: the caller waits for `when_granted`, then `take`s its share.
        Raises:
            WouldWait: the model is not serving now (it would load first): nothing was joined.
        """
        item = _Item(request, keep_alive)
        key = item.key()
        batch = self._open.get(key)
        opened = batch is None
        if batch is None:
            resident = self.scheduler.hold(self.model, keep_alive, wait=False)    # held until the batch ran
            batch = self._open[key] = _LoopBatch(self, key, resident)
        seat = Seat(batch, item, leave, t0, queued_ns, due=self.max_delay_s if opened else None)
        batch.seats.append(seat)
        if len(batch.seats) >= self.max_batch:
            del self._open[key]         # full: the next call opens the next batch
            batch.run()
        return seat

    def _ready(self, batch: _LoopBatch) -> None:
        """(On the loop.) `batch` is full or due: it runs now, or after the batches ready before it."""
        self._waiting.append(batch)
        self._next()

    def _next(self) -> None:
        """(On the loop.) Start the first ready batch unless one runs (one at a time: a batch that waits
        meanwhile keeps taking seats, so batches grow with the load)."""
        while not self._running and self._waiting:
            batch = self._waiting.popleft()
            batch.done = True
            if self._open.get(batch.key) is batch:
                del self._open[batch.key]
            items = [seat.item for seat in batch.seats]
            if items and self._quick():
                try:
                    self._forward(batch.resident, items, on_loop=True)     # quicker than a thread's hand-off
                finally:
                    self.scheduler.release(batch.resident)
                for seat in batch.seats:
                    seat.grant()
            elif items:
                self._running = True
                self._runs.put((batch, items, asyncio.get_running_loop()))
            else:                           # every caller left
                self.scheduler.release(batch.resident)

    def _run_off_loop(self, run: tuple[_LoopBatch, list[_Item], asyncio.AbstractEventLoop]) -> None:
        """Run a loop batch as one provider call (the loop takes calls meanwhile), then tell the loop."""
        batch, items, loop = run
        try:
            self._forward(batch.resident, items, on_loop=False)
        finally:
            self.scheduler.release(batch.resident)
            with contextlib.suppress(RuntimeError):      # the loop is closed: the daemon stopped
                loop.call_soon_threadsafe(self._ran, batch)

    def _ran(self, batch: _LoopBatch) -> None:
        """(On the loop.) Grant every seat of the batch that ran, and start the next one."""
        self._running = False
        for seat in batch.seats:
            seat.grant()
        self._next()

    def submit(self, request: InferRequest, keep_alive: float | None) -> tuple[Resident, InferResult]:
        """Queue one request and wait for its share of a batch's result."""
        item = _Item(request, keep_alive, Future())
        self._calls.put(item)
        return item.future.result()

    def _gather(self, first: _Item) -> None:
        """Run `first` with the calls that arrive within `max_delay_ms` of it (up to `max_batch`), as one
        batch per kind of request."""
        batch = [first]
        deadline = time.monotonic() + self.max_delay_s
        while len(batch) < self.max_batch and (wait := deadline - time.monotonic()) > 0:
            if (item := self._calls.get(wait)) is None:
                break
            batch.append(item)
        groups: dict[tuple, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item.key(), []).append(item)
        for items in groups.values():
            try:
                self._run(items)
            except BaseException as exc:  # noqa: BLE001 - the thread must outlive any one batch
                for item in items:
                    item.settle(error=exc)

    def _run(self, items: list[_Item]) -> None:
        live = [i for i in items if not i.request.context.cancelled.is_set()]
        for item in items:
            if item not in live:
                item.settle(error=WarmdError(Code.CANCELLED, "the caller cancelled the request"))
        if not live:
            return
        keep_alive = next((i.keep_alive for i in live if i.keep_alive is not None), None)
        try:
            with self.scheduler.acquire(self.model, keep_alive=keep_alive) as resident:
                self._forward(resident, live, on_loop=False)
        except BaseException as exc:  # noqa: BLE001 - every waiter hears about it
            for item in live:
                item.settle(error=exc)

    def _forward(self, resident: Resident, items: list[_Item], on_loop: bool) -> None:
        """Run `items` as one provider call on `resident`; each item is settled with its share or the error."""
        first = items[0].request
        try:
            joined = InferRequest(
                tensors={n: _join([i.request.tensors[n] for i in items]) for n in first.tensors},
                text=[t for i in items for t in i.request.text], parameters=first.parameters,
                device_outputs=first.device_outputs)
            started = time.perf_counter()
            result = resident.provider.infer(joined)
            self._timed(time.perf_counter() - started, on_loop)
            self._executed(self.model)
            shares = _split(result, [i.rows() for i in items])
        except BaseException as exc:  # noqa: BLE001 - every waiter hears about it
            for item in items:
                item.settle(error=exc)
            return
        for item, share in zip(items, shares):
            item.settle((resident, share))


class _Drain(Generic[T]):
    """A queue and the thread that does `work` with each item: the first `put` starts the thread, and it ends
    after IDLE_S with the queue empty (the next `put` starts another)."""

    def __init__(self, name: str, work: Callable[[T], None]) -> None:
        self.name, self._work = name, work
        self._queue: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._lock = threading.Lock()       # a put and the thread's end: an item is never left without a thread
        self._alive = False

    def put(self, item: T) -> None:
        with self._lock:
            self._queue.put(item)
            if not self._alive:
                self._alive = True
                threading.Thread(target=self._drain, name=self.name, daemon=True).start()

    def get(self, timeout: float) -> T | None:
        """(On the thread, in `work`.) The next item within `timeout` seconds, or None."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _drain(self) -> None:
        while True:
            item = self.get(IDLE_S)
            if item is None:
                with self._lock:
                    if self._queue.empty():
                        self._alive = False
                        return
                continue
            try:
                self._work(item)
            except Exception:  # noqa: BLE001 - the thread outlives any one item (its _alive stays true)
                log.exception("%s: a batch failed outside the provider call", self.name)


class _LoopBatch:
    """One batch gathering on the event loop (Batcher.join); it holds its model resident until it ran."""

    def __init__(self, batcher: Batcher, key: tuple, resident: Resident) -> None:
        self.batcher, self.key, self.resident = batcher, key, resident
        self.seats: list[Seat] = []
        self.ready = False      # full, or its delay is over: it runs as soon as the model's last batch ran
        self.done = False       # it started: no more seats

    def run(self) -> None:
        """(On the loop.) The batch is full or due: run it now, or once the batch running before it ran."""
        if self.ready:
            return
        self.ready = True
        self.batcher._ready(self)


@dataclass(eq=False)
class Seat:
    """A call's place in a batch on the event loop, waited for as api/aio.py waits for an admission slot
    (`when_granted`, `give_up`); granted once its batch ran, the call runs again and `take`s its share. The
    seat holds the call's admission slot until then (`leave`). Used on the event loop only."""

    batch: _LoopBatch
    item: _Item
    leave: Callable[[], None]
    t0: int
    queued_ns: int
    due: float | None = None     # set on the seat that opened the batch: `run_due` this many seconds later
    granted: bool = False
    taken: bool = False
    on_abandon: Callable[[], None] | None = None    # counts the call as failed (Inference.run sets it)
    _on_grant: Callable[[], None] | None = None

    def grant(self) -> None:
        self.granted = True
        if self._on_grant is not None:
            self._on_grant()

    def when_granted(self, callback: Callable[[], None]) -> None:
        if self.granted:
            callback()
        else:
            self._on_grant = callback

    def run_due(self) -> None:
        """The batch's delay is over: run it now, with whoever joined (a no-op once it ran)."""
        self.batch.run()

    def take(self) -> tuple[Resident, InferResult]:
        """This call's share of the batch's result, or the batch's error raised; the caller `leave`s."""
        self.taken = True
        if self.item.error is not None:
            raise self.item.error
        assert self.item.share is not None     # granted only once its batch ran
        return self.item.share

    def give_up(self) -> bool:
        """The caller went away: leave the batch if it has not run, and give the admission slot back.
        Returns whether there was a seat to give up."""
        if self.taken:
            return False
        self.taken = True
        if not self.batch.done:
            self.batch.seats.remove(self)
        self.leave()
        return True

    def abandon(self) -> None:
        """The RPC ended while the call waited (cancelled, past its deadline): give up, and count the call."""
        if self.give_up() and self.on_abandon is not None:
            self.on_abandon()


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
