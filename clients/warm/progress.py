"""What a person sees on stderr while a job runs: the one display `warm pull`, `warm load` and `warm infer`
(on a model that is not loaded yet) share.

A download is one line when it starts and one when it is done, with a live bar (bytes, rate, time left) in
between on a terminal (into a pipe or a file, a bar would only add lines); each phase of a load is one line
(`minilm: locating package:...`, `minilm: loading onto cpu (~86.6 MiB)`). stdout is left to the command's
result.
"""
from __future__ import annotations

from types import TracebackType

from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from warm.output import err_console, note
from warmd.units import format_size
from warmd.v1 import warmd_pb2 as pb


class JobProgress:
    """A context manager whose instance is the `on_event` callback of `Client.pull` and `Client.load`.

    Args:
        name: the model, shown in front of each line.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                             TimeRemainingColumn(), console=err_console, transient=True)
        self._task: TaskID | None = None
        self._done = 0

    def __enter__(self) -> "JobProgress":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._task is not None:
            self._bar.stop()

    def __call__(self, event: pb.Event) -> None:
        if event.kind == "download.started":
            note(f"{self.name}: downloading {event.message} (job {event.job_id}; `warm cancel {event.job_id}` "
                 "stops it, the next pull resumes)")
        elif event.kind == "download.finished":
            note(f"{self.name}: downloaded {format_size(self._done)}" if self._done else f"{self.name}: downloaded")
        elif event.kind == "job.progress" and event.progress.unit == "bytes":
            self._done = event.progress.done
            if not err_console.is_terminal:
                return
            if self._task is None:        # started at the first bytes: a load without a download has no bar
                self._bar.start()
                self._task = self._bar.add_task(self.name, total=None)
            self._bar.update(self._task, completed=event.progress.done, total=event.progress.total or None,
                             description=f"{self.name} {event.message}".strip())
        elif event.kind == "job.progress" and event.message:
            note(f"{self.name}: {event.message}")
