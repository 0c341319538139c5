"""Running a model: one path for every front (the application layer's `infer`: warmd.v1 Infer and
InferStream, V2 ModelInfer and ModelStreamInfer, the HTTP dialects). It admits calls per model (`max_in_flight` running, `max_queue` waiting in order of
arrival, beyond that `busy` at once, never a hang) and keeps the per-model statistics that V2's ModelStatistics reports.

It is also the error boundary of every provider: inputs are checked against the spec before a provider
sees them (declared dtypes and shapes, `max_input_chars`), and whatever a provider raises leaves as a
stable code, never `internal`: inputs that do not fit the model are `invalid_argument`, running out of
memory is `insufficient_memory`, anything else is `provider_failed` with the exception's message.
Every failure is counted with its code (statistics, metrics).
"""
from __future__ import annotations

import collections
import ctypes
import functools
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from warmd.batching import Batcher, Seat
from warmd.errors import Code, WarmdError, WouldWait
from warmd.providers import CallContext, InferRequest, InferResult, Provider
from warmd.providers.base import check_texts, conform_inputs
from warmd.scheduler import Resident, Scheduler
from warmd.spec import ModelSpec

log = logging.getLogger(__name__)
# A request this big (text characters or tensor bytes) leaves freed heap behind (tokenizers, decoded
# messages) that glibc keeps unless asked: after one, the heap is trimmed (~1 ms) so the RSS comes back,
# TRIM_DELAY_S later: the gRPC front frees the request's buffers on its loop's thread (in that thread's own
# malloc arena) only after the call returned.
TRIM_AFTER_BYTES = 64 * 2**10
TRIM_DELAY_S = 0.1
# What runtimes say when the inputs do not fit the model: torch's shape and dtype errors, a forward() that
# takes another number of inputs, an index past an embedding, ONNX Runtime's INVALID_ARGUMENT status.
_INPUT_MISMATCH = re.compile(
    r"shape|size of tensor|must match the size|dtype|scalar type|input type|expected input|not implemented "
    r"for '|index out of range|dimension out of range|positional argument|unexpected keyword argument|"
    r"invalid_argument|invalid rank|invalid dimensions", re.IGNORECASE)
