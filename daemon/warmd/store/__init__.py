"""Model files on disk: where a spec's source lives locally, checked, and fetched when allowed.

`Store.local(spec)` never touches the network: it finds complete files or raises. An `ollama:` source is
the model blob in Ollama's own store, read in place and checked against the sha256 it is named by. `Store.ensure(spec)`
downloads what is missing (hub and url sources) unless the daemon is offline (`network_forbidden`) or
its download policy is `never` (`weights_missing`).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.jobs import Job, Jobs
from warmd.spec import ModelSpec, Source
from warmd.store import hub, ollama
from warmd.store.downloads import Downloads, url_path
from warmd.store.fetch import part_path
from warmd.store.local import package_path

_CHUNK = 8 * 1024 * 1024
CANCEL_POLL_S = 0.1      # how often a load waiting on a download looks at its own cancellation


@dataclass(frozen=True)
class FilesState:
    """What `warm ls` shows about a model's files."""

    state: str            # missing | partial | complete | verified
    bytes_on_disk: int
    revision: str = ""    # the resolved commit, for hub sources
    bytes_total: int = 0  # the full size when known, else 0


class Store:
    """Resolves sources to local paths, verifies digests, and downloads when the policy allows."""

    def __init__(self, data_dir: Path, bus: EventBus, offline: bool = False, policy: str = "auto",
                 timeout_s: float = 30.0, jobs: Jobs | None = None) -> None:
        self.data_dir, self.offline, self.policy = data_dir, offline, policy
        self.jobs = jobs or Jobs(bus)
        self.downloads = Downloads(data_dir, self.jobs, timeout_s)
        self._verified: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    # ---- local ---------------------------------------------------------------------------------
    def local(self, spec: ModelSpec) -> Path:
        """The local file or folder holding the spec's complete model files (no network).

        Raises:
            WarmdError: `weights_missing` when the files are not (all) on disk, `weights_digest_mismatch`
                when a file's sha256 differs from the spec's.
        """
        src = spec.source
        if src.kind in ("remote", "cluster"):
            return spec.file.parent           # nothing local: the model lives at the endpoint, or on the cluster
        if src.kind == "path":
            path = Path(src.ref)
            if not path.exists():
                raise WarmdError(Code.WEIGHTS_MISSING, f"{path} does not exist (spec {spec.file})")
        elif src.kind == "package":
            path = package_path(src)
        elif src.kind == "ollama":
            found = ollama.model(src)
            self.verify(found.blob, found.sha256)
            return found.blob
        elif src.kind == "hf":
            path = self._hf_local(src)
        else:
            path = url_path(self.data_dir, src)
            if not path.is_file():
                raise WarmdError(Code.WEIGHTS_MISSING, f"{src.ref} has not been downloaded (`warm pull {spec.name}`)")
        if src.sha256:
            self.verify(path, src.sha256)
        return path

    def _hf_local(self, src: Source) -> Path:
        commit = hub.cached_commit(src)
        snapshot = hub.repo_dir(src.ref) / "snapshots" / (commit or "")
        files = self.downloads.manifest(src, commit) if commit else None
        if commit and files is not None:
            if all(hub.has_blob(src, f) for f in files):
                return snapshot
        elif commit and snapshot.is_dir():
            return snapshot       # fetched by another tool (transformers, hf download): trust its snapshot
        raise WarmdError(Code.WEIGHTS_MISSING, f"{src.describe()} is not (completely) in the Hugging Face "
                         f"cache at {hub.cache_root()}; `warm pull` fetches it")

    def state(self, spec: ModelSpec) -> FilesState:
        """Missing, partial, complete (present, not checked by warmd) or verified, and bytes on disk."""
        src = spec.source
        if src.kind == "hf":
            commit = hub.cached_commit(src) or ""
            files = self.downloads.manifest(src, commit) if commit else None
            if files is not None:
                done, partial = hub.bytes_on_disk(src, files)
                total = sum(f.size for f in files)
                return FilesState("verified" if done == total else "partial", done + partial, commit, total)
            snapshot = hub.repo_dir(src.ref) / "snapshots" / commit
            if commit and snapshot.is_dir():
                size = _folder_bytes(snapshot)
                return FilesState("complete", size, commit, size)
            blobs = hub.repo_dir(src.ref) / "blobs"
            partial = sum(p.stat().st_size for p in blobs.glob("*.part")) if blobs.is_dir() else 0
            return FilesState("partial" if partial else "missing", partial, commit, self.downloads.size(spec))
        if src.kind == "ollama":
            try:
                found = ollama.model(src)
            except WarmdError:
                return FilesState("missing", 0)
            size = found.blob.stat().st_size
            return FilesState("verified" if self.is_verified(found.blob, found.sha256) else "complete", size,
                              bytes_total=size)
        if src.kind == "cluster":
            return FilesState("on the cluster", 0)
        if src.kind == "remote":
            from warmd.providers.remote import health

            return FilesState(f"remote {health(spec)}", 0)
        if src.kind == "url":
            final = url_path(self.data_dir, src)
            if final.is_file():
                return FilesState("verified", final.stat().st_size, bytes_total=final.stat().st_size)
            part = part_path(final)
            have = part.stat().st_size if part.exists() else 0
            return FilesState("partial" if have else "missing", have, bytes_total=self.downloads.size(spec))
        try:
            path = self.local(spec)
        except WarmdError:
            return FilesState("missing", 0)
        size = path.stat().st_size if path.is_file() else _folder_bytes(path)
        return FilesState("verified" if src.sha256 else "complete", size, bytes_total=size)

    def probe_size(self, spec: ModelSpec, wait_s: float = 2.0) -> int:
        """The full size of a downloadable spec's files, asking the source when no listing is known yet
        (never offline). 0 when unknown."""
        if spec.source.kind not in ("hf", "url") or self.offline or hub.hf_offline():
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
            if err.code is not Code.WEIGHTS_MISSING or spec.source.kind not in ("hf", "url"):
                raise
        job, future = self.pull(spec, on_demand=True)
        try:
            if waiter is not None:
                waiter.wait_on(job)
                while not concurrent.futures.wait([future], timeout=CANCEL_POLL_S).done:
                    waiter.check()
            return future.result()
        finally:
            self.downloads.leave(job.id)

    def pull(self, spec: ModelSpec, on_demand: bool = False) -> tuple[Job, Future]:
        """Start (or join) the download of the spec's files; call `downloads.leave(job.id)` when done waiting.

        Args:
            spec: the model.
            on_demand: the download is a load's or a request's (first use), not an explicit pull: the
                `downloads: never` policy refuses it.
        Raises:
            WarmdError: `network_forbidden` offline; `weights_missing` on demand when the policy is `never`;
                `invalid_argument` for sources that are never downloaded (path, package).
        """
        src = spec.source
        if src.kind not in ("hf", "url"):
            raise WarmdError(Code.INVALID_ARGUMENT, f"{src.describe()} is a local source; nothing to download")
        if self.offline or hub.hf_offline():
            raise WarmdError(Code.NETWORK_FORBIDDEN, f"the daemon is offline (--offline or HF_HUB_OFFLINE) and "
                             f"{src.describe()} is not (completely) on disk; start it online or copy the files in")
        if on_demand and self.policy == "never":
            raise WarmdError(Code.WEIGHTS_MISSING, f"{src.describe()} is not on disk and automatic downloads "
                             f"are off (downloads: never); run `warm pull {spec.name}`")
        return self.downloads.start(spec)

    def check_removable(self, spec: ModelSpec, others: list[ModelSpec]) -> None:
        """Raise what `remove` would refuse, changing nothing (so a refused `warm rm` does not unload).

        Raises:
            WarmdError: `invalid_argument` for local sources (warmd never deletes your own files) and for
                files another spec uses at the same revision.
        """
        src = spec.source
        if src.kind == "url":
            users = [o.name for o in others if o.source.kind == "url" and o.source.sha256 == src.sha256]
            if users:
                raise WarmdError(Code.INVALID_ARGUMENT, f"{', '.join(users)} use the same file; remove them first")
            return
        if src.kind != "hf":
            raise WarmdError(Code.INVALID_ARGUMENT, f"{src.describe()} is a local source; warmd does not delete it"
                             + (" (`ollama rm` does)" if src.kind == "ollama" else ""))
        commit = hub.cached_commit(src)
        users = [o.name for o in others if o.source.kind == "hf" and o.source.ref == src.ref
                 and hub.cached_commit(o.source) == commit]
        if commit is not None and users:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{', '.join(users)} use the same files "
                             f"({src.ref}@{commit[:12]}); remove them first")

    def remove(self, spec: ModelSpec, others: list[ModelSpec]) -> tuple[int, list[Path]]:
        """Delete the spec's downloaded files, keeping anything another spec still uses.

        Returns:
            (bytes freed, paths deleted).
        Raises:
            WarmdError: what `check_removable` refuses.
        """
        self.check_removable(spec, others)
        src = spec.source
        if src.kind == "url":
            folder = url_path(self.data_dir, src).parent
            files = [p for p in folder.iterdir()] if folder.is_dir() else []
            freed = sum(p.stat().st_size for p in files)
            for p in files:
                p.unlink()
            if folder.is_dir():
                folder.rmdir()
            return freed, files
        commit = hub.cached_commit(src)
        if commit is None:
            return 0, []
        keep = {c for o in others if o.source.kind == "hf" and o.source.ref == src.ref
                and (c := hub.cached_commit(o.source))}
        freed, removed = hub.remove(src, commit, keep)
        self.downloads.manifest_path(src, commit).unlink(missing_ok=True)
        return freed, removed

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
            self._verified[key] = digest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
