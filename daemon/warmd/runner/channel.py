"""The runner's wire: JSON messages over a Unix socket, tensors in two shared-memory arenas.

Rules:
- Messages are JSON, never pickle: the daemon reads what an untrusted process wrote, so nothing it
  receives can name code to run. A message is at most MAX_MESSAGE_BYTES (framing: multiprocessing's
  length-prefixed `Connection` over the socket).
- Tensors travel in arenas: memfd files both processes map, one per direction (`in`: daemon to runner,
  `out`: runner to daemon). The daemon creates them sealed against shrinking (F_SEAL_SHRINK, then
  F_SEAL_SEAL), so neither side can cut a file under the other's mapping (reading a mapped page past the
  end of its file is SIGBUS, which would kill the reader); either side may grow one, up to MAX_ARENA_BYTES.
- A runner runs one request at a time, so each arena holds one request's tensors; a reader copies them
  out before answering, because the next request reuses the arena.
- Every tensor descriptor from the other side is checked (a dtype of the protocol's list, a shape, a byte
  count that matches, bounds inside the arena) before a byte is read.
- BYTES tensors (numpy object arrays of bytes) go inside the message, base64 encoded.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import mmap
import os
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warmd.errors import Code, WarmdError
from warmd.spec import ModelSpec, Source, TensorDecl

if TYPE_CHECKING:
    import numpy as np

MAX_MESSAGE_BYTES = 64 * 2**20
MAX_ARENA_BYTES = 64 * 2**30
INITIAL_ARENA_BYTES = 2**20
ALIGN = 64


class ChannelError(WarmdError):
    """The other side broke the channel's rules (a malformed message, a descriptor out of bounds)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.PROVIDER_FAILED, message)


