"""Moving weights to and from a GPU at bus speed: safetensors streamed through pinned staging buffers, and
whole storages parked in pinned host memory.

Why not `safetensors.torch.load_file(device="cuda")`: it copies tensor by tensor from pageable memory
(measured 1.6 GB/s on an H100). Here several reader threads each `preadv` a chunk of the file straight
into one of their two reused pinned buffers and enqueue its host-to-device copy on their own CUDA stream;
the next read overlaps the copy. The whole data section lands in one device allocation, and the tensors
are views into it, so nothing is copied twice and the footprint is exactly the file's data.

Imports torch; only the torch-based providers import this module, inside `load`.
"""
from __future__ import annotations

import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from warmd.errors import Code, WarmdError

CHUNK = 16 * 2**20          # bytes per read and per copy (16 x 2 x 16 MiB = 512 MiB of pinned staging)
READERS = min(16, os.cpu_count() or 1)   # reader threads; page-cache copies scale up to ~16 (H100 bench)
MAX_HEADER = 100 * 2**20    # safetensors' own limit on the JSON header

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: list[int]
    start: int      # offsets within the data section
    end: int


class _Staging:
    """Per reader thread: a CUDA stream and two pinned buffers, reused by every load on that device."""

    def __init__(self, device: torch.device, chunk: int) -> None:
        self.stream = torch.cuda.Stream(device)
        self.buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.views = [memoryview(b.numpy()) for b in self.buffers]
        self.done: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0


class _Pool:
    """The staging buffers of one device. One load uses them at a time (loads are bus-bound anyway)."""

    def __init__(self) -> None:
        self.in_use = threading.Lock()
        self.stagings: list[_Staging] = []


_pools: dict[tuple[str, int], _Pool] = {}
_pools_lock = threading.Lock()


def _pool(device: torch.device, chunk: int) -> _Pool:
    with _pools_lock:
        return _pools.setdefault((str(device), chunk), _Pool())


def read_header(path: Path) -> tuple[list[_Entry], int]:
    """Parse a safetensors header. Returns the tensors and the file offset where their data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise WarmdError(Code.PROVIDER_FAILED, f"{path} is not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        if size > MAX_HEADER:
            raise WarmdError(Code.PROVIDER_FAILED, f"{path}: safetensors header of {size} bytes is too large")
        try:
            header = json.loads(f.read(size))
        except ValueError as exc:
            raise WarmdError(Code.PROVIDER_FAILED, f"{path}: unreadable safetensors header: {exc}") from None
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise WarmdError(Code.PROVIDER_FAILED, f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        entries.append(_Entry(name, _DTYPES[info["dtype"]], list(info["shape"]), start, end))
    return entries, 8 + size


def load_to_device(path: Path, device: str, dtype: torch.dtype | None = None, *,
                   readers: int = READERS, chunk: int = CHUNK) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto a CUDA device.

    Args:
        path: the safetensors file.
        device: a CUDA device, e.g. "cuda:0".
        dtype: convert floating-point tensors to this type on the device (None keeps the file's types).
        readers: reader threads (each holds two pinned buffers of `chunk` bytes, kept for later loads).
        chunk: bytes per read and per host-to-device copy.

    Returns:
        name -> tensor on `device`. Tensors of the file's own type are views of one allocation.

    Raises:
        WarmdError: PROVIDER_FAILED if the file is not valid safetensors or ends early.
    """
    dev = torch.device(device)
    entries, data_start = read_header(path)
    size = os.path.getsize(path) - data_start
    if any(e.end > size for e in entries):
        raise WarmdError(Code.PROVIDER_FAILED, f"{path} is shorter than its header says (truncated download?)")
    flat = torch.empty(size, dtype=torch.uint8, device=dev)
    pool = _pool(dev, chunk)
    with pool.in_use:
        while len(pool.stagings) < readers:
            pool.stagings.append(_Staging(dev, chunk))
        _stream_file(path, data_start, size, flat, pool.stagings[:readers], chunk)
    return {e.name: _tensor(flat, e, dtype) for e in entries}


def _stream_file(path: Path, data_start: int, size: int, flat: torch.Tensor,
                 stagings: list[_Staging], chunk: int) -> None:
    # Each reader takes one contiguous span with its own descriptor: the kernel's readahead sees one
    # sequential stream per reader, which keeps a cold disk read fast; interleaved chunks defeat it.
    chunks = -(-size // chunk)
    per = -(-chunks // len(stagings))
    spans = [(k * per * chunk, min(size, (k + 1) * per * chunk)) for k in range(len(stagings))]

    def reader(staging: _Staging, start: int, end: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, data_start + start, end - start, os.POSIX_FADV_SEQUENTIAL)
            for offset in range(start, end, chunk):
                turn = staging.turn
                staging.turn ^= 1
                if staging.done[turn] is not None:
                    staging.done[turn].synchronize()      # the copy out of this buffer has finished
                n = min(chunk, end - offset)
                view = staging.views[turn][:n]
                got = 0
                while got < n:                            # preadv releases the GIL: readers run in parallel
                    read = os.preadv(fd, [view[got:]], data_start + offset + got)
                    if read == 0:
                        raise WarmdError(Code.PROVIDER_FAILED, f"{path} ended early at byte {offset + got}")
                    got += read
                with torch.cuda.stream(staging.stream):
                    flat[offset:offset + n].copy_(staging.buffers[turn][:n], non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(staging.stream)
                staging.done[turn] = event
        finally:
            os.close(fd)

    try:
        with ThreadPoolExecutor(len(stagings), thread_name_prefix="warmd-stage") as pool:
            futures = [pool.submit(reader, staging, start, end)
                       for staging, (start, end) in zip(stagings, spans) if start < end]
            for future in futures:
                future.result()
    finally:
        for staging in stagings:
            staging.stream.synchronize()


def _tensor(flat: torch.Tensor, entry: _Entry, dtype: torch.dtype | None) -> torch.Tensor:
    raw = flat[entry.start:entry.end]
    itemsize = torch.empty(0, dtype=entry.dtype).element_size()
    if entry.start % itemsize:
        raw = raw.clone()       # a view needs an aligned offset; rare (odd-sized tensors before this one)
    tensor = raw.view(entry.dtype).view(entry.shape)
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor


def park(tensors: list[torch.Tensor]) -> None:
    """Move tensors (a module's parameters and buffers, in place) to pinned host memory, storage by storage.

    One pinned allocation and one device-to-host copy per storage; views keep their offsets and strides.
    """
    _move_storages(tensors, lambda nbytes: torch.empty(nbytes, dtype=torch.uint8, pin_memory=True))


def unpark(tensors: list[torch.Tensor], device: str) -> None:
    """Bring tensors parked by `park` back onto `device`, storage by storage."""
    dev = torch.device(device)
    _move_storages(tensors, lambda nbytes: torch.empty(nbytes, dtype=torch.uint8, device=dev))


def _move_storages(tensors: list[torch.Tensor], allocate: Any) -> None:
    tensors = list({id(t): t for t in tensors}.values())     # a tied weight is moved once
    moved: dict[int, torch.Tensor] = {}
    for t in tensors:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in moved:
            target = allocate(storage.nbytes())
            target.copy_(torch.tensor([], dtype=torch.uint8, device=storage.device).set_(storage),
                         non_blocking=True)
            moved[key] = target
    torch.cuda.synchronize()
    for t in tensors:
        target = moved[t.untyped_storage().data_ptr()]
        t.data = torch.tensor([], dtype=t.dtype, device=target.device).set_(
            target.untyped_storage(), t.storage_offset(), t.size(), t.stride())
