"""numpy arrays <-> `warmd.v1.Tensor` (Open Inference Protocol dtype names, raw little-endian bytes).

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


def to_proto(name: str, array: np.ndarray) -> pb.Tensor:
    """Encode an array. Raises `invalid_argument` for a dtype the protocol has no name for."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _NAMES:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: dtype {array.dtype} is not supported; "
                         f"use one of {', '.join(NUMPY_DTYPES)}")
    data = np.ascontiguousarray(array, dtype=dtype)
    return pb.Tensor(name=name, dtype=_NAMES[dtype], shape=list(data.shape), raw=data.tobytes())


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode a tensor, checking dtype, shape and byte count agree (BF16 arrives as exact float32).

    Raises:
        WarmdError: `invalid_argument` naming the tensor and what disagrees.
    """
    shape = tuple(tensor.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {tensor.name!r}: shape {list(shape)} must have at "
                         f"most {MAX_DIMS} non-negative dimensions")
    count = 1
    for d in shape:
        count *= d
    if tensor.dtype == "BF16":
        raw = _checked(tensor, count, 2)
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    dtype = NUMPY_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {tensor.name!r}: unknown dtype {tensor.dtype!r}; "
                         f"use one of {', '.join([*NUMPY_DTYPES, 'BF16'])}")
    raw = _checked(tensor, count, dtype.itemsize)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _checked(tensor: pb.Tensor, count: int, itemsize: int) -> bytes:
    if len(tensor.raw) != count * itemsize:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {tensor.name!r}: shape {list(tensor.shape)} of "
                         f"{tensor.dtype} needs {count * itemsize} bytes, got {len(tensor.raw)}")
    return tensor.raw
