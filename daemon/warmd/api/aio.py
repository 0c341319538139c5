"""Serving the servicers on grpc.aio: one event loop thread receives and answers every call; work that may
wait runs on a thread pool.

Why: measured on 2 CPUs (bench/results/profiles/README.md), grpcio's sync server crosses threads three
times per unary call and its 32 workers contend for the GIL; a call answered on the event loop crosses
none. So a unary method marked `inline_first` runs on the loop first, where nothing may wait: the
application layer raises `WouldWait` (before any effect) when the call would wait for a load or a model
whose forward is not quick, and the call starts again on a worker thread; a call that waits its turn (an
admission slot, its batch) waits on the loop and runs there again once granted. Every other method (loads,
pulls, watches, streams, administration) runs on a worker thread, as it did under the sync server.

Every method's handler is built once (`serve`), from the handlers the generated `add_*_to_server`
functions give (`Methods` stands in for the server to collect them); each call's own checks (the TCP
token, api/auth.py; the drain's count, api/drain.py) run in it, not in interceptors, which grpc.aio runs as
coroutines on every call. The server finds them through one generic handler (`_ByMethod`), never as
registered methods: grpc.aio's serving loop keeps one pending request per registered method and, for every
call that arrives, waits on all of them again (`asyncio.wait`, a callback added to and removed from each).
With warmd's ~50 methods that was most of what the front cost over a bare grpc.aio echo
(bench/results/profiles/README.md).

The servicers keep the sync API: they get a `SyncContext`, which offers the grpc.ServicerContext methods
warmd uses, callable from any thread. Its `add_callback` runs when the RPC ends for any reason (the client
cancelled, disconnected, ran past its deadline, or the call finished): a CallContext is cancelled then.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator

import grpc

from warmd.errors import METADATA_KEY, WarmdError, WouldWait

# How many streamed responses a worker thread may produce before the client has taken them (backpressure,
# as the sync server's blocking writes gave).
STREAM_WINDOW = 8
READ_CHECK_S = 1.0     # how often a thread waiting for a client's next message looks whether the RPC ended
_END = object()
_WAIT = object()


@dataclass(frozen=True)
class _Failure:
    """A call's end with a status other than OK."""

    code: grpc.StatusCode
    details: str


class Aborted(Exception):
    """SyncContext.abort: ends the servicer's code; the call then ends with its status (a `_Failure`)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class SyncContext:
    """A grpc.aio ServicerContext as servicer code written for the sync API uses it.

    grpc.aio runs done callbacks when the RPC ends (its `done()` may still say False then), so the end is
    remembered here: `is_active()` turns False and every `add_callback` callback runs, at once for one added
    after the end. An attempt on the event loop (`on_loop`) runs to its end before the loop could learn of
    one, and registers nothing.
    """

    def __init__(self, context: grpc.aio.ServicerContext, on_loop: bool = False, granted: Any = None) -> None:
        self._context = context
        self.on_loop = on_loop     # this attempt runs on the event loop, where nothing may wait
        self.granted = granted     # the ticket the loop waited for: a slot or a batch's seat (CallContext.granted)
        self._ended = False
        self._callbacks: list[Callable[[], Any]] = []
        self._lock = threading.Lock()
        if not on_loop:
            context.add_done_callback(self._end)

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._context.set_trailing_metadata(metadata)

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)

    def add_callback(self, callback: Callable[[], Any]) -> None:
        with self._lock:
            if not self._ended:
                self._callbacks.append(callback)
                return
        callback()

    def is_active(self) -> bool:
        return not self._ended

    def _end(self, _context: Any) -> None:
        with self._lock:
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def inline_first(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a unary servicer method to be tried on the event loop before a worker thread (see the module)."""
    method.inline_first = True  # type: ignore[attr-defined]
    return method


class Methods:
    """Stands in for a server to the generated `add_*_to_server` functions: collects each service's handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The same handlers come through add_registered_method_handlers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = dict(handlers)


Enter = Callable[[str, grpc.aio.ServicerContext], None]


def serve(server: grpc.aio.Server, methods: Methods, pool: futures.Executor,
          enter: Callable[[str], Enter | None], leave: Callable[[], None],
          serializer: Callable[[Callable[[Any], bytes] | None], Callable[[Any], bytes] | None]) -> None:
    """Put every collected method on `server`, as grpc.aio runs it (see `on_loop`).

    Args:
        enter: for a method's full name, what each of its calls passes first (`enter(method, context)`
            raises a WarmdError to refuse the call), or None for a method whose calls pass freely; `leave()`
            follows every call that entered.
        serializer: rebuilds a method's response serializer.
    """
    built = {}
    for service, handlers in methods.services.items():
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            check = enter(method)
            built[method] = on_loop(handler, pool, (method, check, leave) if check else None,
                                    serializer(handler.response_serializer))
    server.add_generic_rpc_handlers((_ByMethod(built),))


class _ByMethod(grpc.GenericRpcHandler):
    """Every service's handlers, found by the call's full method name in one lookup (not registered with the
    server: see the module)."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = handlers

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


