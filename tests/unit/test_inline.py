"""Which calls run on the gRPC event loop (inference.py's `inline` attempts, api/aio.py): only a quick,
in-process model's calls that need not wait; every other attempt is WouldWait before it has any effect."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest

from warmd import batching
from warmd.batching import Seat
from warmd.errors import Code, WarmdError, WouldWait
from warmd.inference import PROBE_BELOW_S, PROBE_EVERY, PROBES, QUICK_S, Inference, _Pace
from warmd.providers import CallContext, InferRequest, InferResult
from warmd.spec import ModelSpec, Source


class Quick:
    in_process, batchable = True, False

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds, self.calls = seconds, 0

    def infer(self, request: InferRequest) -> InferResult:
        self.calls += 1
        if self.seconds:
            time.sleep(self.seconds)
        return InferResult(tensors={"y": request.tensors["x"] * 2})


class Elsewhere(Quick):
    in_process = False      # a remote endpoint, a runner process, the cluster


class Scheduler:
    """Holds one resident model, or none (it would load first)."""

    def __init__(self, provider: Quick, resident: bool = True) -> None:
        self.resident = SimpleNamespace(provider=provider) if resident else None
        self.held = 0

    def hold(self, name: str, keep_alive: float | None = None, wait: bool = True) -> SimpleNamespace:
        if self.resident is None:
            if not wait:
                raise WouldWait
            raise AssertionError("a test load")
        self.held += 1
        return self.resident

    def release(self, resident: SimpleNamespace) -> None:
        self.held -= 1

    @contextlib.contextmanager
    def acquire(self, name: str, keep_alive: float | None = None) -> Iterator[SimpleNamespace]:
        """What a batch from worker threads holds its model with."""
        resident = self.hold(name, keep_alive)
        try:
            yield resident
        finally:
            self.release(resident)


def _setup(provider: Quick, resident: bool = True, **spec: object) -> tuple[Inference, Scheduler, ModelSpec]:
    scheduler = Scheduler(provider, resident)
    inference = Inference(scheduler, {"fake": type(provider)})  # type: ignore[arg-type]
    return inference, scheduler, ModelSpec(name="m", file=Path("m.yaml"), source=Source("path", "w"),
                                           provider="fake", **spec)  # type: ignore[arg-type]


def _call(inline: bool) -> InferRequest:
    return InferRequest(tensors={"x": np.ones((1, 4), np.float32)}, context=CallContext(inline=inline))


def _measured(inference: Inference, spec: ModelSpec) -> int:
    """Calls on a worker thread until the model measures quick; how many ran. One is enough on an idle
    machine; on a busy one a forward can be held up past QUICK_S (the GIL, the CPU), and the moving average
    needs a few more."""
    for count in range(1, 101):
        inference.run(spec, _call(inline=False))
        if inference._pace(spec.name).quick:
            return count
    raise AssertionError("a quick forward never measured under QUICK_S")


def test_a_quick_model_runs_inline_once_measured_on_a_thread() -> None:
    provider = Quick()
    inference, scheduler, spec = _setup(provider)
    with pytest.raises(WouldWait):                      # not measured yet
        inference.run(spec, _call(inline=True))
    assert provider.calls == 0 and inference.stats("m").success_count == 0
    n = _measured(inference, spec)                       # on a worker thread: measured
    _, result = inference.run(spec, _call(inline=True))
    assert provider.calls == n + 1 and result.tensors["y"].tolist() == [[2.0] * 4]
    assert inference.stats("m").success_count == n + 1 and scheduler.held == 0
    assert inference.queue_depth("m") == (0, 0)


def test_an_inline_call_queues_for_a_slot_in_order_and_runs_once_granted() -> None:
    provider = Quick()
    inference, scheduler, spec = _setup(provider, max_in_flight=1, max_queue=2)
    n = _measured(inference, spec)
    gate = inference._gate("m")
    gate.admit(spec, CallContext())                      # the one slot is taken
    with pytest.raises(WouldWait) as first:
        inference.run(spec, _call(inline=True))
    with pytest.raises(WouldWait) as second:
        inference.run(spec, _call(inline=True))
    assert inference.queue_depth("m") == (1, 2) and provider.calls == n          # queued, nothing run
    with pytest.raises(WarmdError) as full:                                     # loop waiters count
        inference.run(spec, _call(inline=True))
    assert full.value.code is Code.BUSY
    woken: list[str] = []
    first.value.ticket.when_granted(lambda: woken.append("first"))
    second.value.ticket.when_granted(lambda: woken.append("second"))
    gate.leave(spec)                                     # the slot goes to the first in line
    assert woken == ["first"] and inference.queue_depth("m") == (1, 1)
    again = _call(inline=True)
    again.context.granted = first.value.ticket           # run again once granted: takes that slot
    inference.run(spec, again)
    assert woken == ["first", "second"] and provider.calls == n + 1
    second.value.ticket.give_up()                        # its caller went away: the slot is free again
    first.value.ticket.give_up()                         # taken already: nothing to give back
    assert inference.queue_depth("m") == (0, 0)
    assert inference.stats("m").success_count == n + 1 and inference.stats("m").fail_count == 1


def test_a_loop_waiters_time_in_the_queue_counts_in_its_statistics() -> None:
    provider = Quick()
    inference, _, spec = _setup(provider, max_in_flight=1)
    _measured(inference, spec)
    before = inference.stats("m")
    gate = inference._gate("m")
    gate.admit(spec, CallContext())                      # the one slot is taken
    with pytest.raises(WouldWait) as queued:
        inference.run(spec, _call(inline=True))
    time.sleep(0.05)                                     # it waits its turn on the loop
    gate.leave(spec)
    again = _call(inline=True)
    again.context.granted = queued.value.ticket
    inference.run(spec, again)
    after = inference.stats("m")
    assert after.queue_count == before.queue_count + 1
    assert after.queue_ns - before.queue_ns >= 50_000_000          # from its first attempt, not its rerun
    assert after.success_ns - before.success_ns >= 50_000_000


def test_an_inline_attempt_that_would_wait_changes_nothing() -> None:
    provider = Quick()
    inference, scheduler, spec = _setup(provider, max_in_flight=1)
    n = _measured(inference, spec)
    gate = inference._gate("m")
    gate.admit(spec, CallContext())                      # the one slot is taken
    with pytest.raises(WouldWait) as queued:
        inference.run(spec, _call(inline=True))
    assert inference.queue_depth("m") == (1, 1) and provider.calls == n
    queued.value.ticket.give_up()                        # the caller went away while queued
    assert inference.queue_depth("m") == (1, 0)
    gate.leave(spec)
    scheduler.resident = None                            # evicted: the call would load it first
    with pytest.raises(WouldWait):
        inference.run(spec, _call(inline=True))
    assert inference.queue_depth("m") == (0, 0) and inference.stats("m").success_count == n
    assert inference.stats("m").fail_count == 0


@pytest.mark.parametrize("provider", [Quick(seconds=QUICK_S * 3), Elsewhere()], ids=["slow forward", "not in process"])
def test_only_quick_in_process_models_run_inline(provider: Quick) -> None:
    inference, _, model = _setup(provider)
    for _ in range(3):
        inference.run(model, _call(inline=False))
    with pytest.raises(WouldWait) as attempt:
        inference.run(model, _call(inline=True))
    assert attempt.value.ticket is None and provider.calls == 3 and inference.queue_depth("m") == (0, 0)


def test_a_quick_model_stays_quick_until_its_forward_on_the_loop_averages_twice_the_line() -> None:
    inference, _, spec = _setup(Quick())

    def averaging(seconds: float, on_loop: bool) -> bool:
        for _ in range(40):                          # the moving average settles on `seconds`
            inference._timed("m", seconds, on_loop)
        return inference._pace("m").quick

    assert not averaging(QUICK_S * 1.5, on_loop=False)      # not quick yet: it enters under QUICK_S
    assert averaging(QUICK_S * 0.5, on_loop=False)
    assert averaging(QUICK_S * 1.5, on_loop=True)           # near the line it stays where it is
    assert averaging(QUICK_S * 5, on_loop=False)            # a slow big request on a thread: still quick
    assert not averaging(QUICK_S * 2.5, on_loop=True)       # it leaves past twice the line
    assert not averaging(QUICK_S * 1.5, on_loop=True)


def test_a_model_held_over_the_line_by_contention_on_the_threads_is_measured_on_the_loop(monkeypatch) -> None:
    import warmd.inference

    ticks = iter(range(10**6))          # every forward measures 10 µs, however busy the machine is
    monkeypatch.setattr(warmd.inference, "time", SimpleNamespace(
        **{n: getattr(time, n) for n in ("perf_counter_ns", "monotonic", "time")},
        perf_counter=lambda: next(ticks) * 10e-6))
    provider = Quick()
    inference, _, spec = _setup(provider)
    for _ in range(40):
        inference._timed("m", QUICK_S * 1.5)         # the worker threads' measure, under a load
    ran = []
    for attempt in range(PROBE_EVERY):
        try:
            inference.run(spec, _call(inline=True))
            ran.append(attempt)
        except WouldWait as wait:
            assert wait.ticket is None
    assert ran == [PROBE_EVERY - 1] and provider.calls == 1     # one probe; its forward on the loop is quick
    inference.run(spec, _call(inline=True))                      # quick now: every call
    assert provider.calls == 2 and inference.stats("m").success_count == 2


@pytest.mark.parametrize("threads_s", [QUICK_S * 1.5, PROBE_BELOW_S * 2], ids=["slow on the loop too", "slow"])
def test_probes_of_a_slow_model_are_few_and_a_slower_one_gets_none(threads_s: float) -> None:
    provider = Quick(seconds=QUICK_S * 3)
    inference, _, spec = _setup(provider)
    for _ in range(40):
        inference._timed("m", threads_s)
    for _ in range(PROBE_EVERY * (PROBES + 4)):
        try:
            inference.run(spec, _call(inline=True))
        except WouldWait:
            pass
    assert provider.calls == (PROBES if threads_s < PROBE_BELOW_S else 0)


class Batchable(Quick):
    batchable = True

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail, self.rows = fail, []
        self.go = threading.Event()     # a batch's forward waits for it
        self.go.set()

    def infer(self, request: InferRequest) -> InferResult:
        self.go.wait(10)
        self.rows.append(len(request.tensors["x"]))
        if self.fail:
            raise RuntimeError("the batch broke")
        return super().infer(request)


def _row(value: float, inline: bool = True) -> InferRequest:
    return InferRequest(tensors={"x": np.full((1, 4), value, np.float32)}, context=CallContext(inline=inline))


def _again(seat: object, value: float) -> InferRequest:
    """The call run again once its seat was granted (api/aio.py decodes the request anew)."""
    request = _row(value)
    request.context.granted = seat
    return request


def _seat(inference: Inference, spec: ModelSpec, request: InferRequest) -> Seat:
    """The seat a call on the loop takes in its model's batch."""
    with pytest.raises(WouldWait) as seated:
        inference.run(spec, request)
    assert isinstance(seated.value.ticket, Seat)
    return seated.value.ticket


