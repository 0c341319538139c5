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


def _internal(name: str, exc: Exception) -> WarmdError:
    # Not at_boundary(): a bug's message stays out of the reply; the log has it.
    log.exception("%s failed", name)
    return WarmdError(Code.INTERNAL, f"internal error in {name}: {type(exc).__name__}; "
                      "the daemon log has the details")


def mapped(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a unary servicer method: clients never see a stack trace, always a code."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except WarmdError as exc:
            err = exc
        except Exception as exc:  # noqa: BLE001 - the boundary
            err = _internal(method.__name__, exc)
        abort(context, err)   # outside the try: abort() raises to end the call

    return wrapper


def mapped_stream(method: Callable[..., Any]) -> Callable[..., Any]:
    """The same for server-streaming methods (generators)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from method(self, request, context)
            return
        except WarmdError as exc:
            err = exc
        except Exception as exc:  # noqa: BLE001
            err = _internal(method.__name__, exc)
        abort(context, err)

    return wrapper
