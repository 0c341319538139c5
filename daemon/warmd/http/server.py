"""The HTTP front: one ASGI application (FastAPI) with the OpenAI, Ollama and Anthropic routes, served by
uvicorn on a thread of the daemon's process, on loopback TCP or a user-only Unix socket.

Rules held here:
- the address is checked and bound before the daemon says it is ready: a taken port or a non-loopback host
  (without `http_allow_remote`) stops the start with a clear message, as for `tcp`;
- every request passes the daemon's one drain gate (api/drain.py): while the daemon drains, new ones get
  503 "warmd is shutting down" in their dialect's shape, and the drain waits for those under way;
- request bodies are JSON, whatever their Content-Type says;
- every error leaves in the shape of the dialect whose route was called, with the status of its code
  (errors.py) and `Retry-After` when busy; a malformed body is `invalid_argument` (400), never 422.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from warmd import __version__
from warmd.api.drain import Drain
from warmd.app import App
from warmd.errors import Code, WarmdError
from warmd.http import anthropic, ollama, openai
from warmd.http.common import Guard

log = logging.getLogger(__name__)
START_TIMEOUT_S = 10.0
RETRY_AFTER_S = 1          # what a busy answer suggests: a slot frees as soon as one call finishes
UNIX_PREFIX = "unix:"

ErrorBody = Callable[[WarmdError], dict[str, Any]]
# By path prefix, first match: each dialect's error shape (OpenAI's for anything else, e.g. an unknown path).
DIALECTS: tuple[tuple[str, ErrorBody], ...] = (
    ("/api/", ollama.error_body), ("/v1/messages", anthropic.error_body), ("/", openai.error_body))


def error_response(path: str, err: WarmdError) -> JSONResponse:
    """`err` as the dialect of `path` says an error, with its status."""
    body = next(shape for prefix, shape in DIALECTS if path.startswith(prefix))(err)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if err.code is Code.BUSY else None
    return JSONResponse(body, status_code=err.code.http_status, headers=headers)


def build(app: App, guard: Guard, drain: Drain) -> ASGIApp:
    """The ASGI application of every dialect, behind the drain gate."""
    api = FastAPI(title="warmd", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    api.state.guard = guard
    for module in (openai, ollama, anthropic):
        api.include_router(module.routes(app))

    @api.exception_handler(WarmdError)
    async def warmd_error(request: Request, err: WarmdError) -> JSONResponse:
        return error_response(request.url.path, err)

    @api.exception_handler(RequestValidationError)
    async def bad_body(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, WarmdError(Code.INVALID_ARGUMENT, _first_problem(err)))

    @api.exception_handler(HTTPException)
    async def no_route(request: Request, err: HTTPException) -> JSONResponse:
        what = "no such endpoint" if err.status_code == 404 else str(err.detail).lower()
        response = error_response(request.url.path, WarmdError(Code.INVALID_ARGUMENT, f"{request.method} "
                                                               f"{request.url.path}: {what}; README, HTTP lists the "
                                                               "endpoints"))
        response.status_code = err.status_code
        return response

    @api.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(request.url.path, WarmdError(Code.INTERNAL, f"internal error: {type(exc).__name__}; "
                                                           "the daemon log has the details"))

    return Gated(api, drain)


def _first_problem(err: RequestValidationError) -> str:
    problems = err.errors()
    if not problems:
        return "the request body is not valid"
    first = problems[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the body"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


class Gated:
    """ASGI middleware: each HTTP request is counted through the daemon's drain gate until its response ends."""

    def __init__(self, inner: ASGIApp, drain: Drain) -> None:
        self.inner, self.drain = inner, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        try:
            self.drain.admit()
        except WarmdError as refusal:
            return await error_response(scope["path"], refusal)(scope, receive, send)
        if scope["method"] in ("POST", "DELETE"):
            scope = {**scope, "headers": _as_json(scope["headers"])}
        try:
            await self.inner(scope, receive, send)
        finally:
            self.drain.leave()


def _as_json(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Bodies are JSON whatever their Content-Type says: Ollama's and Anthropic's curl examples send a form's
    type (`curl -d`). No browser can use this to post across origins: its requests carry no token, and an
    anonymous caller's foreign Origin is refused (common.Guard)."""
    return [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", b"application/json")]


class HttpFront:
    """The HTTP listener. Bound on construction; `start` serves, `stop` closes.

    Args:
        app: the application layer.
        drain: the daemon's drain gate.
        address: "HOST:PORT" or "unix:PATH".
        allow_remote: whether a non-loopback host may be bound.
        anonymous: the scope of tokenless loopback callers ("" none).
    Raises:
        WarmdError: `invalid_argument` for a bad or non-loopback address; `unavailable` when it is taken.
    """

    def __init__(self, app: App, drain: Drain, address: str, allow_remote: bool, anonymous: str) -> None:
        self.address = address
        self.sock, self.url = _bind(address, allow_remote)
        guard = Guard(app.tokens, trusted=address.startswith(UNIX_PREFIX), anonymous=anonymous)
        config = uvicorn.Config(build(app, guard, drain), log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1, ws="none")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="http",
                                        daemon=True)

    def start(self) -> None:
        """Serve; returns once uvicorn accepts connections.

        Raises:
            WarmdError: `unavailable` when it did not start.
        """
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise WarmdError(Code.UNAVAILABLE, f"the HTTP front on {self.address} did not start; the log says why")

    def stop(self, timeout: float) -> None:
        """Close the listener and the connections left (after the drain), within `timeout` seconds."""
        self.server.should_exit = True
        self._thread.join(timeout)
        if self.address.startswith(UNIX_PREFIX):
            Path(self.address[len(UNIX_PREFIX):]).unlink(missing_ok=True)


def _bind(address: str, allow_remote: bool) -> tuple[socket.socket, str]:
    """The listening socket for `address`, and its URL for the log."""
    from warmd.server import check_tcp      # one rule for every TCP listener

    if address.startswith(UNIX_PREFIX):
        path = Path(address[len(UNIX_PREFIX):]).expanduser()
        if not path.is_absolute():
            raise WarmdError(Code.INVALID_ARGUMENT, f"http {address!r}: give the socket's absolute path, "
                             "e.g. unix:/run/user/1000/warmd/http.sock")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.unlink(missing_ok=True)            # a stale socket: the daemon's lock says no other warmd runs
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock, f"http+unix://{path}"
    host = check_tcp(address, allow_remote, remedy="set http_allow_remote: true in the config to listen beyond "
                     "this machine")
    port = int(address.rpartition(":")[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise WarmdError(Code.UNAVAILABLE, f"cannot listen on {address} for HTTP: {exc.strerror}; pick another port "
                         "(http: in the config, or --http)") from None
    shown = f"[{host}]" if ":" in host else host
    return sock, f"http://{shown}:{sock.getsockname()[1]}"
