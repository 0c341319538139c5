"""One file over HTTP(S): resumable (Range), verified (sha256 or git blob sha1), atomically installed.

The partial file lives next to its final path as `<name>.part` and survives a killed daemon, so the next
attempt asks for `Range: bytes=<size of part>-` and fetches only what is missing. Nothing reaches the final
path before its digest matches: write aside, verify, `os.replace`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from warmd.errors import Code, WarmdError

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
RETRIES = 4            # per file, for cut connections and stalls; each retry resumes
READ_TIMEOUT_S = 30.0


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
          on_bytes: Callable[[int], None], check_cancel: Callable[[], None]) -> None:
    """Fetch `urls[0]` (then each mirror in turn) into `final`, resuming any partial file.

    Args:
        urls: where the file can be had; tried in order, each with resume and retries.
        size: the exact size the file must have.
        digest: what its content must hash to.
        headers: extra request headers (authorization).
        on_bytes: called with each number of new bytes written (also with the bytes found already on disk).
        check_cancel: raises to stop; the partial file is kept for the next attempt.
    Raises:
        WarmdError: `weights_digest_mismatch` when the content is wrong twice, `unavailable` when every
            source failed, `cancelled` from check_cancel.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):      # a digest mismatch discards the file and starts once more
        _transfer(urls, final, size, headers, on_bytes, check_cancel)
        actual = _hash_file(part_path(final), digest, size)
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


def _transfer(urls: list[str], final: Path, size: int, headers: dict[str, str],
              on_bytes: Callable[[int], None], check_cancel: Callable[[], None]) -> None:
    from huggingface_hub.utils import get_session

    part = part_path(final)
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    on_bytes(have)
    errors: list[str] = []
    for url in urls:
        for attempt in range(RETRIES):
            if have == size:
                return
            check_cancel()
            try:
                have = _get_range(get_session(), url, part, have, size, headers, on_bytes, check_cancel)
            except WarmdError:
                raise                 # cancelled
            except _Refused as exc:
                errors.append(str(exc))
                break                 # this source will not serve it: try the next mirror
            except Exception as exc:  # noqa: BLE001 - network errors of every kind: resume and retry
                have = part.stat().st_size if part.exists() else 0
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
                log.info("transfer of %s interrupted at %d/%d bytes (%s); resuming", final.name, have, size, exc)
                time.sleep(min(2.0, 0.2 * 2**attempt))
        if have == size:
            return
    raise WarmdError(Code.UNAVAILABLE, f"could not fetch {final.name}: {errors[-1] if errors else 'no source'}")


def _get_range(session, url: str, part: Path, have: int, size: int,  # type: ignore[no-untyped-def]
               headers: dict[str, str], on_bytes: Callable[[int], None],
               check_cancel: Callable[[], None]) -> int:
    request_headers = dict(headers)
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with session.stream("GET", url, headers=request_headers, follow_redirects=True,
                        timeout=READ_TIMEOUT_S) as response:
        if response.status_code == 416 and have == size:
            return have
        if 400 <= response.status_code < 500:
            raise _Refused(f"{url} answered HTTP {response.status_code}")
        if response.status_code >= 500:
            raise ConnectionError(f"{url} answered HTTP {response.status_code}")
        if have and response.status_code != 206:
            have = 0          # the server ignored Range: start over rather than append a second copy
        with open(part, "r+b" if have else "wb") as f:
            f.seek(have)
            f.truncate()
            for chunk in response.iter_bytes(CHUNK):
                f.write(chunk)
                have += len(chunk)
                on_bytes(len(chunk))
                if have > size:
                    raise OSError(f"{url} sent more than the {size} bytes it announced")
                check_cancel()
            f.flush()
            os.fsync(f.fileno())
    if have != size:
        raise ConnectionError(f"connection closed at {have} of {size} bytes")
    return have


class _Refused(Exception):
    """A 4xx answer: retrying the same source will not help."""


def _hash_file(path: Path, digest: Digest, size: int) -> str:
    h = digest.hasher(size)
    with open(path, "rb") as f:
        while chunk := f.read(8 * CHUNK):
            h.update(chunk)
    return h.hexdigest()