async def _granted(*seats: Seat) -> None:
    """Wait on the loop, as api/aio.py does, until every seat's batch ran on the batcher's thread."""
    loop = asyncio.get_running_loop()
    waits = []
    for seat in seats:
        woken = loop.create_future()
        seat.when_granted(lambda w=woken: w.done() or w.set_result(None))
        waits.append(woken)
    await asyncio.wait_for(asyncio.gather(*waits), 10)


def _batch_pace(inference: Inference, spec: ModelSpec) -> _Pace:
    return inference._batcher(spec)._quick.__self__  # type: ignore[union-attr]


def _slow(inference: Inference, spec: ModelSpec) -> None:
    """The model's batch forwards measured slow (past PROBE_BELOW_S): its batches run on the batcher's thread."""
    _batch_pace(inference, spec).measured(1.0, on_loop=False)


def _quickly(inference: Inference, spec: ModelSpec) -> None:
    """The model's batch forwards measured quick: its batches run on the loop."""
    _batch_pace(inference, spec).measured(0.0, on_loop=False)


def test_a_batch_runs_on_a_thread_until_measured_quick_then_on_the_loop_in_the_call_that_fills_it() -> None:
    async def body() -> None:
        provider = Batchable()
        inference, scheduler, spec = _setup(provider, max_batch=2, max_in_flight=8)
        first = [_seat(inference, spec, _row(v)) for v in (1.0, 2.0)]   # not measured: never on the loop
        await _granted(*first)
        assert provider.rows == [2] and _batch_pace(inference, spec).quick      # measured under the line
        for seat, value in zip(first, (1.0, 2.0)):
            inference.run(spec, _again(seat, value))
        seat = _seat(inference, spec, _row(3.0))
        _, second = inference.run(spec, _row(4.0))       # fills the batch: it runs in this call, on the loop
        assert provider.rows == [2, 2] and second.tensors["y"].tolist() == [[8.0] * 4] and seat.granted
        _, share = inference.run(spec, _again(seat, 3.0))
        assert share.tensors["y"].tolist() == [[6.0] * 4] and scheduler.held == 0
        assert inference.queue_depth("m") == (0, 0) and inference.stats("m").success_count == 4
    asyncio.run(body())


