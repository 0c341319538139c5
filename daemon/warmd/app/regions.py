"""Shared-memory regions, system (POSIX shm, shm.py) and CUDA (cudashm.py), as every front uses them.

Rules held here:
- a region belongs to the caller that registered it (a TCP token, or the local user of the Unix socket)
  and only that caller sees and uses it;
- a region name is one name across system and CUDA memory, per caller: registering a name the caller
  already uses for the other kind is refused;
- an input read from a CUDA region reaches a provider that takes device tensors (`on_device`) in place, on
  the GPU; any other provider gets one copy to the host. An output goes into whichever kind of region is
  named, from the host or (asked for on the device) device to device.
"""
from __future__ import annotations

from typing import Any

from warmd import cudashm
from warmd.cudashm import CudaRegion, CudaSharedMemoryRegistry
from warmd.errors import Code, WarmdError
from warmd.shm import Region, SharedMemoryRegistry


class Regions:
    def __init__(self) -> None:
        self.system = SharedMemoryRegistry()
        self.cuda = CudaSharedMemoryRegistry()

    # ---- registry ------------------------------------------------------------------------------
    def register_system(self, owner: str, name: str, key: str, offset: int, byte_size: int) -> Region:
        """Map a window of POSIX shared-memory object `key` under `name` for `owner` (shm.py's checks)."""
        _name_free(owner, name, self.cuda.has, "CUDA")
        return self.system.register(owner, name, key, offset, byte_size)

    def register_cuda(self, owner: str, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> CudaRegion:
        """Open a client's cudaIpc handle under `name` for `owner` (cudashm.py's checks)."""
        _name_free(owner, name, self.system.has, "system")
        return self.cuda.register(owner, name, raw_handle, device_id, byte_size)

    def unregister_system(self, owner: str, name: str = "") -> None:
        """Forget one of `owner`'s system regions, or all of them when `name` is empty."""
        self.system.unregister(owner, name)

    def unregister_cuda(self, owner: str, name: str = "") -> None:
        self.cuda.unregister(owner, name)

    def system_status(self, owner: str, name: str = "") -> list[Region]:
        return self.system.status(owner, name)

    def cuda_status(self, owner: str, name: str = "") -> list[CudaRegion]:
        return self.cuda.status(owner, name)

    def is_cuda(self, owner: str, region: str) -> bool:
        """Whether `region` is one of `owner`'s CUDA regions."""
        return self.cuda.has(owner, region)

    # ---- tensors -------------------------------------------------------------------------------
    def read_input(self, owner: str, name: str, dtype: str, shape: Any, region: str, offset: int, byte_size: int,
                   on_device: bool) -> Any:
        """Input `name` from a window of one of `owner`'s regions: a numpy array, or (a CUDA region, a
        provider that takes device tensors, a non-BYTES dtype) a torch tensor on the GPU, read in place.

        Raises:
            WarmdError: `invalid_argument` for an unknown region, a window outside it, or bytes that do not
                make the dtype and shape.
        """
        import warmd.tensors as codec   # numpy: imported on the first request

        what = f"input {name!r}"
        if self.cuda.has(owner, region):
            window = self.cuda.read(owner, region, offset, byte_size, what)
            if on_device and dtype != "BYTES":
                return cudashm.as_tensor(name, dtype, shape, window)
            raw = window.cpu().numpy().data      # one copy to the host for a provider that takes numpy
        else:
            raw = self.system.read(owner, region, offset, byte_size, what)
        return codec.decode(name, dtype, shape, raw)

    def write_output(self, owner: str, name: str, value: Any, region: str, offset: int,
                     byte_size: int) -> tuple[str, list[int]]:
        """Write output `name` (numpy, or a torch tensor kept on the GPU) into a window of one of `owner`'s
        regions. Returns its (dtype, shape).

        Raises:
            WarmdError: `invalid_argument` for an unknown region or a window too small or outside it.
        """
        import warmd.tensors as codec

        what = f"output {name!r}"
        if cudashm.is_tensor(value):     # kept on the GPU for a CUDA window (InferRequest.device_outputs)
            dtype, shape, raw = cudashm.dtype_name(name, value), list(value.shape), value
        else:
            dtype, data = codec.encode(name, value)
            shape, raw = list(data.shape), codec.raw(dtype, data)
        if self.cuda.has(owner, region):
            self.cuda.write(owner, region, offset, byte_size, raw, what)
        else:
            self.system.write(owner, region, offset, byte_size, raw, what)
        return dtype, shape

    def close(self) -> None:
        self.system.close()


def _name_free(owner: str, name: str, taken: Any, kind: str) -> None:
    """Refuse a region name the caller already uses for the other kind of shared memory."""
    if taken(owner, name):
        raise WarmdError(Code.INVALID_ARGUMENT, f"shared-memory region {name!r} is already registered as {kind} "
                         "shared memory; unregister it first")
