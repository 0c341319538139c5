"""CallContext: what a provider sees of a call's cancellation, deadline and streaming."""
from __future__ import annotations

import time

import pytest

from warmd.errors import Code, WarmdError
from warmd.providers import CallContext


def test_cancel_runs_callbacks_once_and_late_ones_at_once() -> None:
    calls: list[str] = []
    ctx = CallContext()
    ctx.on_cancel(lambda: calls.append("early"))
    ctx.check()                                   # not cancelled: no error
    ctx.cancel()
    ctx.cancel()
    ctx.on_cancel(lambda: calls.append("late"))
    assert calls == ["early", "late"]
    with pytest.raises(WarmdError) as info:
        ctx.check()
    assert info.value.code is Code.CANCELLED


def test_deadline_and_sink() -> None:
    seen: list[tuple] = []
    ctx = CallContext(deadline=time.monotonic() - 1, sink=lambda kind, value: seen.append((kind, value)))
    with pytest.raises(WarmdError) as info:
        ctx.check()
    assert info.value.code is Code.DEADLINE_EXCEEDED
    ctx.progress(3, 10, "frames")
    ctx.emit("tok")
    assert seen == [("progress", (3, 10, "frames")), ("text", "tok")]


def test_a_caller_that_listens_later_makes_the_call_streaming() -> None:
    seen: list[tuple] = []
    ctx = CallContext()
    ctx.progress(1, 2)                            # nobody listens yet: dropped
    assert not ctx.streaming
    ctx.stream_to(lambda kind, value: seen.append((kind, value)))
    assert ctx.streaming                          # the cluster provider streams from its replica then
    ctx.emit("tok")
    assert seen == [("text", "tok")]
