"""One file over HTTP(S): resumable (Range), verified (sha256 or git blob sha1), atomically installed; and
what every transfer shares (a disk-space check before the first byte, a size by HTTP HEAD, throttled progress).

The partial file lives next to its final path as `<name>.part` and survives a killed daemon, so the next
attempt asks for `Range: bytes=<size of part>-` and fetches only what is missing. Nothing reaches the final
path before its digest matches: write aside, verify, `os.replace`.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from warmd.errors import Code, WarmdError
from warmd.jobs import Job
from warmd.units import format_size

log = logging.getLogger(__name__)
CHUNK = 8 * 1024 * 1024     # reading a partial file back to hash it
# The next step after a source could not be reached: what to check, or how to work without the network.
OFFLINE_HINT = ("check the network (and HF_ENDPOINT or the URL), or start warmd with --offline to use only "
                "files already on disk")
PROGRESS_EVERY_S = 0.25
RETRIES = 4            # per file, for cut connections and stalls; each retry resumes


@dataclass(frozen=True)
class Digest:
    """What the finished file must hash to: sha256 of the content, or git's blob sha1 (non-LFS hub files)."""

    kind: str          # "sha256" | "git-sha1"
    value: str

    def hasher(self, size: int):  # type: ignore[no-untyped-def]
        if self.kind == "sha256":
            return hashlib.sha256()
        h = hashlib.sha1()
        h.update(f"blob {size}\0".encode())
        return h


