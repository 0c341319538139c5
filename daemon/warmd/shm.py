"""System shared memory: tensors that stay out of the gRPC message (Open Inference Protocol extension).

A client creates a POSIX shared-memory object (`shm_open`, e.g. with tritonclient's
`tritonclient.utils.shared_memory`), registers a window of it under a name, and then names
(region, offset, byte_size) in place of an input's contents or as the destination of an output.

Checks, each failing with `invalid_argument` and a message:
  - the key is a plain POSIX shared-memory name ("/frames"): no other slashes, no "..";
  - the object is a regular file owned by the daemon's own user, opened without following links;
  - the window lies inside the object, and every reference lies inside its window;
  - a caller sees and uses only the regions it registered (callers are told apart by their
    credentials: the token on TCP, the socket's user on the Unix socket).
"""
from __future__ import annotations

import mmap
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from warmd.errors import Code, WarmdError

SHM_DIR = Path("/dev/shm")
_KEY = re.compile(r"^/?[A-Za-z0-9_.\-]{1,200}$")


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    owner: str
    _map: mmap.mmap = field(repr=False)

    def window(self, offset: int, byte_size: int, what: str) -> memoryview:
        """The bytes [offset, offset + byte_size) of this region's window, checked."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{what}: offset {offset} + byte_size {byte_size} lies outside "
                             f"shared-memory region {self.name!r} ({self.byte_size} bytes)")
        start = self.offset + offset
        return memoryview(self._map)[start:start + byte_size]


class SharedMemoryRegistry:
    """Regions registered by callers, keyed by (owner, name)."""

    def __init__(self, root: Path = SHM_DIR) -> None:
        self._root = root
        self._regions: dict[tuple[str, str], Region] = {}
        self._lock = threading.Lock()

    def register(self, owner: str, name: str, key: str, offset: int, byte_size: int) -> Region:
        """Map a window of a shared-memory object under `name` for `owner`.

        Raises:
            WarmdError: `invalid_argument` for a bad name, key or window, or a name already registered.
        """
        if not name:
            raise WarmdError(Code.INVALID_ARGUMENT, "a shared-memory region needs a name")
        if not _KEY.match(key) or key.strip("/") in (".", ".."):
            raise WarmdError(Code.INVALID_ARGUMENT, f"shared-memory key {key!r} must be a POSIX shared-memory "
                             "name like /frames (letters, digits, . _ -; no other slashes)")
        if byte_size <= 0 or offset < 0:
            raise WarmdError(Code.INVALID_ARGUMENT, f"region {name!r}: byte_size must be positive and offset "
                             f"not negative (got byte_size {byte_size}, offset {offset})")
        with self._lock:
            if (owner, name) in self._regions:
                raise WarmdError(Code.INVALID_ARGUMENT, f"shared-memory region {name!r} is already registered; "
                                 "unregister it first")
            mapped = self._map(key, offset, byte_size)
            region = Region(name, key, offset, byte_size, owner, mapped)
            self._regions[(owner, name)] = region
            return region

    def _map(self, key: str, offset: int, byte_size: int) -> mmap.mmap:
        path = self._root / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise WarmdError(Code.INVALID_ARGUMENT, f"cannot open shared-memory object {key!r}: "
                             f"{exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                raise WarmdError(Code.INVALID_ARGUMENT, f"shared-memory object {key!r} is not a regular object "
                                 "owned by the daemon's user")
            if offset + byte_size > info.st_size:
                raise WarmdError(Code.INVALID_ARGUMENT, f"offset {offset} + byte_size {byte_size} is beyond the "
                                 f"end of shared-memory object {key!r} ({info.st_size} bytes)")
            return mmap.mmap(fd, info.st_size)
        finally:
            os.close(fd)

    def unregister(self, owner: str, name: str = "") -> None:
        """Forget one region of `owner` (or all of them when `name` is empty); unknown names are ignored."""
        with self._lock:
            names = [name] if name else [n for (o, n) in self._regions if o == owner]
            for n in names:
                region = self._regions.pop((owner, n), None)
                if region is not None:
                    _close(region)

    def status(self, owner: str, name: str = "") -> list[Region]:
        """`owner`'s regions (or the one named). Raises `invalid_argument` for an unknown name."""
        with self._lock:
            if name:
                return [self.get(owner, name)]
            return [r for (o, _), r in self._regions.items() if o == owner]

    def has(self, owner: str, name: str) -> bool:
        with self._lock:
            return (owner, name) in self._regions

    def read(self, owner: str, name: str, offset: int, byte_size: int, what: str) -> memoryview:
        """The bytes of a window of `owner`'s region `name` (checked), for decoding an input in place."""
        return self.get(owner, name).window(offset, byte_size, what)

    def write(self, owner: str, name: str, offset: int, byte_size: int, raw: memoryview, what: str) -> None:
        """Copy a tensor's wire bytes (`tensors.raw`) into a window of `owner`'s region `name`; they must fit."""
        window = self.get(owner, name).window(offset, byte_size, what)
        if raw.nbytes > len(window):
            raise WarmdError(Code.INVALID_ARGUMENT, f"{what} needs {raw.nbytes} bytes; its shared-memory window "
                             f"holds {len(window)}")
        window[:raw.nbytes] = raw

    def get(self, owner: str, name: str) -> Region:
        region = self._regions.get((owner, name))
        if region is None:
            raise WarmdError(Code.INVALID_ARGUMENT, f"no shared-memory region {name!r} is registered by this "
                             "caller; register it first (SystemSharedMemoryRegister)")
        return region

    def close(self) -> None:
        with self._lock:
            for region in self._regions.values():
                _close(region)
            self._regions.clear()


def _close(region: Region) -> None:
    try:
        region._map.close()
    except BufferError:
        pass    # a request still holds a view of it; the map goes when that view does