def test_a_slow_batch_runs_on_a_thread_and_each_call_takes_its_own_share() -> None:
    async def body() -> None:
        provider = Batchable()
        inference, scheduler, spec = _setup(provider, max_batch=3, max_in_flight=8)
        _slow(inference, spec)
        seats = [_seat(inference, spec, _row(value)) for value in (1.0, 2.0)]
        assert seats[0].due == spec.max_delay_ms / 1000 and seats[1].due is None     # the opener times it
        assert provider.rows == [] and scheduler.held == 1 and inference.queue_depth("m") == (2, 0)
        seats.append(_seat(inference, spec, _row(3.0)))      # fills the batch: it runs on the batcher's thread
        await _granted(*seats)
        assert provider.rows == [3] and scheduler.held == 0
        for seat, value in zip(seats, (1.0, 2.0, 3.0)):
            _, share = inference.run(spec, _again(seat, value))
            assert share.tensors["y"].tolist() == [[value * 2] * 4]
        stats = inference.stats("m")
        assert (stats.success_count, stats.execution_count, stats.inference_count) == (3, 1, 3)
        assert inference.queue_depth("m") == (0, 0)
    asyncio.run(body())


def _batch_threads() -> set[threading.Thread]:
    """Batchers' threads alive now (earlier tests' end only after batching.IDLE_S with nothing to do)."""
    return {t for t in threading.enumerate() if t.name.startswith("batch-")}


