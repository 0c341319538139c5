"""The daemon's side of a runner: `Runner` (one process and its channel) and `RunnerProvider` (a Provider
whose model lives in one).

Rules:
- `RunnerProvider.load()` starts the runner and loads the model there; `unload()` kills it (SIGKILL, then
  waits for it), so its memory, host and GPU, is given back whatever the adapter does.
- A runner that dies (a segfault, `os._exit`, the OOM killer) fails the request under way with
  `provider_failed` naming its exit status and its last output lines; `gone()` says so from then on, and
  the scheduler retires the model, so the next request loads it again in a new runner.
- Cancel and deadlines reach the runner: the request's CallContext is watched while it runs; the runner is
  told to cancel, and one that does not answer within CANCEL_GRACE_S is killed.
- Nothing the runner sends is trusted: replies are JSON checked field by field (channel.py), error codes
  outside PASSED_CODES become `provider_failed`, and a malformed message kills the runner.
- A runner runs one request at a time (the arenas hold one request's tensors); concurrent requests of the
  same model wait their turn, still cancellable.
"""
from __future__ import annotations

import collections
import functools
import inspect
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar, Mapping

from warmd.errors import Code, WarmdError
from warmd.providers import CallContext, InferRequest, InferResult, Provider
from warmd.providers.base import safetensors_bytes
from warmd.runner.channel import Arena, ChannelError, receive, send, spec_to_json
from warmd.spec import ModelSpec

log = logging.getLogger(__name__)
POLL_S = 0.05
CANCEL_GRACE_S = 2.0      # after a cancel or a deadline: how long the adapter has to stop by itself
OUTPUT_LINES = 20         # the runner's last output lines kept for error messages
# What a runner's error reply may keep as its code; anything else is provider_failed.
PASSED_CODES = frozenset({Code.INVALID_ARGUMENT, Code.INSUFFICIENT_MEMORY, Code.PROVIDER_FAILED, Code.CANCELLED,
                          Code.DEADLINE_EXCEEDED, Code.UNSUPPORTED_PROVIDER, Code.WEIGHTS_MISSING,
                          Code.DEVICE_UNAVAILABLE, Code.SPEC_INVALID})
# Exception types rebuilt as themselves, so the inference boundary classifies them as it does in-process.
_BUILTIN_ERRORS = {e.__name__: e for e in (MemoryError, RuntimeError, TypeError, ValueError, IndexError,
                                           ImportError, ModuleNotFoundError, FileNotFoundError, OSError)}


