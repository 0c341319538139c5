"""Downloads as jobs: one transfer per source however many callers want it, live progress, cancel.

The transfer itself is the source kind's (store/sources.py: hf, url). A download is a job of the daemon's
registry (jobs.py): `download.started`, then `job.progress` (phase "download", bytes done/total, the
current file and its own bytes in the message) at most every 0.25 s while bytes flow, then `download.finished` or
`download.failed` (with the error code; `cancelled` for a cancel). A cancelled or interrupted download
keeps its `.part` files, and the next attempt resumes them.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from warmd.errors import Code, WarmdError, at_boundary
from warmd.jobs import Job, Jobs
from warmd.spec import ModelSpec, Source
from warmd.store.sources import handler

log = logging.getLogger(__name__)


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
        self.changes = 0    # transfers that ended (what is on disk may differ) and sizes learned

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

    def know_size(self, spec: ModelSpec, size: int) -> int:
        """Remember the full size of the spec's files (a transfer listed them); returns it."""
        with self._lock:
            if self._sizes.get(_key(spec.source)) != size:
                self._sizes[_key(spec.source)] = size
                self.changes += 1
        return size

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
            probe.set_result(self.know_size(spec, handler(src).size(src)))
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
            path = handler(spec.source).fetch(self, spec, job, record)
        except Exception as exc:
            err = at_boundary(exc, Code.UNAVAILABLE, f"download of {spec.source.describe()}", log)
            self._remember(spec.name, record, "cancelled" if err.code is Code.CANCELLED else "failed", err)
            job.publish("download.failed", error_code=err.code.value, message=err.message)
            self._end(key)
            transfer.future.set_exception(err)
            return
        self._remember(spec.name, record, "ok", None)
        job.publish("download.finished", message=str(path))
        self._end(key)
        transfer.future.set_result(path)

    def _end(self, key: str) -> None:
        with self._lock:
            self._active.pop(key, None)
            self.changes += 1

    def running(self) -> bool:
        """Whether any download runs now."""
        with self._lock:
            return bool(self._active)

    def active(self, spec: ModelSpec) -> bool:
        """Whether the spec's files are being downloaded now."""
        with self._lock:
            return _key(spec.source) in self._active

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


def _key(src: Source) -> str:
    return json.dumps([src.kind, src.ref, src.revision, src.allow_patterns, src.ignore_patterns, src.sha256])

