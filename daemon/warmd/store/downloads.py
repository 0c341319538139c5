"""Downloads as jobs: one transfer per source however many callers want it, live progress, cancel.

A download is a job of the daemon's registry (jobs.py): `download.started`, then `job.progress` (phase "download", bytes done/total, the
current file and its own bytes in the message) at most every 0.25 s while bytes flow, then `download.finished` or
`download.failed` (with the error code; `cancelled` for a cancel). A cancelled or interrupted download
keeps its `.part` files, and the next attempt resumes them.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from warmd.errors import Code, WarmdError, at_boundary
from warmd.jobs import Job, Jobs
from warmd.paths import write_atomic
from warmd.spec import ModelSpec, Source
from warmd.store import hub
from warmd.store.fetch import OFFLINE_HINT, Digest, fetch, part_path
from warmd.units import format_size

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.25


class _Progress:
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


@dataclass
class _Transfer:
    job: Job
    future: Future
    waiters: int = 0      # callers waiting for it; when the last one leaves early, it is cancelled


class Downloads:
    """Single-flight transfers keyed by source, with cancel by job id."""

    def __init__(self, data_dir: Path, jobs: Jobs, timeout_s: float = 30.0) -> None:
        self.data_dir, self.jobs, self.timeout_s = data_dir, jobs, timeout_s
        self._active: dict[str, _Transfer] = {}
        self._sizes: dict[str, int] = {}          # source key -> full size, from listings
        self._probes: dict[str, Future] = {}
        self._lock = threading.Lock()

    def start(self, spec: ModelSpec) -> tuple[Job, Future]:
        """Start (or join) the download of `spec`'s files. The future resolves to the local path.

        The caller counts as a waiter until it calls `leave(job.id)`.
        """
        key = _key(spec.source)
        with self._lock:
            running = self._active.get(key)
            if running is not None:
                running.waiters += 1
                return running.job, running.future
            transfer = _Transfer(self.jobs.start("download", spec.name), Future(), waiters=1)
            self._active[key] = transfer
        threading.Thread(target=self._run, args=(spec, key, transfer), name=f"download-{spec.name}",
                         daemon=True).start()
        return transfer.job, transfer.future

    def size(self, spec: ModelSpec) -> int:
        """The full size of the spec's files, from a listing already made (0 when none was)."""
        return self._sizes.get(_key(spec.source), 0)

    def probe_size(self, spec: ModelSpec, wait_s: float) -> int:
        """The full size of the spec's files: known from a listing, else asked of the source (hub listing,
        HTTP HEAD) waiting at most `wait_s`; an answer arriving later is kept for the next call. 0 when unknown."""
        key = _key(spec.source)
        if key in self._sizes:
            return self._sizes[key]
        with self._lock:
            probe = self._probes.get(key)
            if probe is None or (probe.done() and probe.exception() is not None):
                probe = self._probes[key] = Future()
                threading.Thread(target=self._probe, args=(spec, key, probe), name=f"size-{spec.name}",
                                 daemon=True).start()
        try:
            probe.result(timeout=wait_s)
        except Exception:  # noqa: BLE001 - unknown for now: offline hub, slow mirror
            pass
        return self.size(spec)

    def _probe(self, spec: ModelSpec, key: str, probe: Future) -> None:
        src = spec.source
        try:
            if src.kind == "hf":
                size = sum(f.size for f in hub.list_files(src, hub.resolve_commit(src)))
            else:
                size = _content_length([src.ref, *src.mirrors])
            self._sizes[key] = size
            probe.set_result(size)
        except Exception as exc:  # noqa: BLE001 - kept in the future; the next call asks again
            log.info("size of %s unknown: %s", src.describe(), exc)
            probe.set_exception(exc)

    def leave(self, job_id: str) -> None:
        """A waiter is gone; if it was the last and the transfer is still running, cancel it."""
        with self._lock:
            found = [t for t in self._active.values() if t.job.id == job_id]
            for t in found:
                t.waiters -= 1
            idle = [t for t in found if t.waiters <= 0 and not t.future.done()]
        for t in idle:
            log.info("last waiter left download %s of %s; cancelling (partial files kept)", t.job.id, t.job.model)
            t.job.cancel()

    def _run(self, spec: ModelSpec, key: str, transfer: _Transfer) -> None:
        try:
            self._transfer(spec, key, transfer)
        finally:
            self.jobs.finish(transfer.job)

    def _transfer(self, spec: ModelSpec, key: str, transfer: _Transfer) -> None:
        job, started = transfer.job, time.time()
        record = {"started": started, "source": spec.source.describe(), "revision": "", "bytes": 0}
        job.publish("download.started", message=spec.source.describe())
        try:
            if spec.source.kind == "hf":
                path = self._download_hf(spec, job, record)
            else:
                path = self._download_url(spec, job, record)
        except Exception as exc:
            err = at_boundary(exc, Code.UNAVAILABLE, f"download of {spec.source.describe()}", log)
            self._remember(spec.name, record, "cancelled" if err.code is Code.CANCELLED else "failed", err)
            job.publish("download.failed", error_code=err.code.value, message=err.message)
            with self._lock:
                self._active.pop(key, None)
            transfer.future.set_exception(err)
            return
        self._remember(spec.name, record, "ok", None)
        job.publish("download.finished", message=str(path))
        with self._lock:
            self._active.pop(key, None)
        transfer.future.set_result(path)

    # ---- history -------------------------------------------------------------------------------
    def _remember(self, model: str, record: dict, result: str, err: WarmdError | None) -> None:
        """Append to the model's download history (one JSON line per attempt)."""
        record.update(finished=time.time(), result=result, error_code=err.code.value if err else "",
                      message=err.message if err else "")
        path = self.data_dir / "history" / f"{model}.jsonl"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:   # a full disk must not turn a finished download into a failed one
            log.warning("cannot record download history in %s: %s", path, exc)

    def history(self, model: str, limit: int = 20) -> list[dict]:
        try:
            lines = (self.data_dir / "history" / f"{model}.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        records = []
        for line in lines[-limit:]:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue      # a torn last line after a crash
        return records

    # ---- sources ------------------------------------------------------------------------------
    def _download_hf(self, spec: ModelSpec, job: Job, record: dict) -> Path:
        src = spec.source
        job.progress("resolve", message=f"asking the hub for {src.describe()}")
        commit = hub.resolve_commit(src)
        record["revision"] = commit
        files = hub.list_files(src, commit)
        if not files:
            raise WarmdError(Code.WEIGHTS_MISSING, f"{src.describe()} has no files matching the spec's patterns")
        done, partial = hub.bytes_on_disk(src, files)
        total = self._sizes[_key(src)] = sum(f.size for f in files)
        record["bytes"] = total
        ensure_disk(hub.cache_root(), total - done - partial)
        progress = _Progress(job, total)
        progress.add(done)
        headers = hub.auth_headers()
        for f in files:
            if not hub.has_blob(src, f):
                progress.start_file(f.path, f.size)
                fetch([hub.file_url(src, commit, f.path)], hub.blob_path(src, f), f.size, f.digest, headers,
                      progress.add, job.check, self.timeout_s)
            hub.install(src, commit, f)
        hub.record_ref(src, commit)
        self._write_manifest(src, commit, files)
        progress.start_file("", 0)
        progress.publish()
        log.info("downloaded %s (%s, commit %s)", src.describe(), format_size(total), commit)
        return hub.repo_dir(src.ref) / "snapshots" / commit

    def _download_url(self, spec: ModelSpec, job: Job, record: dict) -> Path:
        src = spec.source
        final = url_path(self.data_dir, src)
        urls = [src.ref, *src.mirrors]
        size = record["bytes"] = self._sizes[_key(src)] = _content_length(urls)
        have = part_path(final).stat().st_size if part_path(final).exists() else 0
        ensure_disk(final.parent if final.parent.exists() else self.data_dir, size - have)
        progress = _Progress(job, size)
        progress.start_file(final.name, size)
        fetch(urls, final, size, Digest("sha256", src.sha256), {}, progress.add, job.check,  # type: ignore[arg-type]
              self.timeout_s)
        progress.publish()
        return final

    # ---- what is on disk ------------------------------------------------------------------------
    def manifest_path(self, src: Source, commit: str) -> Path:
        return self.data_dir / "manifests" / src.ref.replace("/", "--") / f"{commit}.json"

    def _write_manifest(self, src: Source, commit: str, files: list[hub.RemoteFile]) -> None:
        """What a verified download held, so completeness can be checked later without the network."""
        path = self.manifest_path(src, commit)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"repo": src.ref, "revision": src.revision, "commit": commit, "finished": time.time(),
                "files": [{"path": f.path, "size": f.size, "digest": f.digest.kind, "etag": f.etag}
                          for f in files]}
        write_atomic(path, json.dumps(body, indent=1))

    def manifest(self, src: Source, commit: str) -> list[hub.RemoteFile] | None:
        try:
            body = json.loads(self.manifest_path(src, commit).read_text())
        except (OSError, ValueError):
            return None
        return [hub.RemoteFile(f["path"], f["size"], Digest(f["digest"], f["etag"])) for f in body["files"]]


def url_path(data_dir: Path, src: Source) -> Path:
    name = src.ref.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "file"
    return data_dir / "url" / str(src.sha256) / name


def ensure_disk(folder: Path, needed: int) -> None:
    """Fail before the first byte when the disk cannot hold what is still to come."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise WarmdError(Code.INSUFFICIENT_DISK, f"{format_size(needed)} still to download but only "
                         f"{format_size(free)} free in {folder}; free some space (warm rm) and retry")


def _content_length(urls: list[str]) -> int:
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


def _key(src: Source) -> str:
    return json.dumps([src.kind, src.ref, src.revision, src.allow_patterns, src.ignore_patterns, src.sha256])

