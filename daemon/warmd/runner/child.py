"""The runner's side: `python -m warmd.runner.child REQUESTS_FD CONTROL_FD IN_FD OUT_FD TARGET_JSON`.

Rules:
- TARGET names the provider: `{"builtin": NAME}`, or `{"adapter": FILE, "class": NAME, "paths": [...],
  "site": [...]}` (an adapter file; folders to put first on sys.path, such as the plugin's checkout; site
  folders after them, such as its virtualenv's site-packages). It is imported on the first `describe` or
  `load`.
- Requests come one at a time on the requests channel and run on the main thread: `describe` (the
  provider's name and whether it batches), `validate` (a spec's options, by the provider's own rules),
  `load` (validates too), `infer` (tensors in the `in` arena, outputs into the `out` arena). Cancels
  (`{"cancel": ID}`, every request up to ID) come on the control channel, read by a thread of their own.
  There is no unload: the daemon kills the process, the one way its memory surely comes back.
- Whatever the provider raises is answered as an error with its type, message and the traceback's last
  lines; a crash ends the process, which the daemon sees as the channel closing.
- It ends (os._exit) as soon as a channel closes: the daemon stopped it or died. (Not PR_SET_PDEATHSIG:
  that fires when the daemon's thread that started the runner ends, not the daemon.)
"""
from __future__ import annotations

import json
import os
import site
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from warmd.errors import Code, WarmdError
from warmd.providers import PROVIDERS, CallContext, InferRequest, Provider
from warmd.runner.channel import Arena, receive, send, spec_from_json

TRACEBACK_LINES = 12


class Child:
    def __init__(self, conn: Connection, control: Connection, inbox: Arena, outbox: Arena,
                 target: dict[str, Any]) -> None:
        self.conn, self.control, self.inbox, self.outbox, self.target = conn, control, inbox, outbox, target
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()                 # the running request and the last cancel, together
        self._running: tuple[int, CallContext] | None = None
        self._cancelled = 0                           # the last request id the daemon cancelled
        self._cls: type[Provider] | None = None
        self._provider: Provider | None = None

    def serve(self) -> None:
        """Answer requests until the daemon closes the channel (or dies), then end the process."""
        threading.Thread(target=self._watch_control, name="control", daemon=True).start()
        while True:
            try:
                message = receive(self.conn)
            except EOFError:
                os._exit(0)
            handler = {"describe": self._describe, "validate": self._validate, "load": self._load,
                       "infer": self._infer}.get(message.get("op"), self._unknown)
            try:
                reply = handler(message)
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the daemon
                reply = {"error": _error(exc)}
            self._send(reply)

    def _watch_control(self) -> None:
        """Cancels, read while a request runs; the channel closing ends the process whatever the adapter
        is doing (a hung request included)."""
        while True:
            try:
                message = receive(self.control)
            except EOFError:
                os._exit(0)
            with self._lock:
                self._cancelled = max(self._cancelled, int(message.get("cancel", 0)))
                if self._running is not None and self._running[0] <= self._cancelled:
                    self._running[1].cancel()

    def _send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            send(self.conn, message)

    # ---- requests ------------------------------------------------------------------------------
    def _provider_class(self) -> type[Provider]:
        if self._cls is None:
            self._cls = _import(self.target)
        return self._cls

    def _describe(self, message: dict[str, Any]) -> dict[str, Any]:
        cls = self._provider_class()
        return {"name": cls.name, "batchable": bool(cls.batchable)}

    def _validate(self, message: dict[str, Any]) -> dict[str, Any]:
        """Check a spec's options with the provider's own rules (a plugin's schema is never run by the daemon)."""
        for problem, where in self._provider_class().validate_options(message.get("options", {})):
            raise WarmdError(Code.SPEC_INVALID, f"options{''.join(f'.{w}' for w in where)}: {problem}")
        return {}

    def _load(self, message: dict[str, Any]) -> dict[str, Any]:
        cls = self._provider_class()
        spec = spec_from_json(message["spec"])
        self._validate({"options": spec.options})
        provider = cls(spec, Path(message["files"]), message["device"])
        measured = provider.load()
        self._provider = provider
        return {"bytes": int(measured or 0)}

    def _infer(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._provider is None:
            raise RuntimeError("infer before load")
        remaining, sequence = message.get("deadline_s"), int(message["id"])
        context = CallContext(deadline=None if remaining is None else time.monotonic() + remaining, sink=self._event)
        with self._lock:
            self._running = (sequence, context)
            if sequence <= self._cancelled:          # the cancel came first
                context.cancel()
        try:
            request = InferRequest(tensors=self.inbox.take(message.get("tensors", [])),
                                   text=list(message.get("text", [])), parameters=message.get("parameters", {}),
                                   context=context)
            result = self._provider.infer(request)
        finally:
            with self._lock:
                self._running = None
        value = json.loads(json.dumps(result.json)) if result.json is not None else None
        return {"tensors": self.outbox.put(result.tensors), "json": value}

    def _unknown(self, message: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"unknown request {message.get('op')!r}")

    def _event(self, kind: str, value: Any) -> None:
        if kind == "progress":
            done, total, unit = value
            self._send({"event": "progress", "done": int(done), "total": int(total), "unit": str(unit)})
        elif kind == "text":
            self._send({"event": "text", "text": str(value)})


def _import(target: dict[str, Any]) -> type[Provider]:
    """The provider class TARGET names (see the module's rules)."""
    if "builtin" in target:
        return PROVIDERS[target["builtin"]]
    from warmd.plugins import AdapterError, import_provider

    _put_first(target.get("paths", []), target.get("site", []))
    try:
        return import_provider(Path(target["adapter"]), "warmd_runner_adapter", target.get("class") or "")
    except AdapterError as exc:
        raise exc.__cause__ or ImportError(str(exc)) from None     # the adapter's own error, with its traceback


def _put_first(paths: list[str], site_dirs: list[str]) -> None:
    """The plugin's folders ahead of the daemon's: its checkout, then its virtualenv's site-packages (with
    their .pth files, as its own interpreter would run them), so its own requirements win."""
    before = list(sys.path)
    for folder in site_dirs:
        site.addsitedir(folder)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = [*paths, *added, *before]


def _error(exc: BaseException) -> dict[str, Any]:
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    error = {"type": type(exc).__name__, "message": str(exc)[:4000],
             "traceback": "\n".join(lines[-TRACEBACK_LINES:])}
    if isinstance(exc, WarmdError):
        error.update(code=exc.code.value, message=exc.message[:4000])
    return error


def main(argv: list[str]) -> int:
    requests, control, inbox, outbox = (int(a) for a in argv[1:5])
    child = Child(Connection(requests), Connection(control), Arena(inbox), Arena(outbox), json.loads(argv[5]))
    child.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