def on_loop(handler: grpc.RpcMethodHandler, pool: futures.Executor,
            gate: tuple[str, Enter, Callable[[], None]] | None,
            serializer: Callable[[Any], bytes] | None) -> grpc.RpcMethodHandler:
    """`handler` as grpc.aio runs it: sync behaviours on `pool` (or inline first), async ones as they are.

    Args:
        gate: (method, enter, leave) around every call.
        serializer: the responses' serializer.
    """
    streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
    attr = f"{'stream' if streaming_in else 'unary'}_{'stream' if streaming_out else 'unary'}"
    inner = getattr(handler, attr)
    if inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner):
        behaviour = _counted_async(inner, gate, streaming_out)
    elif streaming_out:
        behaviour = _thread_stream(inner, pool, gate, streaming_in)
    else:
        behaviour = _thread_unary(inner, pool, gate, streaming_in, getattr(inner, "inline_first", False))
    build = getattr(grpc, f"{attr}_rpc_method_handler")
    return build(behaviour, request_deserializer=handler.request_deserializer, response_serializer=serializer)


def _thread_unary(inner: Callable[..., Any], pool: futures.Executor, gate: Any, streaming_in: bool,
                  inline: bool) -> Callable[..., Any]:
    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not _entered(gate, context):
            return None
        loop = asyncio.get_running_loop()
        if inline and not streaming_in:
            try:
                outcome = await _on_loop(inner, request, context, loop)
            except BaseException:
                _leave(gate)
                raise
            if outcome is not _WAIT:
                _leave(gate)
                return _answer(context, outcome)
        sync = SyncContext(context)
        arg = _requests(request, sync, loop) if streaming_in else request
        try:
            running = loop.run_in_executor(pool, _then_leave, gate, inner, arg, sync)
        except BaseException:   # the pool is shut down: the daemon stops
            _leave(gate)
            raise
        return _answer(context, await running)
    return behaviour


async def _on_loop(inner: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext,
                   loop: asyncio.AbstractEventLoop) -> Any:
    """The call's outcome on the event loop, or _WAIT when it must run where it may wait. A call queued for
    an admission slot, or seated in a batch, waits for its grant here (in its place in the model's queue, or
    until its batch ran) and runs again."""
    ticket = None
    try:
        while True:
            try:
                return _outcome(inner, request, SyncContext(context, on_loop=True, granted=ticket))
            except WouldWait as wait:
                queued = wait.ticket
            if queued is None:
                return _WAIT        # nothing happened yet
            if ticket is not None:
                ticket.give_up()    # granted, but not taken (the call now runs on another model's queue)
            ticket = queued
            granted = loop.create_future()
            ticket.when_granted(functools.partial(_wake, loop, granted))
            if ticket.due is not None:      # it opened a batch (warmd/batching.py), which runs by then
                loop.call_later(ticket.due, ticket.run_due)
            try:
                await granted
            except asyncio.CancelledError:      # the RPC ended: its place is given up, the call counted
                ticket.abandon()
                raise
    finally:
        if ticket is not None:
            ticket.give_up()        # a no-op once the call took its slot