def test_a_spec_edit_resizes_the_models_batcher_in_place() -> None:
    async def body() -> None:
        provider = Batchable()
        inference, scheduler, spec = _setup(provider, max_batch=2, max_in_flight=8)
        _slow(inference, spec)
        batcher, threads = inference._batcher(spec), _batch_threads()
        edited = dataclasses.replace(spec, max_batch=3, max_delay_ms=50)
        seats = [_seat(inference, edited, _row(value)) for value in (1.0, 2.0)]
        assert provider.rows == [] and not any(seat.granted for seat in seats)    # two no longer fill it
        assert seats[0].due == 0.05
        seats.append(_seat(inference, edited, _row(3.0)))
        await _granted(*seats)
        new = _batch_threads() - threads        # the batch's own thread only (a batcher starts no other)
        assert provider.rows == [3] and scheduler.held == 0
        assert inference._batcher(edited) is batcher and [t.name for t in new] in ([], ["batch-m-loop"])
    asyncio.run(body())


def test_a_batchers_threads_end_when_idle_and_its_next_batch_starts_them_again(monkeypatch) -> None:
    monkeypatch.setattr(batching, "IDLE_S", 0.05)

    async def body() -> None:
        provider = Batchable()
        inference, scheduler, spec = _setup(provider, max_batch=2, max_in_flight=8)
        _slow(inference, spec)
        before = _batch_threads()
        seats = [_seat(inference, spec, _row(v)) for v in (1.0, 2.0)]      # a batch on the loop's thread
        await _granted(*seats)
        inference.run(spec, _row(3.0, inline=False))                      # a call from a worker thread
        started = _batch_threads() - before
        assert {t.name for t in started} == {"batch-m", "batch-m-loop"}
        for thread in started:
            await asyncio.to_thread(thread.join, 10)
        assert not any(t.is_alive() for t in started) and provider.rows == [2, 1]
        again = [_seat(inference, spec, _row(v)) for v in (4.0, 5.0)]      # the next batch starts a thread
        await _granted(*again)
        assert provider.rows == [2, 1, 2] and scheduler.held == 0
    asyncio.run(body())