def part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def fetch(urls: list[str], final: Path, size: int, digest: Digest, headers: dict[str, str],
          on_bytes: Callable[[int], None], check_cancel: Callable[[], None], timeout_s: float = 30.0) -> None:
    """Fetch `urls[0]` (then each mirror in turn) into `final`, resuming any partial file.

    The content is hashed as it arrives (one pass over the bytes), so verification costs no second read.

    Args:
        urls: where the file can be had; tried in order, each with resume and retries.
        size: the exact size the file must have.
        digest: what its content must hash to.
        headers: extra request headers (authorization).
        on_bytes: called with each number of new bytes written (also with the bytes found already on disk).
        check_cancel: raises to stop; the partial file is kept for the next attempt.
        timeout_s: a connection silent this long is dropped and resumed.
    Raises:
        WarmdError: `weights_digest_mismatch` when the content is wrong twice, `unavailable` when every
            source failed, `cancelled` from check_cancel.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):      # a digest mismatch discards the file and starts once more
        actual = _Transfer(urls, part_path(final), size, digest, headers, on_bytes, check_cancel, timeout_s).run()
        if actual == digest.value:
            os.replace(part_path(final), final)
            return
        part_path(final).unlink(missing_ok=True)
        log.warning("%s: %s %s, expected %s (attempt %d)", final.name, digest.kind, actual, digest.value,
                    attempt + 1)
        on_bytes(-size)           # the progress goes back: those bytes are fetched again
    raise WarmdError(Code.WEIGHTS_DIGEST_MISMATCH,
                     f"{final.name} from {urls[0]} has {digest.kind} {actual}, expected {digest.value}, twice; "
                     "the source serves a different file than it publishes")


class _Transfer:
    """Bytes into `part` in order, hashed as written; `have` is always both the file's length and the
    number of bytes hashed, so a resume continues the same hash."""

    def __init__(self, urls: list[str], part: Path, size: int, digest: Digest, headers: dict[str, str],
                 on_bytes: Callable[[int], None], check_cancel: Callable[[], None], timeout_s: float) -> None:
        self.urls, self.part, self.size, self.digest, self.timeout_s = urls, part, size, digest, timeout_s
        self.headers, self.on_bytes, self.check_cancel = headers, on_bytes, check_cancel
        self.hasher = _HashThread(digest.hasher(size))
        self.have = 0

    def run(self) -> str:
        """Fetch the rest of the file; returns the hex digest of the whole content."""
        try:
            return self._run()
        finally:
            self.hasher.close()

    def _run(self) -> str:
        from huggingface_hub.utils import get_session

        self._adopt_partial()
        errors: list[str] = []
        for url in self.urls:
            for attempt in range(RETRIES):
                if self.have == self.size:
                    return self.hasher.hexdigest()
                self.check_cancel()
                try:
                    self._get_range(get_session(), url)
                except WarmdError:
                    raise                 # cancelled
                except _Refused as exc:
                    errors.append(str(exc))
                    break                 # this source will not serve it: try the next mirror
                except Exception as exc:  # noqa: BLE001 - network errors of every kind: resume and retry
                    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise WarmdError(Code.INSUFFICIENT_DISK, f"the disk filled up at {self.have} of {self.size}"
                                         f" bytes of {self.part.name}; the part is kept: free some space and pull "
                                         "again to resume") from None
                    errors.append(f"{url}: {type(exc).__name__}: {exc}")
                    log.info("transfer of %s interrupted at %d/%d bytes (%s); resuming", self.part.name,
                             self.have, self.size, exc)
                    time.sleep(min(2.0, 0.2 * 2**attempt))
            if self.have == self.size:
                return self.hasher.hexdigest()
        raise WarmdError(Code.UNAVAILABLE, f"could not fetch {self.part.name}: {errors[-1] if errors else 'no source'}; "
                         f"{OFFLINE_HINT}")

    def _adopt_partial(self) -> None:
        """Hash what an earlier attempt (or an earlier daemon) left, and count it as done."""
        if not self.part.exists():
            return
        if self.part.stat().st_size > self.size:
            self.part.unlink()
            return
        with open(self.part, "rb") as f:
            while chunk := f.read(8 * CHUNK):
                self.hasher.update(chunk)
                self.have += len(chunk)
        self.on_bytes(self.have)

    def _restart(self) -> None:
        self.on_bytes(-self.have)
        self.hasher.close()
        self.hasher, self.have = _HashThread(self.digest.hasher(self.size)), 0

    def _get_range(self, session, url: str) -> None:  # type: ignore[no-untyped-def]
        # identity: the body is the file itself, so it can be taken raw (no decoder, no re-chunking copy)
        request_headers = {**self.headers, "Accept-Encoding": "identity"}
        if self.have:
            request_headers["Range"] = f"bytes={self.have}-"
        with session.stream("GET", url, headers=request_headers, follow_redirects=True,
                            timeout=self.timeout_s) as response:
            if response.status_code == 416 and self.have == self.size:
                return
            if 400 <= response.status_code < 500:
                raise _Refused(f"{url} answered HTTP {response.status_code}")
            if response.status_code >= 500:
                raise ConnectionError(f"{url} answered HTTP {response.status_code}")
            if self.have and response.status_code != 206:
                self._restart()   # the server ignored Range: start over rather than append a second copy
            # No fsync: a killed daemon loses nothing that reached the page cache, and after a power
            # loss the hash (for a partial file) or the size check (for a blob) catches a torn file.
            with open(self.part, "r+b" if self.part.exists() else "wb") as f:
                f.seek(self.have)
                f.truncate()
                for chunk in response.iter_raw():
                    if self.have + len(chunk) > self.size:
                        raise OSError(f"{url} sent more than the {self.size} bytes it announced")
                    f.write(chunk)
                    self.hasher.update(chunk)
                    self.have += len(chunk)
                    self.on_bytes(len(chunk))
                    self.check_cancel()
        if self.have != self.size:
            raise ConnectionError(f"connection closed at {self.have} of {self.size} bytes")


class _HashThread:
    """Hashes on a thread of its own (hashlib releases the GIL), overlapping the network and the disk."""

    def __init__(self, hasher) -> None:  # type: ignore[no-untyped-def]
        self._hasher = hasher
        self._queue: queue.Queue = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._work, name="hash", daemon=True)
        self._thread.start()

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self.close()
        return self._hasher.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _work(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hasher.update(chunk)


class _Refused(Exception):
    """A 4xx answer: retrying the same source will not help."""


class Progress:
    """Counts bytes from any thread and publishes throttled progress events for one job: the total in
    `progress`, the file under way and its own bytes in the message."""

    def __init__(self, job: Job, total: int) -> None:
        self.job, self.total, self.done = job, total, 0
        self.file, self.file_size, self.file_done = "", 0, 0
        self._lock = threading.Lock()
        self._last = 0.0

    def start_file(self, name: str, size: int) -> None:
        """A new file is under way: say so at once (file boundaries are worth an event)."""
        with self._lock:
            self.file, self.file_size, self.file_done = name, size, 0
            self._last = time.monotonic()
        if name:
            self.publish()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            self.file_done += n
            now = time.monotonic()
            due = now - self._last >= PROGRESS_EVERY_S
            if due:
                self._last = now
        if due:
            self.publish()

    def publish(self) -> None:
        with self._lock:
            message = (f"{self.file} {format_size(self.file_done)}/{format_size(self.file_size)}"
                       if self.file else "")
            done = self.done
        self.job.progress("download", done, self.total, unit="bytes", message=message)


def ensure_disk(folder: Path, needed: int) -> None:
    """Fail before the first byte when the disk cannot hold what is still to come."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise WarmdError(Code.INSUFFICIENT_DISK, f"{format_size(needed)} still to download but only "
                         f"{format_size(free)} free in {folder}; free some space (warm rm) and retry")


def content_length(urls: list[str]) -> int:
    from huggingface_hub.utils import get_session

    errors = []
    for url in urls:
        try:
            response = get_session().head(url, follow_redirects=True, timeout=30.0)
            if response.status_code < 400 and response.headers.get("content-length"):
                return int(response.headers["content-length"])
            errors.append(f"{url}: HTTP {response.status_code}")
        except Exception as exc:  # noqa: BLE001 - try the next mirror
            errors.append(f"{url}: {exc}")
    raise WarmdError(Code.UNAVAILABLE, f"cannot reach any source: {'; '.join(errors)}; {OFFLINE_HINT}")