class Runner:
    """One runner process.

    Args:
        label: what it runs, for logs and messages (the model's name).
        target: the provider it imports (see child.py).
        cwd: its working folder (a plugin's checkout), default the daemon's.
    """

    def __init__(self, label: str, target: Mapping[str, Any], cwd: Path | None = None) -> None:
        self.label = label
        self._killed = False
        self.inbox, self.outbox = Arena.create(f"warmd-{label}-in"), Arena.create(f"warmd-{label}-out")
        # Two channels: requests and their answers; cancels, read by a thread of the runner's own while
        # its main thread runs a request (so a request costs the runner one wake-up, not two).
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (child.fileno(), theirs.fileno(), self.inbox.fd, self.outbox.fd)
        flags = ["-P"] if sys.version_info >= (3, 11) else []     # never import from the working folder
        command = [sys.executable, *flags, "-m", "warmd.runner.child", *map(str, fds), _json(target)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARMD_")}
        try:
            self.proc = subprocess.Popen(command, pass_fds=fds, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"},
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except BaseException:
            self.inbox.close()
            self.outbox.close()
            parent.close()
            control.close()
            raise
        finally:
            child.close()
            theirs.close()
        self._conn, self._control = Connection(parent.detach()), Connection(control.detach())
        self._sequence = 0
        self._output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        threading.Thread(target=self._read_output, name=f"runner-{label}", daemon=True).start()
        log.info("runner for %s started (pid %d)", label, self.proc.pid)

    # ---- calls ---------------------------------------------------------------------------------
    def call(self, message: dict[str, Any], what: str, context: CallContext | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
        """Send one request and wait for its answer, forwarding progress and text to `context`.

        Args:
            what: the request in words ("the load"), for messages.
            context: the caller's cancellation, deadline and sink.
            timeout_s: kill the runner when it has not answered after this long.
        Raises:
            WarmdError: the runner's error (code kept when in PASSED_CODES); `provider_failed` when it died
                or broke the channel; `cancelled` / `deadline_exceeded`.
            Exception: a built-in exception type the adapter raised (so the inference boundary classifies it).
        """
        self._sequence += 1
        try:
            send(self._conn, {**message, "id": self._sequence})
        except OSError:
            raise self._died(what) from None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        stop_asked: float | None = None
        while True:
            if self._ready():
                reply = self._receive(what)
                if "event" in reply:
                    _forward(context, reply)
                    continue
                if "error" in reply:
                    raise rebuilt(reply["error"])
                return reply
            now = time.monotonic()
            if context is not None and stop_asked is None and (context.cancelled.is_set() or context.past_deadline()):
                self._cancel(self._sequence)
                stop_asked = now
            if stop_asked is not None and now - stop_asked > CANCEL_GRACE_S:
                self.kill()
                log.warning("runner for %s did not stop within %.0fs of a cancel; killed", self.label, CANCEL_GRACE_S)
                context.check()          # type: ignore[union-attr] - raises cancelled or deadline_exceeded
            if deadline is not None and now > deadline:
                self.kill()
                raise WarmdError(Code.PROVIDER_FAILED, f"{self.label}: no answer to {what} within {timeout_s:.0f} s; "
                                 "its runner was stopped")

    def _ready(self) -> bool:
        try:
            return self._conn.poll(POLL_S)
        except (OSError, EOFError):
            return True          # the receive says what happened

    def _receive(self, what: str) -> dict[str, Any]:
        try:
            return receive(self._conn)
        except (EOFError, OSError):
            raise self._died(what) from None
        except ChannelError as err:
            self.kill()
            raise WarmdError(Code.PROVIDER_FAILED, f"{self.label}: its runner broke the channel during {what} "
                             f"({err.message}); it was stopped") from None

    def _cancel(self, sequence: int) -> None:
        try:
            send(self._control, {"cancel": sequence})
        except OSError:
            pass                 # it is dying; the next receive says so

    def _died(self, what: str) -> WarmdError:
        try:
            status = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            status = self.proc.returncode
        return WarmdError(Code.PROVIDER_FAILED, f"{self.label}: its runner process exited with status "
                          f"{describe_status(status)} during {what}; the next request starts a new one"
                          + self._tail())

    # ---- state ---------------------------------------------------------------------------------
    def exit_error(self) -> WarmdError | None:
        """Why this runner can no longer serve (it exited), or None while it runs."""
        status = self.proc.poll()
        if status is None:
            # poll() says "running" while another thread waits for the process (Popen's wait lock): one
            # this daemon killed is gone already, whether or not its waiter has been scheduled since.
            if not self._killed:
                return None
            status = -signal.SIGKILL
        return WarmdError(Code.PROVIDER_FAILED, f"{self.label}: its runner process exited with status "
                          f"{describe_status(status)}" + self._tail())

    def output(self) -> str:
        """The runner's last lines of output (stdout and stderr)."""
        return "\n".join(self._output)

    def _tail(self) -> str:
        return f"; its last output:\n{self.output()}" if self._output else ""

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._output.append(line)
            log.info("[%s] %s", self.label, line)

    # ---- stopping ------------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the runner and wait for it: its memory is the kernel's again."""
        if self.proc.poll() is None:
            self._killed = True
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)     # its session: anything it started goes too
            except ProcessLookupError:
                pass
        self.proc.wait()

    def stop(self) -> None:
        """Kill the runner and free the daemon's end of the channel (once; again is a no-op)."""
        self.kill()
        if self._conn.closed:
            return
        self._conn.close()
        self._control.close()
        self.inbox.close()
        self.outbox.close()
        log.info("runner for %s stopped", self.label)


def describe_status(status: int) -> str:
    """`-11 (SIGSEGV)` for a signal, `3` for an exit code."""
    if status < 0:
        try:
            return f"{status} ({signal.Signals(-status).name})"
        except ValueError:
            return str(status)
    return str(status)


def rebuilt(error: Any) -> Exception:
    """The exception a runner reported, as the daemon raises it: a WarmdError with its code when that code
    may pass, a built-in exception type as itself, any other type as an Exception subclass of that name."""
    if not isinstance(error, dict):
        return WarmdError(Code.PROVIDER_FAILED, "the runner sent a malformed error")
    message, kind = str(error.get("message", ""))[:4000], str(error.get("type", "Exception"))
    code = error.get("code")
    exc: Exception
    if code is not None:
        passed = next((c for c in PASSED_CODES if c.value == code), Code.PROVIDER_FAILED)
        exc = WarmdError(passed, message)
    elif kind in _BUILTIN_ERRORS:
        exc = _BUILTIN_ERRORS[kind](message)
    else:
        exc = _named(kind if kind.isidentifier() else "Exception")(message)
    exc.runner_traceback = str(error.get("traceback", ""))[:8000]  # type: ignore[attr-defined]
    return exc


@functools.lru_cache(maxsize=256)
def _named(kind: str) -> type[Exception]:
    return Exception if kind == "Exception" else type(kind, (Exception,), {"__module__": "runner"})


def _forward(context: CallContext | None, event: dict[str, Any]) -> None:
    if context is None:
        return
    if event["event"] == "progress":
        context.progress(int(event.get("done", 0)), int(event.get("total", 0)), str(event.get("unit", "steps")))
    elif event["event"] == "text":
        context.emit(str(event.get("text", "")))


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


class RunnerProvider(Provider):
    """A provider whose model is loaded in a runner process of its own.

    Subclasses set `name`, `options_schema`, `batchable`, `target` (what the runner imports) and `cwd`.
    """

    in_process = False
    target: ClassVar[dict[str, Any]] = {}
    cwd: ClassVar[Path | None] = None

    def __init__(self, spec: ModelSpec, files: Path, device: str) -> None:
        super().__init__(spec, files, device)
        self._runner: Runner | None = None
        self._turn = threading.Lock()

    @classmethod
    def estimate(cls, spec: ModelSpec, files: Path) -> int:
        """The safetensors weights among the files (a plugin's own estimate would be its code: not run here)."""
        weights = [files] if files.is_file() else sorted(files.rglob("*.safetensors"))
        return safetensors_bytes([w for w in weights if w.suffix == ".safetensors"], spec.precision)

    def load(self) -> int:
        runner = Runner(self.spec.name, self.target, self.cwd)
        try:
            reply = runner.call({"op": "load", "spec": spec_to_json(self.spec), "files": str(self.files),
                                 "device": self.device}, "the load")
        except BaseException:
            runner.stop()
            raise
        self._runner = runner
        measured = reply.get("bytes")
        return measured if isinstance(measured, int) and measured >= 0 else 0

    def infer(self, request: InferRequest) -> InferResult:
        runner = self._runner
        if runner is None:
            raise WarmdError(Code.PROVIDER_FAILED, f"{self.spec.name} is not loaded")
        context = request.context
        while not self._turn.acquire(timeout=POLL_S):
            context.check()
        try:
            remaining = None if context.deadline is None else max(0.0, context.deadline - time.monotonic())
            message = {"op": "infer", "tensors": runner.inbox.put(request.tensors), "text": list(request.text),
                       "parameters": request.parameters, "deadline_s": remaining}
            reply = runner.call(message, "the request", context)
            return InferResult(tensors=runner.outbox.take(reply.get("tensors", [])), json=reply.get("json"))
        finally:
            self._turn.release()

    def unload(self) -> None:
        if self._runner is not None:
            self._runner.stop()
            self._runner = None

    def gone(self) -> WarmdError | None:
        return self._runner.exit_error() if self._runner is not None else None


def provider_class(spec: ModelSpec, cls: type[Provider]) -> type[Provider]:
    """The class that runs `spec`: its provider's own, or one backed by a runner when the spec asks for
    `isolation: process` (a provider that always runs in a runner is already such a class)."""
    if spec.isolation != "process" or issubclass(cls, RunnerProvider):
        return cls
    return _isolated(cls)


@functools.lru_cache(maxsize=None)
def _isolated(cls: type[Provider]) -> type[Provider]:
    """A runner-backed twin of an in-process provider class: the runner imports the same class (a built-in
    by name, a folder plugin from its file); estimates and option checks stay the original's."""
    from warmd.providers import PROVIDERS

    if PROVIDERS.get(cls.name) is cls:
        target: dict[str, Any] = {"builtin": cls.name}
    else:
        adapter = Path(inspect.getfile(cls))
        target = {"adapter": str(adapter), "class": cls.__name__, "paths": [str(adapter.parent)]}
    return type(f"Isolated{cls.__name__}", (RunnerProvider,), {
        "name": cls.name, "options_schema": cls.options_schema, "batchable": cls.batchable, "tasks": cls.tasks,
        "target": target,
        "estimate": classmethod(lambda _, spec, files: cls.estimate(spec, files)),
        "supports": classmethod(lambda _, spec, device: cls.supports(spec, device)),
        "option_files": classmethod(lambda _, spec: cls.option_files(spec))})


def runner_class(name: str, batchable: bool, target: dict[str, Any], cwd: Path) -> type[RunnerProvider]:
    """The provider class of a plugin installed from git. Its code is never imported by the daemon: what the
    daemon knows of it (name, batching) is what its gate reported, and its options are checked by its own
    rules in the runner at load (the daemon only asks for a mapping)."""
    return type(f"Runner_{name.replace('-', '_')}", (RunnerProvider,), {
        "name": name, "options_schema": {"type": "object"}, "batchable": batchable, "target": target, "cwd": cwd})
