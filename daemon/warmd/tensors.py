"""numpy arrays <-> tensors on the wire: `warmd.v1.Tensor` and the Open Inference Protocol's raw and typed
contents (same dtype names, raw little-endian row-major bytes).

BYTES tensors are numpy object arrays of `bytes` (str and fixed-width bytes/str arrays are accepted on the
way out, str as UTF-8); on the wire each element is its 4-byte little-endian length, then its bytes.

Used by the daemon and by the `warm` client; needs numpy only.
"""
from __future__ import annotations

import struct

import numpy as np

from warmd.errors import Code, WarmdError
from warmd.v1 import warmd_pb2 as pb

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_NAMES = {dt: name for name, dt in NUMPY_DTYPES.items()}
MAX_DIMS = 16
MAX_ELEMENTS = 2**40


def dtype_name(dtype: np.dtype) -> str:
    """The protocol's name of a numpy dtype (numpy's own name for one the protocol lacks)."""
    dtype = np.dtype(dtype)
    dtype = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    return _NAMES.get(dtype, str(dtype))


def to_proto(name: str, array: np.ndarray) -> pb.Tensor:
    """Encode an array. Raises `invalid_argument` for a dtype the protocol has no name for."""
    dtype, data = encode(name, array)
    return pb.Tensor(name=name, dtype=dtype, shape=list(data.shape), raw=wire_bytes(dtype, data))


def encode(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """The protocol's dtype name and a contiguous little-endian copy (or view) of `array` (for BYTES: an
    object array of bytes)."""
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        return "BYTES", _bytes_array(name, array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _NAMES:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: dtype {array.dtype} is not supported; "
                         f"use one of {', '.join(NUMPY_DTYPES)}")
    return _NAMES[dtype], np.asarray(array, dtype=dtype, order="C")     # a 0-d array stays 0-d (shape [])


def raw(dtype_name: str, data: np.ndarray) -> memoryview:
    """The wire bytes of an `encode`d array: a view of its memory (to write into shared memory), or the
    serialized BYTES elements."""
    if dtype_name == "BYTES":
        return memoryview(serialize_bytes(data.reshape(-1)))
    return data.reshape(-1).view(np.uint8).data


def wire_bytes(dtype_name: str, data: np.ndarray) -> bytes:
    """The wire bytes of an `encode`d array as one bytes object (what a message field takes): one copy."""
    return serialize_bytes(data.reshape(-1)) if dtype_name == "BYTES" else data.tobytes()


def serialize_bytes(items) -> bytes:  # type: ignore[no-untyped-def]
    """BYTES elements (bytes) as the protocol carries them: each prefixed by its 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def split_bytes(name: str, data: bytes | memoryview) -> list[bytes]:
    """The elements of serialized BYTES contents. Raises `invalid_argument` when the framing is broken."""
    items, view, at = [], memoryview(data), 0
    while at < len(view):
        if at + 4 > len(view):
            raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: BYTES element header cut off")
        (size,) = struct.unpack_from("<I", view, at)
        if at + 4 + size > len(view):
            raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: BYTES element longer than the data")
        items.append(bytes(view[at + 4:at + 4 + size]))
        at += 4 + size
    return items


def bytes_tensor(name: str, shape_in, items: list[bytes]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """An object array of `items` in `shape`, checking that the count agrees."""
    shape, count = checked_shape(name, shape_in)
    if len(items) != count:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: shape {list(shape)} needs {count} BYTES "
                         f"elements, got {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def _bytes_array(name: str, array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            item = item.encode("utf-8")
        if not isinstance(item, bytes):
            raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: a BYTES element is "
                             f"{type(item).__name__}, not bytes or str")
        out[i] = item
    return out.reshape(array.shape)


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode a `warmd.v1.Tensor` (see `decode`)."""
    return decode(tensor.name, tensor.dtype, tensor.shape, tensor.raw)


def decode(name: str, dtype_name: str, shape_in, raw: bytes | memoryview) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Decode raw bytes, checking dtype, shape and byte count agree (BF16 arrives as exact float32, BYTES as
    an object array of bytes).

    Raises:
        WarmdError: `invalid_argument` naming the tensor and what disagrees.
    """
    shape, count = checked_shape(name, shape_in)
    if dtype_name == "BYTES":
        return bytes_tensor(name, shape, split_bytes(name, raw))
    if dtype_name == "BF16":
        _check_size(name, dtype_name, shape, count * 2, raw)
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    dtype = numpy_dtype(name, dtype_name)
    _check_size(name, dtype_name, shape, count * dtype.itemsize, raw)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def checked_shape(name: str, shape_in) -> tuple[tuple[int, ...], int]:  # type: ignore[no-untyped-def]
    """The shape as a tuple and its element count, refusing negative or too many dimensions."""
    shape = tuple(map(int, shape_in))
    if len(shape) > MAX_DIMS or min(shape, default=0) < 0:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: shape {list(shape)} must have at "
                         f"most {MAX_DIMS} non-negative dimensions")
    count = spread = 1
    for d in shape:
        count *= d
        spread *= max(d, 1)
    if spread > MAX_ELEMENTS:     # numpy refuses such shapes even when a zero makes them empty
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: shape {list(shape)} is too large "
                         f"(more than {MAX_ELEMENTS} elements without its zero dimensions)")
    return shape, count


def numpy_dtype(name: str, dtype_name: str) -> np.dtype:
    dtype = NUMPY_DTYPES.get(dtype_name)
    if dtype is None:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: unknown dtype {dtype_name!r}; "
                         f"use one of {', '.join([*NUMPY_DTYPES, 'BF16', 'BYTES'])}")
    return dtype


def _check_size(name: str, dtype_name: str, shape: tuple[int, ...], expected: int, raw: bytes | memoryview) -> None:
    if len(raw) != expected:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: shape {list(shape)} of {dtype_name} needs "
                         f"{expected} bytes, got {len(raw)}")
