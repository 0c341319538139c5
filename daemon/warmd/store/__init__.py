"""Model files on disk: where a spec's source lives locally, checked, and fetched when allowed.

`Store.local(spec)` never touches the network: it finds complete files or raises. What depends on the kind of
source (where its files are, what `warm ls` shows of them, how they download, what `warm rm` deletes) is the
kind's handler (store/sources.py). `Store.ensure(spec)` downloads what is missing (downloadable kinds: hub
and url) unless the daemon is offline (`network_forbidden`) or its download policy is `never`
(`weights_missing`); `Store.pull` is the block a caller follows a download in.

`Store.state(spec, remembered=True)` (what `warm ls` shows of a model's files) is not read from disk on
every call: a local kind's files (path, package, Ollama) are watched by the catalog, whose fingerprint of them
(`spec.content`) is part of the key, so an edit is seen at its watcher event, and specs of one local source
with one fingerprint share one reading (100 specs over one package: one walk); a downloadable kind's (hub,
url) is read again while it downloads, after any download ended, a size was learned, files were removed or verified, and at most
FILES_TTL_S later (other tools write the Hugging Face cache too); a remote's is asked every time.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.jobs import Job, Jobs
from warmd.spec import ModelSpec, Source
from warmd.store import hub
from warmd.store.downloads import Downloads
from warmd.store.sources import FilesState, handler

__all__ = ["FilesState", "Store", "file_sha256"]

_CHUNK = 8 * 1024 * 1024
FILES_TTL_S = 5.0        # a downloadable kind's remembered state is read again after this (the catalog's safety rescan)
CANCEL_POLL_S = 0.1      # how often a load waiting on a download looks at its own cancellation


@dataclass(frozen=True)
class _Known:
    """A model's files' state as read, and what it was read for."""

    source: Source
    content: str              # the catalog's fingerprint of the local inputs
    state: FilesState
    at: float                 # time.monotonic() when read
    changes: tuple[int, int]  # Store._changes() then
    downloadable: bool


class Store:
    """Resolves sources to local paths, verifies digests, and downloads when the policy allows."""

    def __init__(self, data_dir: Path, bus: EventBus, offline: bool = False, policy: str = "auto",
                 timeout_s: float = 30.0, jobs: Jobs | None = None) -> None:
        self.data_dir, self.offline, self.policy = data_dir, offline, policy
        self.jobs = jobs or Jobs(bus)
        self.downloads = Downloads(data_dir, self.jobs, timeout_s)
        self._verified: dict[tuple[str, int, int], str] = {}
        self._states: dict[str, _Known] = {}      # model name -> its files' state as last read
        self._local: dict[Source, _Known] = {}    # a local kind's source -> its files' state as last read
        self._edits = 0          # removals and new verifications: a files state may differ after each
        self._lock = threading.Lock()

    # ---- local ---------------------------------------------------------------------------------
    def local(self, spec: ModelSpec) -> Path:
        """The local file or folder holding the spec's complete model files (no network).

        Raises:
            WarmdError: `weights_missing` when the files are not (all) on disk, `weights_digest_mismatch`
                when a file's sha256 differs from the spec's.
        """
        path = handler(spec.source).local(self, spec)
        if spec.source.sha256:
            self.verify(path, spec.source.sha256)
        return path

    def state(self, spec: ModelSpec, remembered: bool = False) -> FilesState:
        """Missing, partial, complete (present, not checked by warmd) or verified, and bytes on disk.

        Args:
            remembered: as last read unless it may have changed since (see the module's rules), for
                listings; without it, read now (what a decision such as `pull` rests on).
        """
        known = self._states.get(spec.name)
        changes = self._changes()
        if remembered and known is not None and known.changes == changes and known.content == spec.content and \
                (known.source is spec.source or known.source == spec.source) and not (known.downloadable and (
                    time.monotonic() - known.at > FILES_TTL_S or self.downloads.active(spec))):
            return known.state
        kind = handler(spec.source)
        local = not kind.downloadable and not kind.live
        shared = self._local.get(spec.source) if remembered and local else None
        if shared is not None and shared.content == spec.content and shared.changes == changes:
            self._states[spec.name] = shared        # another spec's reading of the same files
            return shared.state
        state = kind.state(self, spec)
        if kind.live:
            return state
        self._states[spec.name] = _Known(spec.source, spec.content, state, time.monotonic(), changes,
                                         kind.downloadable)
        if local:
            self._local[spec.source] = self._states[spec.name]
        return state

    def listing_version(self) -> tuple | None:
        """What the remembered states (`state(remembered=True)`) rest on: while it is equal, they are; None
        while a download runs (its files' state moves with every chunk). A downloadable kind's state is
        read again every FILES_TTL_S, so the version moves with that period too."""
        if self.downloads.running():
            return None
        return self._changes(), int(time.monotonic() // FILES_TTL_S)

    def _changes(self) -> tuple[int, int]:
        """Counts that move whenever what this store knows of files changes: downloads ended, sizes
        learned, removals, verifications."""
        return self.downloads.changes, self._edits

    def probe_size(self, spec: ModelSpec, wait_s: float = 2.0) -> int:
        """The full size of a downloadable spec's files, asking the source when no listing is known yet
        (never offline). 0 when unknown."""
        if not handler(spec.source).downloadable or self.offline or hub.hf_offline():
            return 0
        return self.downloads.probe_size(spec, wait_s)

    # ---- fetching ------------------------------------------------------------------------------
    def ensure(self, spec: ModelSpec, waiter: Job | None = None) -> Path:
        """The local path, downloading first when files are missing and the policy allows it.

        Args:
            waiter: the job waiting for the files (a load): it follows the download's events, and its
                cancellation stops the wait (and the download, when nobody else waits for it).
        """
        try:
            return self.local(spec)
        except WarmdError as err:
            if err.code is not Code.WEIGHTS_MISSING or not handler(spec.source).downloadable:
                raise
        with self.pull(spec, on_demand=True) as (job, future):
            if waiter is not None:
                waiter.wait_on(job)
                while not concurrent.futures.wait([future], timeout=CANCEL_POLL_S).done:
                    waiter.check()
            return future.result()

    @contextlib.contextmanager
    def pull(self, spec: ModelSpec, on_demand: bool = False) -> Iterator[tuple[Job, Future]]:
        """Start (or join) the download of the spec's files, as (its job, a future of the local path), for
        as long as the caller is inside the block: leaving it leaves the transfer, and the last caller to
        leave a transfer still under way cancels it (its partial files are kept).

        Args:
            spec: the model.
            on_demand: the download is a load's or a request's (first use), not an explicit pull: the
                `downloads: never` policy refuses it.
        Raises:
            WarmdError: `network_forbidden` offline; `weights_missing` on demand when the policy is `never`;
                `invalid_argument` for sources that are never downloaded (path, package).
        """
        kind = handler(spec.source)
        if not kind.downloadable:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{kind.describe(spec.source)} is a local source; nothing to "
                             "download")
        if self.offline or hub.hf_offline():
            raise WarmdError(Code.NETWORK_FORBIDDEN, f"the daemon is offline (--offline or HF_HUB_OFFLINE) and "
                             f"{kind.describe(spec.source)} is not (completely) on disk; start it online or copy "
                             "the files in")
        if on_demand and self.policy == "never":
            raise WarmdError(Code.WEIGHTS_MISSING, f"{kind.describe(spec.source)} is not on disk and automatic "
                             f"downloads are off (downloads: never); run `warm pull {spec.name}`")
        job, future = self.downloads.start(spec)
        try:
            yield job, future
        finally:
            self.downloads.leave(job.id)

    def check_removable(self, spec: ModelSpec, others: list[ModelSpec]) -> None:
        """Raise what `remove` would refuse, changing nothing (so a refused `warm rm` does not unload).

        Raises:
            WarmdError: `invalid_argument` for local sources (warmd never deletes your own files) and for
                files another spec uses at the same revision.
        """
        handler(spec.source).check_removable(spec, others)

    def remove(self, spec: ModelSpec, others: list[ModelSpec]) -> tuple[int, list[Path]]:
        """Delete the spec's downloaded files, keeping anything another spec still uses.

        Returns:
            (bytes freed, paths deleted).
        Raises:
            WarmdError: what `check_removable` refuses.
        """
        try:
            return handler(spec.source).remove(self, spec, others)
        finally:
            with self._lock:
                self._edits += 1

    def is_verified(self, path: Path, sha256: str) -> bool:
        """Whether `path` was checked against `sha256` at its current size and mtime (no hashing here)."""
        st = path.stat()
        with self._lock:
            return self._verified.get((str(path), st.st_size, st.st_mtime_ns)) == sha256

    def verify(self, path: Path, sha256: str) -> None:
        """Check a file's sha256; raise `weights_digest_mismatch` (never substitute) when it differs."""
        if not path.is_file():
            raise WarmdError(Code.WEIGHTS_MISSING, f"sha256 is given, so {path} must be a single file")
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._verified.get(key)
        digest = known or file_sha256(path)
        if digest != sha256:
            raise WarmdError(Code.WEIGHTS_DIGEST_MISMATCH,
                             f"{path} has sha256 {digest}, the spec expects {sha256}; "
                             "replace the file or correct the spec's sha256")
        with self._lock:
            if self._verified.get(key) != digest:
                self._verified[key] = digest
                self._edits += 1


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