class Arena:
    """One shared-memory file, mapped; it grows, never shrinks.

    Args:
        fd: the memfd (the daemon's own, or the one a runner inherited).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map: mmap.mmap | None = None
        self.size = 0
        self.refresh()

    @classmethod
    def create(cls, name: str, size: int = INITIAL_ARENA_BYTES) -> "Arena":
        """A new arena sealed against shrinking (Linux: memfd_create)."""
        if not hasattr(os, "memfd_create"):
            raise WarmdError(Code.UNSUPPORTED_PROVIDER, "runner processes need Linux (memfd shared memory); "
                             "remove `isolation: process` from the spec, or run warmd on Linux")
        import fcntl          # POSIX only: imported here, so the daemon still starts where there is none

        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        return cls(fd)

    def refresh(self) -> None:
        """Map the file as it is now: the other side may have grown it."""
        size = os.fstat(self.fd).st_size
        if size > MAX_ARENA_BYTES:
            raise ChannelError(f"a shared-memory arena grew to {size} bytes, over {MAX_ARENA_BYTES}")
        if size != self.size:
            self._unmap()
            self._map = mmap.mmap(self.fd, size) if size else None
            self.size = size

    def reserve(self, nbytes: int) -> None:
        """Grow the file (and the mapping) to hold at least `nbytes`."""
        self.refresh()
        if nbytes > self.size:
            if nbytes > MAX_ARENA_BYTES:
                raise WarmdError(Code.INVALID_ARGUMENT, f"tensors of {nbytes} bytes exceed a runner's "
                                 f"{MAX_ARENA_BYTES}-byte shared memory")
            os.ftruncate(self.fd, max(nbytes, 2 * self.size))
            self.refresh()

    def put(self, arrays: dict[str, "np.ndarray"]) -> list[dict[str, Any]]:
        """Write arrays into the arena (from offset 0). Returns their descriptors for the message."""
        import numpy as np

        import warmd.tensors as codec

        descs, offset = [], 0
        for name, array in arrays.items():
            if array.dtype == object or array.dtype.kind in "SU":
                descs.append({"name": name, "dtype": "BYTES", "shape": list(array.shape),
                              "items": [base64.b64encode(_as_bytes(v)).decode() for v in array.ravel()]})
                continue
            dtype = codec.dtype_name(array.dtype)
            if dtype not in codec.NUMPY_DTYPES:
                raise WarmdError(Code.PROVIDER_FAILED, f"tensor {name!r} has dtype {array.dtype}, which has no "
                                 "Open Inference Protocol name")
            descs.append({"name": name, "dtype": dtype, "shape": list(array.shape), "offset": offset,
                          "nbytes": int(array.nbytes)})
            offset += -(-int(array.nbytes) // ALIGN) * ALIGN
        self.reserve(max(offset, 1))
        for desc, array in zip(descs, arrays.values()):
            if desc["dtype"] != "BYTES" and desc["nbytes"]:
                target = np.frombuffer(self._map, dtype=codec.NUMPY_DTYPES[desc["dtype"]],  # type: ignore[arg-type]
                                       count=array.size, offset=desc["offset"])
                target[...] = np.ascontiguousarray(array).reshape(-1).view(target.dtype)
                del target    # no view may outlive the call: a mapping with views cannot be replaced
        return descs

    def take(self, descs: Any) -> dict[str, "np.ndarray"]:
        """Copies of the arrays the other side described; every descriptor is checked first.

        Raises:
            ChannelError: a descriptor that is malformed or points outside the arena.
        """
        import numpy as np

        import warmd.tensors as codec

        if not isinstance(descs, list):
            raise ChannelError("tensor descriptors must be a list")
        self.refresh()
        out: dict[str, np.ndarray] = {}
        for desc in descs:
            name, dtype, shape = _checked_head(desc)
            if dtype == "BYTES":
                items = desc.get("items")
                if not isinstance(items, list) or len(items) != _count(shape):
                    raise ChannelError(f"BYTES tensor {name!r}: {len(items or [])} items for shape {shape}")
                array = np.empty(len(items), dtype=object)
                array[:] = [base64.b64decode(i, validate=True) for i in items]
                out[name] = array.reshape(shape)
                continue
            if dtype not in codec.NUMPY_DTYPES:
                raise ChannelError(f"tensor {name!r}: unknown dtype {dtype!r}")
            np_dtype = codec.NUMPY_DTYPES[dtype]
            offset, nbytes = desc.get("offset"), desc.get("nbytes")
            count = _count(shape)
            if not (_whole(offset) and _whole(nbytes) and nbytes == count * np_dtype.itemsize
                    and offset + nbytes <= self.size):
                raise ChannelError(f"tensor {name!r}: {nbytes!r} bytes at {offset!r} do not fit its shape "
                                   f"{shape} {dtype} inside the {self.size}-byte arena")
            view = np.frombuffer(self._map, dtype=np_dtype, count=count, offset=offset) if count else \
                np.empty(0, np_dtype)  # type: ignore[arg-type]
            out[name] = view.reshape(shape).copy()
            del view
        return out

    def close(self) -> None:
        self._unmap()
        os.close(self.fd)

    def _unmap(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:    # a caller still holds a view: the mapping goes with the last one
                pass
            self._map = None


def _as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _checked_head(desc: Any) -> tuple[str, str, list[int]]:
    if not isinstance(desc, dict):
        raise ChannelError("a tensor descriptor must be an object")
    name, dtype, shape = desc.get("name"), desc.get("dtype"), desc.get("shape")
    if not isinstance(name, str) or not isinstance(dtype, str):
        raise ChannelError("a tensor descriptor needs a name and a dtype")
    if not isinstance(shape, list) or len(shape) > 16 or not all(_whole(d) for d in shape):
        raise ChannelError(f"tensor {name!r}: shape {shape!r} is not a list of at most 16 sizes")
    if _count(shape) > MAX_ARENA_BYTES:
        raise ChannelError(f"tensor {name!r}: shape {shape} is too big")
    return name, dtype, shape


def send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message).encode())


def receive(conn: Connection) -> dict[str, Any]:
    """The next message.

    Raises:
        EOFError: the other side closed the channel (or died).
        ChannelError: a message that is too big or not a JSON object.
    """
    try:
        data = conn.recv_bytes(MAX_MESSAGE_BYTES)
    except OSError as exc:
        raise ChannelError(f"a message over {MAX_MESSAGE_BYTES} bytes or a broken channel ({exc})") from None
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChannelError(f"a message that is not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ChannelError("a message that is not a JSON object")
    return message


def spec_to_json(spec: ModelSpec) -> dict[str, Any]:
    """A spec as JSON, for the runner (which trusts the daemon)."""
    return json.loads(json.dumps(dataclasses.asdict(spec), default=str))


def spec_from_json(data: dict[str, Any]) -> ModelSpec:
    fields = dict(data)
    fields["file"] = Path(fields["file"])
    fields["source"] = Source(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields["source"].items()})
    fields["tags"] = tuple(fields["tags"])
    for key in ("inputs", "outputs"):
        fields[key] = tuple(TensorDecl(d["name"], d["dtype"], tuple(d["shape"])) for d in fields[key])
    return ModelSpec(**fields)
