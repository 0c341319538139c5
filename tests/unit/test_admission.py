"""A model's admission gate (inference.py): slots handed over in order of arrival, nobody polling."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from waiting import wait_until
from warmd.errors import Code, WarmdError
from warmd.inference import _Gate
from warmd.providers import CallContext
from warmd.spec import ModelSpec, Source


def _spec(max_in_flight: int = 1, max_queue: int = 2) -> ModelSpec:
    return ModelSpec(name="m", file=Path("m.yaml"), source=Source("path", "w"), provider="torch",
                     max_in_flight=max_in_flight, max_queue=max_queue)


def _queued(gate: _Gate, spec: ModelSpec, context: CallContext, outcome: list) -> threading.Thread:
    def run() -> None:
        try:
            gate.admit(spec, context)
            outcome.append("admitted")
        except WarmdError as err:
            outcome.append(err.code)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_leaving_call_hands_its_slot_to_the_first_waiting_one_not_to_a_newcomer() -> None:
    gate, spec = _Gate(), _spec()
    gate.admit(spec, CallContext())
    first: list = []
    waiting = _queued(gate, spec, CallContext(), first)
    wait_until(lambda: len(gate.queue) == 1)
    gate.leave(spec)                                  # the slot goes to the waiting call at once...
    late: list = []
    newcomer = _queued(gate, spec, CallContext(time.monotonic() + 0.3), late)
    waiting.join(5)
    newcomer.join(5)
    assert first == ["admitted"] and late == [Code.DEADLINE_EXCEEDED]    # ...and the newcomer queues behind
    assert (gate.running, len(gate.queue)) == (1, 0)


def test_a_full_queue_is_busy_at_once_and_a_cancelled_waiter_gives_up_its_place() -> None:
    gate, spec = _Gate(), _spec(max_queue=1)
    gate.admit(spec, CallContext())
    context, outcome = CallContext(), []
    waiter = _queued(gate, spec, context, outcome)
    wait_until(lambda: len(gate.queue) == 1)
    with pytest.raises(WarmdError) as info:
        gate.admit(spec, CallContext())
    assert info.value.code is Code.BUSY and "1 running, 1 waiting" in info.value.message
    t0 = time.monotonic()
    context.cancel()
    waiter.join(5)
    assert outcome == [Code.CANCELLED] and time.monotonic() - t0 < 1 and not gate.queue
    gate.leave(spec)
    assert gate.running == 0


def test_a_raised_max_in_flight_admits_as_many_waiting_calls_as_now_fit() -> None:
    gate, narrow = _Gate(), _spec(max_in_flight=1)
    gate.admit(narrow, CallContext())
    outcomes: list = []
    waiters = [_queued(gate, narrow, CallContext(), outcomes) for _ in range(2)]
    wait_until(lambda: len(gate.queue) == 2)
    gate.leave(_spec(max_in_flight=3))               # the spec was edited: room for both
    for w in waiters:
        w.join(5)
    assert outcomes == ["admitted", "admitted"] and gate.running == 2