def test_a_batch_ready_while_another_runs_takes_seats_until_it_runs() -> None:
    async def body() -> None:
        provider = Batchable()
        inference, scheduler, spec = _setup(provider, max_batch=2, max_in_flight=8)
        _slow(inference, spec)
        provider.go.clear()                                  # the first batch's forward is held
        first = [_seat(inference, spec, _row(v)) for v in (1.0, 2.0)]
        second = [_seat(inference, spec, _row(3.0))]
        second[0].run_due()                                  # due while the first runs: it waits, still open
        second.append(_seat(inference, spec, _row(4.0)))     # and takes this call
        assert second[1].batch is second[0].batch and second[0].batch is not first[0].batch
        third = _seat(inference, spec, _row(5.0))            # the second is full: a third opens
        assert third.batch is not second[0].batch
        provider.go.set()
        await _granted(*first, *second)
        assert provider.rows == [2, 2] and not third.granted
        third.run_due()
        await _granted(third)
        assert provider.rows == [2, 2, 1] and scheduler.held == 0
    asyncio.run(body())


def test_calls_with_other_parameters_sit_in_a_batch_of_their_own() -> None:
    async def body() -> None:
        provider = Batchable()
        inference, _, spec = _setup(provider, max_batch=2, max_in_flight=8)
        _slow(inference, spec)
        given = {"temperature": 0.5}
        plain = _seat(inference, spec, _row(1.0))
        tuned = _seat(inference, spec, dataclasses.replace(_row(2.0), parameters=given))
        assert plain.batch is not tuned.batch and provider.rows == []
        more = [_seat(inference, spec, _row(3.0)),           # fills the batch without parameters
                _seat(inference, spec, dataclasses.replace(_row(4.0), parameters=dict(given)))]   # and the other
        await _granted(plain, tuned, *more)
        assert provider.rows == [2, 2]
    asyncio.run(body())


def test_a_batch_on_the_loop_runs_when_due_without_the_callers_that_left() -> None:
    async def body() -> None:
        provider = Batchable()
        inference, scheduler, spec = _setup(provider, max_batch=8, max_in_flight=8)
        _quickly(inference, spec)
        seats = [_seat(inference, spec, _row(value)) for value in (1.0, 2.0)]
        seats[1].give_up()                                   # its caller went away: seat and slot given back
        assert inference.queue_depth("m") == (1, 0)
        seats[0].run_due()                                   # the delay is over: it runs with whoever is left
        seats[0].run_due()                                   # once
        await _granted(seats[0])
        assert provider.rows == [1] and scheduler.held == 0
        _, share = inference.run(spec, _again(seats[0], 1.0))
        assert share.tensors["y"].tolist() == [[2.0] * 4]
        seats[0].give_up()                                   # taken already: nothing more to give back
        assert inference.queue_depth("m") == (0, 0) and inference.stats("m").success_count == 1
    asyncio.run(body())


