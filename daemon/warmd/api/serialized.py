"""Responses a servicer serialized itself: a message assembled from bytes kept between calls (ListModels of a
large catalog), where building every sub-message again would cost more than the call's budget.

A servicer returns `Serialized(data)`; every handler's response serializer passes such bytes through as
they are (`passing_through`, applied where the server rebuilds its handlers: api/drain.py). Concatenated
serialized messages of one type are that type's merge, as protobuf defines it: `field_bytes` frames one
sub-message as a field, so the fields' bytes joined with a message's own make one message.
"""
from __future__ import annotations

from typing import Any, Callable

LENGTH_DELIMITED = 2


class Serialized(bytes):
    """A response in its wire form already."""


def field_bytes(number: int, message: bytes) -> bytes:
    """`message` (serialized) as field `number` of an enclosing message (its tag, length, bytes)."""
    return _varint(number << 3 | LENGTH_DELIMITED) + _varint(len(message)) + message


def _varint(value: int) -> bytes:
    """protobuf's base-128 varint (protobuf's own encoder is internal to it)."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def passing_through(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """`serializer`, except that a `Serialized` response goes out as it is."""
    if serializer is None:
        return None

    def serialize(response: Any) -> bytes:
        return bytes(response) if isinstance(response, Serialized) else serializer(response)
    return serialize
