"""The bridge from a gRPC call to a provider's CallContext: cancellation and deadline."""
from __future__ import annotations

import time
from typing import Any, Callable

import grpc

from warmd.providers import CallContext


def call_context(context: grpc.ServicerContext, sink: Callable[[str, Any], None] | None = None) -> CallContext:
    """A CallContext that is cancelled when the RPC ends for any reason (the client cancelled, disconnected
    or ran past its deadline; or the call finished), with the RPC's deadline. `inline` when this attempt runs
    on the event loop (api/aio.py), where the call may not wait."""
    remaining = context.time_remaining()
    deadline = time.monotonic() + remaining if remaining is not None and remaining < 1e8 else None
    inline = getattr(context, "on_loop", False)
    ctx = CallContext(deadline, sink, inline=inline)
    ctx.granted = getattr(context, "granted", None)
    if not inline:      # a call on the event loop runs to its end before the loop could learn of a cancel
        context.add_callback(ctx.cancel)
    return ctx