def test_a_batch_that_fails_on_the_loop_fails_each_of_its_calls_with_a_code() -> None:
    async def body() -> None:
        provider = Batchable(fail=True)
        inference, scheduler, spec = _setup(provider, max_batch=8, max_in_flight=8)
        _quickly(inference, spec)
        seat = _seat(inference, spec, _row(1.0))
        seat.run_due()
        await _granted(seat)
        with pytest.raises(WarmdError) as failed:
            inference.run(spec, _again(seat, 1.0))
        assert failed.value.code is Code.PROVIDER_FAILED and "the batch broke" in failed.value.message
        assert inference.stats("m").fail_count == 1 and inference.queue_depth("m") == (0, 0)
        assert scheduler.held == 0
    asyncio.run(body())


def test_a_call_whose_rpc_ends_while_it_waits_on_the_loop_counts_as_failed_with_its_code() -> None:
    async def body() -> None:
        provider = Batchable()
        inference, scheduler, spec = _setup(provider, max_in_flight=1, max_batch=4)
        codes: list[str] = []
        inference.observer = lambda _model, code, _seconds: codes.append(code)     # what metrics hear
        gate = inference._gate("m")
        gate.admit(spec, CallContext())                      # the one slot is taken
        with pytest.raises(WouldWait) as queued:
            inference.run(spec, _call(inline=True))
        late = _call(inline=True)
        late.context.deadline = time.monotonic() - 1         # its deadline passed while it waited
        with pytest.raises(WouldWait) as overdue:
            inference.run(spec, late)
        queued.value.ticket.abandon()                        # api/aio.py: the RPC was cancelled
        overdue.value.ticket.abandon()
        overdue.value.ticket.abandon()                       # once
        assert inference.stats("m").fail_count == 2 and inference.queue_depth("m") == (1, 0)
        gate.leave(spec)
        seat = _seat(inference, spec, _call(inline=True))    # a seat in a batch on the loop, the same
        seat.abandon()
        seat.run_due()                                       # nobody is left in it: it does not run
        assert inference.stats("m").fail_count == 3 and inference.queue_depth("m") == (0, 0)
        assert inference.stats("m").success_count == 0 and provider.rows == [] and scheduler.held == 0
        assert codes == ["cancelled", "deadline_exceeded", "cancelled"]
    asyncio.run(body())


def test_a_seat_taken_for_one_model_is_given_back_when_the_call_goes_to_another() -> None:
    async def body() -> None:
        provider = Batchable()
        inference, _, spec = _setup(provider, max_batch=8, max_in_flight=8)
        seat = _seat(inference, spec, _row(1.0))
        other = ModelSpec(name="n", file=Path("n.yaml"), source=Source("path", "w"), provider="fake")
        with pytest.raises(WouldWait) as moved:              # run again, its name now resolves to "n" (not quick)
            inference.run(other, _again(seat, 1.0))
        assert moved.value.ticket is None and inference.queue_depth("m") == (0, 0)
        seat.run_due()
        assert provider.rows == [] and inference.stats("m").success_count == 0
    asyncio.run(body())


def test_a_batched_call_on_the_loop_for_a_model_not_resident_changes_nothing() -> None:
    provider = Batchable()
    inference, scheduler, spec = _setup(provider, resident=False, max_batch=8, max_in_flight=8)
    with pytest.raises(WouldWait) as attempt:            # it would load first: a worker thread's job
        inference.run(spec, _row(1.0))
    assert attempt.value.ticket is None and inference.queue_depth("m") == (0, 0)
    assert provider.rows == [] and inference.stats("m").success_count == 0


def test_a_big_request_does_not_run_inline() -> None:
    provider = Quick()
    inference, _, spec = _setup(provider)
    _measured(inference, spec)                           # small calls would run inline now
    big = InferRequest(tensors={"x": np.ones((1, 1 << 15), np.float32)}, context=CallContext(inline=True))
    with pytest.raises(WouldWait):
        inference.run(spec, big)
