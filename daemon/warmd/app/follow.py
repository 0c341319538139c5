"""Following what the daemon does: one long operation (a load, a download) as its caller sees it, and the
stream of every event (`Watch`).

Rules held here:
- an `Operation` yields its job's events as they come, then ends with its outcome: the job's own final event
  (`model.loaded`, `download.finished`), synthesized when the job published it before the caller followed
  or when there was nothing to do ("already resident", "already on disk"); a failed job raises its error;
- a caller that leaves early (closes the operation, or its connection goes) stops following without
  waiting: a load goes on for the others, a download nobody follows any more is cancelled (Store.pull);
- a watch stream starts with `watch.started` once the subscription exists, and ends with `unavailable` when
  it fell too far behind (events.py) rather than silently missing events.
"""
from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterator

from warmd.errors import Code, WarmdError
from warmd.events import Subscription
from warmd.jobs import Job
from warmd.v1 import warmd_pb2 as pb

POLL_S = 0.1        # how often a follower looks whether its caller is still there


def _always() -> bool:
    return True


class Operation:
    """A long operation one caller follows. Use it as a context manager; iterate `events()`.

    Args:
        model: the model it is for.
        final_kind: the event that says it succeeded.
        job: its job (None when there was nothing to do).
        future: resolves to its outcome (raises the job's error).
        follower: where its events arrive (get(timeout), wake(), close()), None when there is no job.
        exits: what leaving it undoes (leaving a download), closed with the operation.
        done_message: the final event's message when there was nothing to do.
        on_error: called with the error before a failed outcome is raised (undoing what the caller set up).
    """

    def __init__(self, model: str, final_kind: str, job: Job | None, future: Future, follower: Any = None,
                 exits: contextlib.ExitStack | None = None, done_message: str = "",
                 on_error: Callable[[WarmdError], None] | None = None) -> None:
        self.model, self.final_kind, self.job, self.future = model, final_kind, job, future
        self._follower, self._exits = follower, exits or contextlib.ExitStack()
        self._done_message, self._on_error = done_message, on_error

    @classmethod
    def done(cls, model: str, final_kind: str, message: str) -> "Operation":
        """An operation with nothing to do (the model is resident, its files are on disk)."""
        future: Future = Future()
        future.set_result(None)
        return cls(model, final_kind, None, future, done_message=message)

    def __enter__(self) -> "Operation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._follower is not None:
            self._follower.close()
        self._exits.close()

    def events(self, active: Callable[[], bool] = _always) -> Iterator[pb.Event]:
        """The job's events until it is over, then its final event.

        Args:
            active: whether the caller is still there; once false, following stops (the job goes on).
        Raises:
            WarmdError: the job's error when it failed.
        """
        sent_final = False
        if self._follower is not None:
            self.future.add_done_callback(lambda _: self._follower.wake())   # no poll interval once it is over
            while active():
                done = self.future.done()
                while (event := self._follower.get(timeout=0 if done else POLL_S)) is not None:
                    sent_final |= event.kind == self.final_kind and event.job_id == self.job.id  # type: ignore[union-attr]
                    yield event
                if done:
                    break
            if not self.future.done():   # the caller left; the job goes on for the other waiters
                return
        self.result()
        if not sent_final:
            yield pb.Event(time=time.time(), kind=self.final_kind, model=self.model,
                           job_id=self.job.id if self.job is not None else "", message=self._done_message)

    def result(self) -> Any:
        """Wait for the outcome (without following events).

        Raises:
            WarmdError: the job's error when it failed.
        """
        try:
            return self.future.result()
        except WarmdError as err:
            if self._on_error is not None:
                self._on_error(err)
            raise


class EventStream:
    """Every event matching a filter, from the moment the stream exists (`App.watch`)."""

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    def __iter__(self) -> Iterator[pb.Event]:
        return self.events()

    def events(self, active: Callable[[], bool] = _always) -> Iterator[pb.Event]:
        """`watch.started` first, then the events, until closed or the caller is gone.

        Raises:
            WarmdError: `unavailable` when the stream fell too far behind and was closed.
        """
        try:
            yield pb.Event(time=time.time(), kind="watch.started")
            while active() and not self._sub.closed:
                event = self._sub.get(timeout=0.5)
                if event is not None:
                    yield event
            if self._sub.overflowed:
                raise WarmdError(Code.UNAVAILABLE, "this watch stream fell behind and was closed; reconnect")
        finally:
            self._sub.close()

    def close(self) -> None:
        self._sub.close()
