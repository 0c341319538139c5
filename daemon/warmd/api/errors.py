"""Error mapping for servicers: WarmdError -> status + code metadata; anything else -> `internal`."""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import grpc

from warmd.errors import METADATA_KEY, Code, WarmdError

log = logging.getLogger(__name__)


def abort(context: grpc.ServicerContext, err: WarmdError) -> None:
    context.set_trailing_metadata(((METADATA_KEY, err.code.value),))
    context.abort(err.code.status, err.message)


def as_error(name: str, exc: Exception) -> WarmdError:
    """`exc` as it leaves servicer method `name`: a WarmdError as it is; anything else is a bug, logged with
    its traceback and answered `internal` (not at_boundary(): a bug's message stays out of the reply)."""
    if isinstance(exc, WarmdError):
        return exc
    log.error("%s failed", name, exc_info=exc)
    return WarmdError(Code.INTERNAL, f"internal error in {name}: {type(exc).__name__}; "
                      "the daemon log has the details")


def mapped(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a unary servicer method: clients never see a stack trace, always a code."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the boundary
            # abort() raises to end the call; the error is not kept in a local, where it and its traceback
            # would form a cycle holding the request until the garbage collector runs.
            abort(context, as_error(method.__name__, exc))

    return wrapper


def mapped_stream(method: Callable[..., Any]) -> Callable[..., Any]:
    """The same for server-streaming methods (generators)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from method(self, request, context)
        except Exception as exc:  # noqa: BLE001
            abort(context, as_error(method.__name__, exc))

    return wrapper
