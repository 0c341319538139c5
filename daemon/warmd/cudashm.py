"""CUDA shared memory: tensors that stay on the GPU between a local program and the daemon (the Open
Inference Protocol's CUDA shared-memory extension, as Triton serves it).

A client allocates device memory, exports it with `cudaIpcGetMemHandle` (e.g. tritonclient's
`tritonclient.utils.cuda_shared_memory`) and registers the 64-byte handle with its device and size. The
daemon opens the handle in its own process: an input is then read in place (a torch tensor viewing the
client's memory, for providers that take device tensors; others get one device-to-host copy) and an output
is copied into it on the device.

Checks, as for system shared memory (`invalid_argument` with a message):
  - the handle is a cudaIpcMemHandle_t (64 bytes) that opens on the named device, and the byte size is
    positive and inside the allocation the handle names;
  - every reference lies inside its region;
  - a caller sees and uses only the regions it registered (callers as in warmd.shm); one name is one
    region across system and CUDA shared memory.
Without a GPU nothing can be registered (`device_unavailable`); status and unregister answer as usual.
Needs torch built with CUDA and cuda-bindings (the `cuda` extra), imported at the first registration.

A mapping stays open while a tensor still views it: unregistering drops the registry's reference, and the
handle is closed (`cudaIpcCloseMemHandle`) once the last view is gone.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

from warmd.errors import Code, WarmdError

log = logging.getLogger(__name__)
HANDLE_BYTES = 64


class _Mapping:
    """One opened IPC handle. Tensors from `view` hold it (through their _Window); closed after the last."""

    def __init__(self, pointer: int, device_id: int) -> None:
        self.pointer, self.device_id = pointer, device_id
        weakref.finalize(self, _close, pointer, device_id)

    def view(self, offset: int, byte_size: int) -> Any:
        """A uint8 torch tensor of bytes [offset, offset + byte_size), in place on the device."""
        import torch

        return torch.as_tensor(_Window(self, offset, byte_size), device=f"cuda:{self.device_id}")


class _Window:
    """What torch.as_tensor wraps, and keeps alive with the tensor: a byte range of a mapping."""

    def __init__(self, mapping: _Mapping, offset: int, byte_size: int) -> None:
        self.mapping = mapping
        self.__cuda_array_interface__ = {"shape": (byte_size,), "typestr": "|u1", "version": 2,
                                         "data": (mapping.pointer + offset, False)}


@dataclass
class CudaRegion:
    name: str
    device_id: int
    byte_size: int
    owner: str
    _mapping: _Mapping = field(repr=False)

    def window(self, offset: int, byte_size: int, what: str) -> Any:
        """The bytes [offset, offset + byte_size) of this region as a uint8 device tensor, checked."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{what}: offset {offset} + byte_size {byte_size} lies outside "
                             f"CUDA shared-memory region {self.name!r} ({self.byte_size} bytes)")
        return self._mapping.view(offset, byte_size)