def _wake(loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
    """From whatever granted the ticket (a worker thread leaving its slot, inside the gate's lock; a batch run
    on the loop): resolve `future` on the loop. On the loop itself at once: call_soon_threadsafe would also
    write to the loop's wake-up descriptor, a system call for each seat of a batch."""
    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:        # not on a thread that runs a loop
        here = False
    if here:
        _resolve(future)
        return
    with contextlib.suppress(RuntimeError):      # the loop is closed: the daemon stopped
        loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _then_leave(gate: Any, inner: Callable[..., Any], *args: Any) -> Any:
    """Run servicer code on a worker thread; the call counts (api/drain.py) until it returns, also after the
    RPC was cancelled (shutdown waits for, or knows of, a call stuck in a provider)."""
    try:
        return _outcome(inner, *args)
    finally:
        _leave(gate)


def _outcome(inner: Callable[..., Any], *args: Any) -> Any:
    """The servicer's response, or its abort as a `_Failure`: an error crossing to the loop as an exception
    would keep the request alive in a reference cycle (its traceback's frames) until the garbage collector
    ran — 10 MiB for a big text refused."""
    try:
        return inner(*args)
    except Aborted as abort:
        return _Failure(abort.code, abort.details)


def _answer(context: grpc.aio.ServicerContext, outcome: Any) -> Any:
    """The response to send; a failure ends the call with its status instead (no exception: see _outcome)."""
    if isinstance(outcome, _Failure):
        context.set_code(outcome.code)
        context.set_details(outcome.details)
        return None
    return outcome


def _thread_stream(inner: Callable[..., Any], pool: futures.Executor, gate: Any,
                   streaming_in: bool) -> Callable[..., Any]:
    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if not _entered(gate, context):
            return
        loop = asyncio.get_running_loop()
        sync = SyncContext(context)
        arg = _requests(request, sync, loop) if streaming_in else request
        async for response in _pumped(inner, arg, sync, pool, loop, gate):
            if isinstance(response, _Failure):
                _answer(context, response)
                return
            yield response
    return behaviour


async def _pumped(inner: Callable[..., Iterator[Any]], arg: Any, context: SyncContext, pool: futures.Executor,
                  loop: asyncio.AbstractEventLoop, gate: Any) -> AsyncIterator[Any]:
    """The responses of a sync generator that runs on one worker thread for its whole life (as it did under
    the sync server: thread-local state holds), STREAM_WINDOW ahead of the client at most, then its abort
    as a `_Failure`, if any; the thread leaves the call's gate when the generator is done."""
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    room = threading.Semaphore(STREAM_WINDOW)
    closed = threading.Event()

    def pump() -> None:
        generator: Iterator[Any] = iter(())
        try:
            generator = inner(arg, context)
            for response in generator:
                loop.call_soon_threadsafe(queue.put_nowait, (response, None))
                room.acquire()
                if closed.is_set():
                    break
        except Aborted as abort:
            loop.call_soon_threadsafe(queue.put_nowait, (_Failure(abort.code, abort.details), None))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which ends the RPC with it
            loop.call_soon_threadsafe(queue.put_nowait, (_END, exc))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, (_END, None))
            getattr(generator, "close", lambda: None)()
            _leave(gate)

    try:
        pool.submit(pump)
    except RuntimeError:        # the pool is shut down: the daemon stops
        _leave(gate)
        raise
    try:
        while True:
            response, exc = await queue.get()
            if response is _END:
                if exc is not None:
                    raise exc
                return
            room.release()
            yield response
    finally:
        # The client left or the stream ended: the RPC's done callbacks end a generator that waits.
        closed.set()
        room.release()


def _requests(requests: Any, context: SyncContext, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """A client stream's messages for code on a worker thread (each read on the loop); it ends when the
    client closes its side or the RPC ends."""
    iterator = requests.__aiter__()

    async def read() -> Any:
        try:
            return await iterator.__anext__()
        except StopAsyncIteration:
            return _END

    while True:
        pending = asyncio.run_coroutine_threadsafe(read(), loop)
        while True:
            try:
                message = pending.result(timeout=READ_CHECK_S)
                break
            except futures.TimeoutError:
                if not context.is_active():
                    pending.cancel()
                    return
        if message is _END:
            return
        yield message


def _counted_async(inner: Callable[..., Any], gate: Any, streaming_out: bool) -> Callable[..., Any]:
    if gate is None:
        return inner
    if streaming_out:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if not _entered(gate, context):
                return
            try:
                async for response in inner(request, context):
                    yield response
            finally:
                _leave(gate)
        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not _entered(gate, context):
            return None
        try:
            return await inner(request, context)
        finally:
            _leave(gate)
    return unary


def _entered(gate: Any, context: grpc.aio.ServicerContext) -> bool:
    """Pass the call's gate, or end the call with its refusal's status (code in the trailing metadata)."""
    if gate is not None:
        try:
            gate[1](gate[0], context)
        except WarmdError as refusal:
            context.set_trailing_metadata(((METADATA_KEY, refusal.code.value),))
            _answer(context, _Failure(refusal.code.status, refusal.message))
            return False
    return True


def _leave(gate: Any) -> None:
    if gate is not None:
        gate[2]()
