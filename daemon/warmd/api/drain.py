"""Shutting down politely: every call but health checks passes this gate, which counts the calls under way,
and once the daemon drains, answers new ones `unavailable` "warmd is shutting down" (not a closed socket,
which a client can only report as "not reachable"). The HTTP front counts its requests through the same
gate (`admit`, `leave`), so one drain waits for every front.

It rebuilds each method's handler once (it goes last among the interceptors); the rebuilt handlers'
serializers also pass through responses a servicer serialized itself (api/serialized.py).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import grpc

from warmd.api.auth import OPEN_METHODS
from warmd.api.errors import abort
from warmd.api.serialized import passing_through
from warmd.errors import Code, WarmdError

# (request streaming, response streaming) -> the handler's behaviour attribute and how to build one
_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class Drain(grpc.ServerInterceptor):
    """Counts calls in their servicer; refuses new ones after `close()`."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0
        self._refusal: WarmdError | None = None
        # Per method, built once: the servicers' handlers never change (so this interceptor goes last).
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def close(self, drain_timeout: float) -> None:
        """From now on new calls are refused, saying how long the calls under way have."""
        with self._changed:
            self._refusal = WarmdError(Code.UNAVAILABLE, f"warmd is shutting down (calls under way get up to "
                                       f"{drain_timeout:g} s to finish); retry once it is started again")

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in a servicer, at most `timeout` seconds. Returns whether none is."""
        with self._changed:
            return self._changed.wait_for(lambda: self._running == 0, timeout)

    def running(self) -> int:
        with self._changed:
            return self._running

    def admit(self) -> None:
        """Count a call in (`leave` counts it out).

        Raises:
            WarmdError: `unavailable` once the daemon drains.
        """
        with self._changed:
            if self._refusal is not None:
                raise self._refusal
            self._running += 1

    def leave(self) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify_all()

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped[details.method] = self._wrap(details.method, continuation(details))
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        if handler is None or method.startswith(OPEN_METHODS):
            return handler          # health answers NOT_SERVING by itself while the daemon drains
        attr, build = _KINDS[(handler.request_streaming, handler.response_streaming)]
        inner = getattr(handler, attr)
        behaviour = self._counted_stream(inner) if handler.response_streaming else self._counted(inner)
        return build(behaviour, request_deserializer=handler.request_deserializer,
                     response_serializer=passing_through(handler.response_serializer))

    def _counted(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            self._enter(context)
            try:
                return inner(request, context)
            finally:
                self.leave()
        return behaviour

    def _counted_stream(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            self._enter(context)
            try:
                yield from inner(request, context)
            finally:
                self.leave()
        return behaviour

    def _enter(self, context: grpc.ServicerContext) -> None:
        try:
            self.admit()
        except WarmdError as refusal:
            abort(context, refusal)