class CudaSharedMemoryRegistry:
    """CUDA regions registered by callers, keyed by (owner, name)."""

    def __init__(self) -> None:
        self._regions: dict[tuple[str, str], CudaRegion] = {}
        self._lock = threading.Lock()

    def register(self, owner: str, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> CudaRegion:
        """Open a client's cudaIpc handle under `name` for `owner`.

        Raises:
            WarmdError: `device_unavailable` without a usable GPU (or without torch with CUDA and
                cuda-bindings); `invalid_argument` for a bad name, handle, device or size, or a name taken.
        """
        if not name:
            raise WarmdError(Code.INVALID_ARGUMENT, "a CUDA shared-memory region needs a name")
        if len(raw_handle) != HANDLE_BYTES:
            raise WarmdError(Code.INVALID_ARGUMENT, f"region {name!r}: raw_handle has {len(raw_handle)} bytes; a "
                             f"cudaIpcMemHandle_t has {HANDLE_BYTES} (tritonclient's get_raw_handle, decoded)")
        if byte_size <= 0:
            raise WarmdError(Code.INVALID_ARGUMENT, f"region {name!r}: byte_size must be positive")
        with self._lock:
            if (owner, name) in self._regions:
                raise WarmdError(Code.INVALID_ARGUMENT, f"shared-memory region {name!r} is already registered; "
                                 "unregister it first")
            pointer = _open(name, raw_handle, device_id, byte_size)
            region = CudaRegion(name, device_id, byte_size, owner, _Mapping(pointer, device_id))
            self._regions[(owner, name)] = region
            return region

    def unregister(self, owner: str, name: str = "") -> None:
        """Forget one region of `owner` (or all of them when `name` is empty); unknown names are ignored."""
        with self._lock:
            for key in [k for k in self._regions if k[0] == owner and (not name or k[1] == name)]:
                del self._regions[key]

    def status(self, owner: str, name: str = "") -> list[CudaRegion]:
        """`owner`'s regions (or the one named). Raises `invalid_argument` for an unknown name."""
        with self._lock:
            if name:
                return [self.get(owner, name)]
            return [r for (o, _), r in self._regions.items() if o == owner]

    def has(self, owner: str, name: str) -> bool:
        with self._lock:
            return (owner, name) in self._regions

    def get(self, owner: str, name: str) -> CudaRegion:
        region = self._regions.get((owner, name))
        if region is None:
            raise WarmdError(Code.INVALID_ARGUMENT, f"no CUDA shared-memory region {name!r} is registered by this "
                             "caller; register it first (CudaSharedMemoryRegister)")
        return region

    def read(self, owner: str, name: str, offset: int, byte_size: int, what: str) -> Any:
        """A window of `owner`'s region `name` as a uint8 device tensor (no copy)."""
        return self.get(owner, name).window(offset, byte_size, what)

    def write(self, owner: str, name: str, offset: int, byte_size: int, value: Any, what: str) -> None:
        """Copy `value` into a window of `owner`'s region `name`, and wait until it is there: a torch tensor
        (on any device: device to device from a GPU) or a tensor's wire bytes (`tensors.raw`, host to device)."""
        import torch

        window = self.read(owner, name, offset, byte_size, what)
        if isinstance(value, torch.Tensor):
            source = value.contiguous().reshape(-1).view(torch.uint8)
        elif value.nbytes:
            with warnings.catch_warnings():     # a read-only buffer is fine: it is only read
                warnings.simplefilter("ignore", UserWarning)
                source = torch.frombuffer(value, dtype=torch.uint8)
        else:
            source = torch.empty(0, dtype=torch.uint8)
        if source.numel() > window.numel():
            raise WarmdError(Code.INVALID_ARGUMENT, f"{what} needs {source.numel()} bytes; its CUDA shared-memory "
                             f"window holds {window.numel()}")
        window[:source.numel()].copy_(source)
        torch.cuda.current_stream(window.device).synchronize()   # the reply says the bytes are there


# ---- device tensors ------------------------------------------------------------------------------
def is_tensor(value: Any) -> bool:
    """Whether `value` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _torch_dtypes() -> dict[str, Any]:
    import torch

    return {"BOOL": torch.bool, "UINT8": torch.uint8, "UINT16": torch.uint16, "UINT32": torch.uint32,
            "UINT64": torch.uint64, "INT8": torch.int8, "INT16": torch.int16, "INT32": torch.int32,
            "INT64": torch.int64, "FP16": torch.float16, "BF16": torch.bfloat16, "FP32": torch.float32,
            "FP64": torch.float64}


def as_tensor(name: str, dtype_name: str, shape_in: Any, window: Any) -> Any:
    """A window's bytes as a tensor of `dtype_name` and shape, in place; the byte count must agree.

    Raises:
        WarmdError: `invalid_argument` for an unknown dtype or a size that does not match.
    """
    import warmd.tensors as codec

    dtypes = _torch_dtypes()
    if dtype_name not in dtypes:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: unknown dtype {dtype_name!r}; use one of "
                         f"{', '.join([*dtypes, 'BYTES'])}")
    shape, count = codec.checked_shape(name, shape_in)
    itemsize = dtypes[dtype_name].itemsize
    if window.numel() != count * itemsize:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: shape {list(shape)} of {dtype_name} needs "
                         f"{count * itemsize} bytes, got {window.numel()}")
    return window.view(dtypes[dtype_name]).reshape(shape)


def dtype_name(name: str, tensor: Any) -> str:
    """The protocol's name of a torch tensor's dtype."""
    names = {dtype: key for key, dtype in _torch_dtypes().items()}
    if tensor.dtype not in names:
        raise WarmdError(Code.INVALID_ARGUMENT, f"tensor {name!r}: dtype {tensor.dtype} has no name in the protocol")
    return names[tensor.dtype]


# ---- CUDA calls (cuda-bindings) ------------------------------------------------------------------
def _runtime() -> Any:
    try:
        import torch
        from cuda.bindings import runtime
    except ImportError as exc:
        raise WarmdError(Code.DEVICE_UNAVAILABLE, f"CUDA shared memory needs torch with CUDA and cuda-bindings "
                         f"(pip install 'warmd[cuda]'): {exc}") from None
    if not torch.cuda.is_available():
        raise WarmdError(Code.DEVICE_UNAVAILABLE, "CUDA shared memory needs a GPU, and torch sees none here; "
                         "use system shared memory")
    return runtime


def _call(result: tuple, what: str) -> Any:
    """The value of a cuda-bindings call, or `invalid_argument` with CUDA's own words."""
    from cuda.bindings import runtime

    err, *values = result
    if err != runtime.cudaError_t.cudaSuccess:
        raise WarmdError(Code.INVALID_ARGUMENT, f"{what}: {runtime.cudaGetErrorString(err)[1].decode()}")
    return values[0] if len(values) == 1 else values


@contextlib.contextmanager
def _on_device(device_id: int) -> Iterator[Any]:
    """The calling thread's current device is `device_id` inside (its primary context, shared with torch)."""
    runtime = _runtime()
    count = _call(runtime.cudaGetDeviceCount(), "counting GPUs")
    if not 0 <= device_id < count:
        raise WarmdError(Code.INVALID_ARGUMENT, f"device_id {device_id} does not exist here ({count} GPU(s), "
                         "numbered as the daemon sees them)")
    previous = _call(runtime.cudaGetDevice(), "reading the current GPU")
    _call(runtime.cudaSetDevice(device_id), f"selecting GPU {device_id}")
    try:
        yield runtime
    finally:
        runtime.cudaSetDevice(previous)


def _open(name: str, raw_handle: bytes, device_id: int, byte_size: int) -> int:
    with _on_device(device_id) as runtime:
        from cuda.bindings import driver

        handle = runtime.cudaIpcMemHandle_t()
        ctypes.memmove(handle.getPtr(), raw_handle, HANDLE_BYTES)   # the struct's 64 bytes, in any release
        pointer = int(_call(runtime.cudaIpcOpenMemHandle(handle, runtime.cudaIpcMemLazyEnablePeerAccess),
                            f"region {name!r}: cannot open the CUDA IPC handle on GPU {device_id} (it must come "
                            "from cudaIpcGetMemHandle in another live process)"))
        err, base, size = driver.cuMemGetAddressRange(pointer)
        room = int(base) + int(size) - pointer if err == driver.CUresult.CUDA_SUCCESS else 0
        if byte_size > room:
            runtime.cudaIpcCloseMemHandle(pointer)
            raise WarmdError(Code.INVALID_ARGUMENT, f"region {name!r}: byte_size {byte_size} is beyond the end of "
                             f"the allocation its handle names ({room} bytes)")
    return pointer


def _close(pointer: int, device_id: int) -> None:
    try:
        with _on_device(device_id) as runtime:
            runtime.cudaIpcCloseMemHandle(pointer)
    except Exception:   # noqa: BLE001 - a finalizer (maybe at exit, CUDA gone): nothing to tell
        log.debug("closing a CUDA IPC mapping failed", exc_info=True)
