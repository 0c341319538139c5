"""numpy arrays <-> tensors on the wire: `warmd.v1.Tensor` and the Open Inference Protocol's raw and typed
contents (same dtype names, raw little-endian row-major bytes).

Used by the daemon and by the `warm` client; needs numpy only.
"""
from __future__ import annotations

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
    return pb.Tensor(name=name, dtype=dtype, shape=list(data.shape), raw=data.tobytes())


def encode(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """The protocol's dtype name and a contiguous little-endian copy (or view) of `array`."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _NAMES:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: dtype {array.dtype} is not supported; "
                         f"use one of {', '.join(NUMPY_DTYPES)}")
    return _NAMES[dtype], np.ascontiguousarray(array, dtype=dtype)


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode a `warmd.v1.Tensor` (see `decode`)."""
    return decode(tensor.name, tensor.dtype, tensor.shape, tensor.raw)


def decode(name: str, dtype_name: str, shape_in, raw: bytes | memoryview) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Decode raw bytes, checking dtype, shape and byte count agree (BF16 arrives as exact float32).

    Raises:
        WarmdError: `invalid_argument` naming the tensor and what disagrees.
    """
    shape, count = checked_shape(name, shape_in)
    if dtype_name == "BF16":
        _check_size(name, dtype_name, shape, count * 2, raw)
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    dtype = numpy_dtype(name, dtype_name)
    _check_size(name, dtype_name, shape, count * dtype.itemsize, raw)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def checked_shape(name: str, shape_in) -> tuple[tuple[int, ...], int]:  # type: ignore[no-untyped-def]
    """The shape as a tuple and its element count, refusing negative or too many dimensions."""
    shape = tuple(int(d) for d in shape_in)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
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
                         f"use one of {', '.join([*NUMPY_DTYPES, 'BF16'])}")
    return dtype


def _check_size(name: str, dtype_name: str, shape: tuple[int, ...], expected: int, raw: bytes | memoryview) -> None:
    if len(raw) != expected:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: shape {list(shape)} of {dtype_name} needs "
                         f"{expected} bytes, got {len(raw)}")
