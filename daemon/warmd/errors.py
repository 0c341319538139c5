"""Every error code warmd can return, defined once, each with its gRPC status.

The code travels in the trailing metadata key `warmd-error-code`; the message is for a person
and says what to do. Clients turn the pair back into a `WarmdError` (see `from_rpc_error`).
"""
from __future__ import annotations

import enum
import logging
import re
from typing import Any

import grpc

from warmd.units import format_size

METADATA_KEY = "warmd-error-code"
# gRPC refuses an oversized message itself, before any servicer sees it: RESOURCE_EXHAUSTED with these
# details, "SERVER:" when the daemon's limit (max_message_bytes) was hit, "CLIENT:" when the caller's own.
_TOO_BIG = re.compile(r"(SERVER|CLIENT): (Received|Sent) message larger than max \((\d+) vs\. (\d+)\)")


class Code(str, enum.Enum):
    """A stable error code. The value is what clients see and scripts match on."""

    MODEL_NOT_FOUND = "model_not_found"
    SPEC_INVALID = "spec_invalid"
    WEIGHTS_MISSING = "weights_missing"
    WEIGHTS_DIGEST_MISMATCH = "weights_digest_mismatch"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    INSUFFICIENT_DISK = "insufficient_disk"
    UNSUPPORTED_PROVIDER = "unsupported_provider"
    DEVICE_UNAVAILABLE = "device_unavailable"
    PROVIDER_FAILED = "provider_failed"
    NETWORK_FORBIDDEN = "network_forbidden"
    INVALID_ARGUMENT = "invalid_argument"
    BUSY = "busy"
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    INTERNAL = "internal"

    @property
    def status(self) -> grpc.StatusCode:
        return _STATUS[self]

    @property
    def http_status(self) -> int:
        """The HTTP status of the code, for every HTTP dialect (OpenAI, Ollama, Anthropic)."""
        return _HTTP_STATUS[self]

    # print(code), str(code) and f"{code}" give the stable string, not "Code.MODEL_NOT_FOUND" (the
    # default of a str mixin enum since Python 3.11 for str(), 3.12 for format()).
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


_STATUS: dict[Code, grpc.StatusCode] = {
    Code.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.SPEC_INVALID: grpc.StatusCode.FAILED_PRECONDITION,
    Code.WEIGHTS_MISSING: grpc.StatusCode.FAILED_PRECONDITION,
    Code.WEIGHTS_DIGEST_MISMATCH: grpc.StatusCode.DATA_LOSS,
    Code.INSUFFICIENT_MEMORY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.INSUFFICIENT_DISK: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.UNSUPPORTED_PROVIDER: grpc.StatusCode.FAILED_PRECONDITION,
    Code.DEVICE_UNAVAILABLE: grpc.StatusCode.FAILED_PRECONDITION,
    Code.PROVIDER_FAILED: grpc.StatusCode.INTERNAL,
    Code.NETWORK_FORBIDDEN: grpc.StatusCode.FAILED_PRECONDITION,
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.CANCELLED: grpc.StatusCode.CANCELLED,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}

# What the HTTP front answers: a caller's mistake is 4xx, the daemon's state (a model it cannot load now) 5xx.
_HTTP_STATUS: dict[Code, int] = {
    Code.MODEL_NOT_FOUND: 404,
    Code.SPEC_INVALID: 503,               # the model's spec file is broken: nothing the caller can change
    Code.WEIGHTS_MISSING: 503,
    Code.WEIGHTS_DIGEST_MISMATCH: 500,
    Code.INSUFFICIENT_MEMORY: 507,
    Code.INSUFFICIENT_DISK: 507,
    Code.UNSUPPORTED_PROVIDER: 503,
    Code.DEVICE_UNAVAILABLE: 503,
    Code.PROVIDER_FAILED: 500,
    Code.NETWORK_FORBIDDEN: 503,
    Code.INVALID_ARGUMENT: 400,
    Code.BUSY: 429,                       # with Retry-After
    Code.CANCELLED: 499,                  # the client went away (nginx's status: nobody reads it)
    Code.DEADLINE_EXCEEDED: 504,
    Code.UNAVAILABLE: 503,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.INTERNAL: 500,
}

# A status from the transport itself (daemon down, deadline) carries no warmd code.
_FROM_STATUS: dict[grpc.StatusCode, Code] = {
    grpc.StatusCode.UNAVAILABLE: Code.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Code.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED: Code.CANCELLED,
    grpc.StatusCode.UNAUTHENTICATED: Code.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: Code.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: Code.MODEL_NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Code.BUSY,
}


class WouldWait(BaseException):
    """Not an error a caller sees: a call tried on the gRPC event loop (api/aio.py) would wait for a load or
    a slow model, so it starts again on a worker thread; or it waits its turn, when `ticket` holds its place
    (in the model's admission queue, or a seat in its batch on the loop): the loop waits for the grant
    (`ticket.when_granted`, `give_up`, `abandon`) and runs it again.
    Raised before the call has any effect; a BaseException, so that no boundary that turns exceptions into
    codes (`except Exception`) takes it."""

    def __init__(self, ticket: Any = None) -> None:
        super().__init__()
        self.ticket = ticket


class WarmdError(Exception):
    """An error with a stable code and a message a person can act on.

    Args:
        code: the stable code.
        message: what went wrong and what to do about it.
    """

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


def at_boundary(exc: BaseException, code: Code, what: str, log: logging.Logger) -> WarmdError:
    """At a job's boundary: a WarmdError passes as it is; anything else is logged with its traceback
    and becomes `code`, saying what failed and how."""
    if isinstance(exc, WarmdError):
        return exc
    log.error("%s failed", what, exc_info=exc)
    return WarmdError(code, f"{what} failed: {type(exc).__name__}: {exc}")


def from_rpc_error(err: grpc.RpcError) -> WarmdError:
    """Turn a failed call back into a WarmdError, reading the code from trailing metadata."""
    trailing = dict(err.trailing_metadata() or ())
    value = trailing.get(METADATA_KEY)
    details = err.details() or ""
    too_big = _TOO_BIG.search(details) if not value and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None
    if too_big is not None:
        return _too_big(*too_big.groups())
    try:
        code = Code(value) if value else _FROM_STATUS.get(err.code(), Code.INTERNAL)
    except ValueError:  # a newer daemon's code this client does not know
        code = Code.INTERNAL
    return WarmdError(code, details or err.code().name.lower())


def _too_big(side: str, direction: str, size: str, limit: str) -> WarmdError:
    """A message over a size limit: `invalid_argument` naming the limit and the setting that raises it."""
    message = "request" if (side == "SERVER") == (direction == "Received") else "response"
    if side == "SERVER":
        whose = ("the daemon's limit", "raise max_message_bytes in warmd's config (or WARMD_MAX_MESSAGE_BYTES)")
    else:
        whose = ("this client's limit", "use a client with a larger grpc.max_*_message_length")
    return WarmdError(Code.INVALID_ARGUMENT, f"the {message} is {format_size(int(size))} ({size} bytes), over "
                      f"{whose[0]} of {format_size(int(limit))} ({limit} bytes); {whose[1]}, or pass big tensors "
                      "through shared memory (register_region)")
