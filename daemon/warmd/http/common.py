"""What the three HTTP dialects share: who is calling (tokens and scopes), request bodies that fail as
`invalid_argument`, and streaming a call of the application layer to a client.

Rules held here:
- every request carries a token as `Authorization: Bearer` or Anthropic's `x-api-key`, checked against the
  daemon's tokens (warmd.tokens) with the scope its route needs: `read` lists and shows, `infer` runs, `admin`
  pulls and deletes. A missing or unknown token is `unauthenticated`, a scope too small `permission_denied`;
  on the user-only Unix socket everything is allowed, as on gRPC's;
- `http_anonymous` (read or infer) is the scope of a tokenless caller from a loopback address whose request
  names a loopback host and no foreign Origin: a web page the user visits can neither rebind a name to
  127.0.0.1 nor post to the daemon from its origin;
- a streamed call starts sending only once its first piece (or its result) exists: refusals (busy, a model
  that cannot load) keep their status; after that, an error ends the stream in the dialect's own form;
- a client that goes away (closes the stream) cancels the call at once: the provider stops at its next step
  and the model's slot is free.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Generator, Literal

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from warmd.app import Chunk, Inferred
from warmd.errors import Code, WarmdError
from warmd.providers import CallContext
from warmd.tokens import TokenStore, allows

Needed = Literal["read", "infer", "admin"]
_LOCAL_HOSTS = ("localhost",)
ANONYMOUS = "anonymous"       # the caller's name without a token (http_anonymous)


class Body(BaseModel):
    """A request body: fields a dialect's clients send that warmd does not use are ignored."""

    model_config = ConfigDict(extra="ignore")


@dataclass(frozen=True)
class Caller:
    name: str        # the token's name, "local" (the Unix socket) or "anonymous"
    scope: str


class Guard:
    """Checks each request's token and scope.

    Args:
        tokens: the daemon's tokens.
        trusted: the listener is the user-only Unix socket (no token needed).
        anonymous: the scope of a tokenless loopback caller ("" none).
    """

    def __init__(self, tokens: TokenStore, trusted: bool, anonymous: str) -> None:
        self.tokens, self.trusted, self.anonymous = tokens, trusted, anonymous

    def check(self, request: Request, needed: str) -> Caller:
        """The caller, allowed `needed`.

        Raises:
            WarmdError: `unauthenticated` without a known token, `permission_denied` outside its scope.
        """
        if self.trusted:
            return Caller("local", "admin")
        caller = self._caller(request)
        if not allows(caller.scope, needed):
            who = "an anonymous caller" if caller.name == ANONYMOUS else f"token {caller.name!r}"
            raise WarmdError(Code.PERMISSION_DENIED, f"{who} has scope {caller.scope!r}; {request.method} "
                             f"{request.url.path} needs {needed!r}")
        return caller

    def _caller(self, request: Request) -> Caller:
        given = request.headers.get("authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if token:
            info = self.tokens.lookup(token)
            if info is not None:
                return Caller(info.name, info.scope)
        elif self.anonymous and _from_this_machine(request):
            return Caller(ANONYMOUS, self.anonymous)
        raise WarmdError(Code.UNAUTHENTICATED, "missing, unknown or revoked token; send it as 'Authorization: Bearer "
                         "<token>' (an OpenAI or Anthropic client's API key): the daemon's token file, or one from "
                         "`warm token create`")


def _from_this_machine(request: Request) -> bool:
    """A loopback peer, asking for a loopback host, from no web page of another origin."""
    host = request.headers.get("host", "").rpartition(":")[0] or request.headers.get("host", "")
    origin = request.headers.get("origin", "")
    origin_host = origin.split("://", 1)[-1].rpartition(":")[0] or origin.split("://", 1)[-1]
    return (request.client is not None and _loopback(request.client.host) and _loopback(host)
            and (not origin or _loopback(origin_host)))


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in _LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs(scope: Needed) -> Callable[[Request], Caller]:
    """A route dependency: the caller, allowed `scope` (the guard lives in the ASGI app's state)."""

    def check(request: Request) -> Caller:
        return request.app.state.guard.check(request, scope)

    return check


def strip_latest(name: str) -> str:
    """Ollama's clients name models NAME:TAG; warmd's names have no tag, so `:latest` is the model itself."""
    return name.removesuffix(":latest")


# ---- streaming -----------------------------------------------------------------------------------
class Pump:
    """The chunks of a call of the application layer, read on a thread of their own and handed to the event
    loop as they come (the loop is never blocked; a burst of pieces goes out in one write).

    Args:
        chunks: the call's chunks (App.chat, App.generate): its last one holds the result.
    """

    _END = object()

    def __init__(self, chunks: Generator[Chunk, None, None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=self._run, args=(chunks,), name="http-stream", daemon=True).start()

    def _run(self, chunks: Generator[Chunk, None, None]) -> None:
        item: Any = self._END
        try:
            with contextlib.closing(chunks):
                for chunk in chunks:
                    if chunk.progress is None:       # a load's progress: no dialect has a place for it
                        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
        except BaseException as exc:  # noqa: BLE001 - raised on the loop, in the request's task
            item = exc
        with contextlib.suppress(RuntimeError):       # the loop is closed: the daemon stopped meanwhile
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def batches(self) -> AsyncIterator[list[Chunk]]:
        """What has arrived since the last batch (at least one chunk each), until the result.

        Raises:
            WarmdError: the call's error.
        """
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            chunks = [i for i in items if isinstance(i, Chunk)]
            if chunks:
                yield chunks
            ended = next((i for i in items if not isinstance(i, Chunk)), None)
            if isinstance(ended, BaseException):
                raise ended
            if ended is not None:
                return

    async def result(self) -> Inferred:
        """Wait for the whole call (a unary request)."""
        async for batch in self.batches():
            if batch[-1].result is not None:
                return batch[-1].result
        raise WarmdError(Code.INTERNAL, "the call ended without a result")


async def started(pump: Pump) -> AsyncIterator[list[Chunk]]:
    """The pump's batches, the first one already there: a refusal raises here, before any byte is sent."""
    batches = pump.batches()
    first = await batches.__anext__()

    async def rest() -> AsyncIterator[list[Chunk]]:
        yield first
        async for batch in batches:
            yield batch

    return rest()


class Stream(StreamingResponse):
    """A streamed response that stops what it streams (`on_close`: cancel the call) the moment the client
    disconnects (whatever the ASGI version: Starlette would only notice at its next write) and when it ends
    for any reason; its body is closed then too."""

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None], media_type: str) -> None:
        super().__init__(body, media_type=media_type, headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sending = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait((sending, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.on_close()
            for task in (sending, gone):
                task.cancel()
            await asyncio.gather(sending, gone, return_exceptions=True)
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
        failed = sending.exception() if sending.done() and not sending.cancelled() else None
        if failed is not None and not isinstance(failed, OSError):    # OSError: the client went while we wrote
            raise failed