_OUT_OF_MEMORY = re.compile(r"out of memory|failed to allocate memory|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)
# A call may run on the gRPC event loop (api/aio.py) when its model's forward takes less than this (a moving
# average of the last calls): the loop answers nothing else meanwhile. A quick model stays quick until its
# average on the loop passes twice this: near the line, calls would move between the loop and the worker
# threads with every few calls.
QUICK_S = 0.001
_QUICK_WEIGHT = 0.2     # of the newest forward in the moving average
# On worker threads a forward's time includes waiting for the GIL while other calls hold it: under a steady
# load that can hold a quick model over the line for as long as the load lasts. So a model whose forward
# there averages under PROBE_BELOW_S gets one call in PROBE_EVERY tried on the loop, PROBES at most, to be
# measured where it would run.
PROBE_BELOW_S = 4 * QUICK_S
# A batch gathered on the event loop (batching.py) runs there by the same rules, else on the batcher's thread
# while the loop takes the next calls. A thread's measure is the worse there too: on 2 CPUs under load, a
# tiny MLP's batch took 1.2 ms on the batcher's thread (0.5 ms of its CPU) and 0.2 ms on the loop. A
# 64-1024-1024-10 MLP's batches then run on the loop too, with 2-3 calls each (6-9 on the thread), no
# better or worse within the noise (bench/results/profiles/README.md).
PROBE_EVERY = 8
PROBES = 4


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


@dataclass
class _Pace:
    """How long one model's forward takes, measured apart on worker threads and on the event loop, and whether
    its calls (or its batches) may run on the loop (QUICK_S, PROBE_BELOW_S). Updated from many threads without
    a lock: a lost update only delays a decision by a call."""

    threads_s: float | None = None      # moving average of its forwards on worker threads
    loop_s: float | None = None         # ... on the event loop
    quick: bool = False
    probes: int = 0                     # calls tried on the loop while not quick, since it was last quick
    asked: int = 0                      # inline attempts while not quick

    def measured(self, seconds: float, on_loop: bool) -> None:
        if on_loop:
            self.loop_s = _averaged(self.loop_s, seconds)
            if self.loop_s < QUICK_S:
                self.quick = True
            elif self.loop_s > 2 * QUICK_S:
                self.quick = False
            return
        self.threads_s = _averaged(self.threads_s, seconds)
        if not self.quick and self.threads_s < QUICK_S:
            self.quick, self.loop_s, self.probes = True, None, 0

    def may_run_on_loop(self) -> bool:
        """Whether a small request's call may run on the loop now: quick, or the probe's turn."""
        if self.quick:
            return True
        if self.threads_s is None or self.threads_s > PROBE_BELOW_S or self.probes >= PROBES:
            return False
        self.asked += 1
        if self.asked % PROBE_EVERY:
            return False
        self.probes += 1
        return True


def _averaged(average: float | None, seconds: float) -> float:
    return seconds if average is None else average + _QUICK_WEIGHT * (seconds - average)


class _Ticket:
    """A queued call's place: granted a slot by the call that leaves it, or given up by its caller. A call
    waiting on a worker thread sleeps on `woken`; one waiting on the event loop (api/aio.py) is told through
    `when_granted`."""

    due = None      # not a batch's seat (batching.Seat): api/aio.py has nothing to run for it
    on_abandon: Callable[[], None] | None = None    # counts the call as failed (Inference.run sets it)

    def __init__(self, gate: "_Gate", spec: ModelSpec, t0: int) -> None:
        self.gate, self.spec = gate, spec
        self.t0 = t0                # when its call started (perf_counter_ns): its queue time counts from it
        self.granted = False
        self.taken = False          # by the call run again once granted (Gate.admit)
        self.woken = threading.Event()
        self._on_grant: Callable[[], None] | None = None

    def grant(self) -> None:
        """(under the gate's lock) The slot is this call's now."""
        self.granted = True
        self.woken.set()
        if self._on_grant is not None:
            self._on_grant()

    def when_granted(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) once the slot is granted; at once if it is already."""
        with self.gate.lock:
            if not self.granted:
                self._on_grant = callback
                return
        callback()

    def give_up(self) -> bool:
        """The caller went away before taking its slot (cancelled, its deadline passed, its model gone):
        leave the queue, or the granted slot. Returns whether there was a place to give up."""
        with self.gate.lock:
            if self.taken:
                return False
            self.taken = True
            if not self.granted:
                self.gate.queue.remove(self)
                return True
        self.gate.leave(self.spec)
        return True

    def abandon(self) -> None:
        """The RPC ended while the call waited (cancelled, past its deadline): give up, and count the call."""
        if self.give_up() and self.on_abandon is not None:
            self.on_abandon()


class _Gate:
    """One model's admission: how many calls run, and the calls waiting for a slot, first come first served.
    A call that leaves hands its slot to the first waiting one (no waiter polls, none barges past)."""

    def __init__(self) -> None:
        self.running = 0
        self.queue: collections.deque[_Ticket] = collections.deque()
        self.lock = threading.Lock()

    def admit(self, spec: ModelSpec, context: CallContext, t0: int = 0) -> None:
        """Take a slot, waiting for one in the queue (`t0`: when the call started, for a loop waiter's ticket).

        Raises:
            WarmdError: `busy` at once when the queue is full; `cancelled` / `deadline_exceeded` when the
                caller gives up while waiting (its place is given up).
            WouldWait: for a call on the event loop, with its ticket, queued: the loop waits for the grant and
                runs the call again with `context.granted` set to the ticket.
        """
        ticket = context.granted
        if ticket is not None and ticket.gate is self:
            context.granted = None          # the slot the loop waited for
            ticket.taken = True
            return
        with self.lock:
            if self.running < spec.max_in_flight and not self.queue:
                self.running += 1
                return
            if len(self.queue) >= spec.max_queue:
                raise WarmdError(Code.BUSY, f"model {spec.name!r} is busy: {self.running} running, "
                                 f"{len(self.queue)} waiting (max_in_flight {spec.max_in_flight}, max_queue "
                                 f"{spec.max_queue} in its spec); retry later")
            ticket = _Ticket(self, spec, t0)
            self.queue.append(ticket)
        if context.inline:
            raise WouldWait(ticket)
        context.on_cancel(ticket.woken.set)
        while True:
            left = None if context.deadline is None else context.deadline - time.monotonic()
            ticket.woken.wait(None if left is None else max(0.0, left))
            with self.lock:
                if ticket.granted:
                    return
                try:
                    context.check()
                except WarmdError:
                    self.queue.remove(ticket)
                    raise

    def leave(self, spec: ModelSpec) -> None:
        """Give the slot back: to the first waiting calls while there is room (max_in_flight may have
        changed with the spec), else free."""
        with self.lock:
            self.running -= 1
            while self.queue and self.running < spec.max_in_flight:
                self.running += 1
                self.queue.popleft().grant()


class Inference:
    def __init__(self, scheduler: Scheduler, providers: Mapping[str, type[Provider]]) -> None:
        self.scheduler, self.providers = scheduler, providers
        self._stats: dict[str, ModelStats] = {}
        self._gates: dict[str, _Gate] = {}
        self._batchers: dict[str, Batcher] = {}
        self._paces: dict[str, _Pace] = {}          # model -> its forward's times (only ever added)
        self._lock = threading.Lock()
        # Told about every finished call: (model, "ok" or the error code, seconds). Metrics sets it.
        self.observer: Callable[[str, str, float], None] | None = None

    def run(self, spec: ModelSpec, request: InferRequest,
            keep_alive: float | None = None) -> tuple[Resident, InferResult]:
        """Admit the call, hold the model (loading it if needed) and run the request on it.

        Args:
            spec: the model, as the caller looked it up (statistics exist only for catalog models).

        Raises:
            WarmdError: `busy` when the model's queue is full; `cancelled` / `deadline_exceeded` when the
                caller gave up while queued or running; whatever the scheduler or provider raised. Every
                failure is counted.
            WouldWait: the request runs on the event loop (`context.inline`) and would wait for a load, or
                its model is not quick (QUICK_S): nothing was counted or run. Or it waits on the loop, with
                `ticket` holding its place: in the model's queue (a `_Ticket`) or in a batch (a `Seat`).
        """
        granted = request.context.granted
        if isinstance(granted, Seat):
            if granted.batch.batcher.model == spec.name:
                return self._take(spec, granted)
            granted.give_up()       # the call now goes to another model (a role moved): its share is not its own
            request.context.granted = granted = None
        model = spec.name
        # A call that waited on the loop for its slot counts from its first attempt (its queue time too).
        t0 = granted.t0 if isinstance(granted, _Ticket) else time.perf_counter_ns()
        inline = request.context.inline
        size = _size(request)
        if inline and granted is None and not self._quick(spec, size):
            raise WouldWait
        gate = self._gate(model)
        seated = False      # the call's slot went with it into a batch on the loop (its Seat gives it back)
        try:
            request.tensors = conform_inputs(spec, request.tensors)
            check_texts(spec, request.text, request.parameters.get("messages"))
            gate.admit(spec, request.context, t0)
            queued = time.perf_counter_ns() - t0
            try:
                request.context.check()
                batcher = self._batcher(spec)
                if batcher is None:
                    resident = self.scheduler.hold(model, keep_alive, wait=not inline)
                    try:
                        started = time.perf_counter()
                        result = resident.provider.infer(request)
                        self._timed(model, time.perf_counter() - started, on_loop=inline)
                    finally:
                        self.scheduler.release(resident)
                elif not inline:
                    resident, result = batcher.submit(request, keep_alive)
                else:
                    seat = batcher.join(request, keep_alive, functools.partial(gate.leave, spec), t0, queued)
                    if not seat.granted:
                        seated = True
                        raise WouldWait(seat)
                    resident, result = seat.take()      # this call filled a batch that ran on the loop
            finally:
                if not seated:
                    gate.leave(spec)
        except WouldWait as wait:
            if wait.ticket is not None:     # it waits on the loop: if its RPC ends meanwhile, it counts as failed
                wait.ticket.on_abandon = functools.partial(self._abandoned, spec, request, t0)
            raise
        except Exception as exc:  # noqa: BLE001 - the boundary: every provider failure gets its code here
            # Raised from here, not kept in a local: a frame holding the error its traceback holds is a cycle
            # that keeps the request (a 10 MiB text) alive until the garbage collector runs.
            raise self._failed(spec, request, t0, exc) from None
        finally:
            if size >= TRIM_AFTER_BYTES:
                _TRIMMER.soon()
        self._record(model, request, t0, ok=True, queued_ns=queued, executed=batcher is None)
        return resident, result

    def _take(self, spec: ModelSpec, seat: Seat) -> tuple[Resident, InferResult]:
        """The share of a call whose batch ran on the loop while it waited (Batcher.join), counted."""
        try:
            resident, result = seat.take()
        except Exception as exc:  # noqa: BLE001 - the boundary, as in run()
            raise self._failed(spec, seat.item.request, seat.t0, exc) from None
        finally:
            seat.leave()
        self._record(spec.name, seat.item.request, seat.t0, ok=True, queued_ns=seat.queued_ns)
        return resident, result

    def _abandoned(self, spec: ModelSpec, request: InferRequest, t0: int) -> None:
        """Count a call whose RPC ended while it waited on the loop, as the worker threads count theirs."""
        code = Code.DEADLINE_EXCEEDED if request.context.past_deadline() else Code.CANCELLED
        self._record(spec.name, request, t0, ok=False, code=code.value)

    def _failed(self, spec: ModelSpec, request: InferRequest, t0: int, exc: Exception) -> WarmdError:
        """Count a failed call and return its error (a provider's exception classified)."""
        err = exc if isinstance(exc, WarmdError) else provider_error(spec, request, exc)
        self._record(spec.name, request, t0, ok=False, code=err.code.value)
        return err

    def _quick(self, spec: ModelSpec, size: int) -> bool:
        """Whether the request may run on the event loop: a small request to an in-process model that batches
        (its call only takes a seat there) or whose forward has been quick (`_Pace`), or the probe's turn."""
        cls = self.providers.get(spec.provider)
        return (cls is not None and cls.in_process and size < TRIM_AFTER_BYTES
                and (_batches(spec, cls) or self._pace(spec.name).may_run_on_loop()))

    def _timed(self, model: str, seconds: float, on_loop: bool = False) -> None:
        self._pace(model).measured(seconds, on_loop)

    def _pace(self, model: str) -> _Pace:
        pace = self._paces.get(model)
        if pace is None:
            pace = self._paces.setdefault(model, _Pace())
        return pace

    def _gate(self, model: str) -> _Gate:
        gate = self._gates.get(model)       # read without the lock: gates are only ever added
        if gate is None:
            with self._lock:
                gate = self._gates.setdefault(model, _Gate())
        return gate

    def _batcher(self, spec: ModelSpec) -> Batcher | None:
        """The model's batcher when its spec asks for batching and its provider can batch: one per model name,
        whose `max_batch` and `max_delay_ms` follow its spec (an edit keeps the model's batches one at a
        time). Its threads end when idle (batching.IDLE_S): a removed spec's batcher keeps none."""
        cls = self.providers.get(spec.provider)
        if cls is None or not _batches(spec, cls):
            return None
        with self._lock:
            batcher = self._batchers.get(spec.name)
            if batcher is None:
                pace = _Pace()
                batcher = self._batchers[spec.name] = Batcher(
                    self.scheduler, spec.name, spec.max_batch, spec.max_delay_ms / 1000, self._executed,
                    pace.may_run_on_loop, pace.measured)
            else:
                batcher.configure(spec.max_batch, spec.max_delay_ms / 1000)
            return batcher

    def _executed(self, model: str) -> None:
        """A batch ran as one provider call."""
        with self._lock:
            self._stats.setdefault(model, ModelStats()).execution_count += 1

    def queue_depth(self, model: str) -> tuple[int, int]:
        """(running, waiting) calls of `model` now."""
        gate = self._gate(model)
        with gate.lock:
            return gate.running, len(gate.queue)

    def _record(self, model: str, request: InferRequest, t0: int, ok: bool, queued_ns: int = 0,
                code: str = "ok", executed: bool = False) -> None:
        """Count a finished call (`executed`: it was a provider call of its own, not a batch's share)."""
        elapsed = time.perf_counter_ns() - t0
        if self.observer is not None:
            self.observer(model, code, elapsed / 1e9)
        first = next(iter(request.tensors.values()), None)
        items = (first.shape[0] if first is not None and first.ndim else 1) if request.tensors else \
            max(1, len(request.text))
        with self._lock:
            stats = self._stats.setdefault(model, ModelStats())
            stats.execution_count += executed
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


def _batches(spec: ModelSpec, cls: type[Provider]) -> bool:
    """Whether the model's calls are batched: its spec asks for it and its provider can."""
    return spec.max_batch > 1 and cls.batchable


def provider_error(spec: ModelSpec, request: InferRequest, exc: Exception) -> WarmdError:
    """What a provider raised, as a stable code with a message a person can act on.

    Returns:
        `insufficient_memory` for an out-of-memory error (torch.OutOfMemoryError, MemoryError, "CUDA out of
        memory"); `invalid_argument` when the runtime says the inputs do not fit the model (naming what was
        given and what the spec declares); `provider_failed` with the exception's message otherwise.
    """
    first = (str(exc).strip().splitlines() or [""])[0][:500]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or _OUT_OF_MEMORY.search(str(exc)):
        return WarmdError(Code.INSUFFICIENT_MEMORY, f"model {spec.name!r} ran out of memory on this request "
                          f"({what}); send a smaller batch or shorter inputs, or make room (`warm ps` shows "
                          "what is resident)")
    if isinstance(exc, (RuntimeError, TypeError, ValueError, IndexError)) and _INPUT_MISMATCH.search(str(exc)):
        return WarmdError(Code.INVALID_ARGUMENT, f"model {spec.name!r} cannot take these inputs ({what}); given "
                          f"{_given(request)}; the spec declares {_declared(spec)}")
    log.warning("%s provider failed running %s", spec.provider, spec.name, exc_info=exc)
    return WarmdError(Code.PROVIDER_FAILED, f"{spec.provider} failed running {spec.name!r}: {what}")


def _given(request: InferRequest) -> str:
    import warmd.tensors as codec

    parts = [f"{n} {codec.dtype_name(a.dtype)} {list(a.shape)}" for n, a in request.tensors.items()]
    if request.text:
        parts.append(f"{len(request.text)} text(s)")
    return ", ".join(parts) or "nothing"


def _declared(spec: ModelSpec) -> str:
    return ", ".join(f"{d.name} {d.dtype} {list(d.shape)}" for d in spec.inputs) or \
        "no inputs (add `inputs:` to it to have requests checked before the model runs)"


class _Trimmer:
    """Gives freed heap back to the system after big requests (glibc only): what a provider or the front
    freed (a tokenizer's buffers, ~20 MiB for 95k characters; a 10 MiB message) stays in the process
    otherwise. One trim TRIM_DELAY_S after the first big request of a moment serves all of that moment's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = False

    def soon(self) -> None:
        if _LIBC is None:
            return
        with self._lock:
            if self._pending:
                return
            self._pending = True
        timer = threading.Timer(TRIM_DELAY_S, self._trim)
        timer.daemon = True
        timer.start()

    def _trim(self) -> None:
        with self._lock:
            self._pending = False
        _LIBC.malloc_trim(0)  # type: ignore[union-attr]


def _size(request: InferRequest) -> int:
    """Text characters plus tensor bytes."""
    size = sum(map(len, request.text)) if request.text else 0
    for array in request.tensors.values():
        size += getattr(array, "nbytes", 0)
    return size


def _libc() -> ctypes.CDLL | None:
    """glibc, found among the process's own symbols: ctypes.util.find_library("c") runs ldconfig (a process,
    2-6 ms of every start)."""
    if not sys.platform.startswith("linux"):
        return None         # malloc_trim is glibc's
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _libc()
_TRIMMER = _Trimmer()
