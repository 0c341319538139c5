"""Bearer-token check for the TCP listener (the Unix socket is protected by file permissions)."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import grpc

from warmd.errors import METADATA_KEY, Code

# Health is answerable without a token so that service managers and load balancers can probe it.
OPEN_METHODS = ("/grpc.health.v1.Health/",)


def ensure_token(path: Path) -> str:
    """Read the token file, creating it (0600, folder 0700) with a fresh random token if missing."""
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def caller(context: grpc.ServicerContext) -> str:
    """Who is calling, for what belongs to a caller (shared-memory regions): the bearer token on TCP (by its
    hash), else the one local user of the user-only Unix socket."""
    token = dict(context.invocation_metadata()).get("authorization", "")
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16] if token else "local"


class TokenAuth(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        if details.method.startswith(OPEN_METHODS):
            return continuation(details)
        given = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return continuation(details)
        return _deny(continuation(details))


def _deny(handler):  # type: ignore[no-untyped-def]
    """A handler of the same shape as the real one that answers UNAUTHENTICATED."""
    message = "missing or wrong bearer token; send 'authorization: Bearer <token>' (the daemon's token file)"

    def unary(request, context):  # type: ignore[no-untyped-def]
        context.set_trailing_metadata(((METADATA_KEY, Code.UNAUTHENTICATED.value),))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        def bidi(_requests, context):  # type: ignore[no-untyped-def]
            unary(None, context)
            yield from ()
        return grpc.stream_stream_rpc_method_handler(bidi, handler.request_deserializer,
                                                     handler.response_serializer)
    if handler.response_streaming:
        def stream(request, context):  # type: ignore[no-untyped-def]
            unary(request, context)
            yield from ()
        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                    handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                               handler.response_serializer)
