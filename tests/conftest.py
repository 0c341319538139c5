"""Shared fixtures. Integration tests run the real daemon as a subprocess over its real socket, with
every per-user folder (runtime, config, state, data, HF cache) moved into the test's temp dir."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


class DaemonProcess:
    """A `warmd serve` subprocess, its folders, and helpers to talk to it."""

    def __init__(self, root: Path, specs: Path, extra_args: list[str], config: dict | None,
                 env: dict[str, str] | None = None) -> None:
        self.root, self.specs = root, specs
        self.socket = root / "run" / "warmd.sock"
        self.env = {**isolated_env(root), **(env or {})}
        self.env = {k: v for k, v in self.env.items() if v is not None}
        args = [sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(self.socket),
                *extra_args]
        if config is not None:
            import yaml

            cfg = root / "config.yaml"
            cfg.write_text(yaml.safe_dump(config))
            args += ["--config", str(cfg)]
        self.log_path = root / "daemon.out"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 20.0) -> None:
        from warm import Client, WarmdError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"warmd exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    with Client(self.socket, timeout=2) as c:
                        c.status()
                    return
                except WarmdError:
                    pass
            time.sleep(0.02)
        raise TimeoutError(f"warmd not ready after {timeout}s:\n{self.log()}")

    def client(self, timeout: float | None = 60):  # type: ignore[no-untyped-def]
        from warm import Client

        return Client(self.socket, timeout=timeout)

    def warm_command(self) -> list[str]:
        return [sys.executable, "-m", "warm.cli", "--socket", str(self.socket)]

    def warm(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the `warm` CLI against this daemon."""
        return subprocess.run([*self.warm_command(), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def isolated_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("WARMD_SOCKET", "WARMD_TCP", "WARMD_TOKEN", "WARMD_CONFIG"):
        env.pop(var, None)
    for name in ("config", "state", "data", "cache", "runtime"):
        (root / name).mkdir(exist_ok=True, mode=0o700)
    env.update(XDG_CONFIG_HOME=str(root / "config"), XDG_STATE_HOME=str(root / "state"),
               XDG_DATA_HOME=str(root / "data"), XDG_CACHE_HOME=str(root / "cache"),
               XDG_RUNTIME_DIR=str(root / "runtime"), HF_HOME=str(root / "cache" / "hf"),
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: Unix socket paths are limited to ~107 bytes."""
    with tempfile.TemporaryDirectory(prefix="wd") as d:
        yield Path(d)


@pytest.fixture
def start_daemon(short_tmp: Path) -> Iterator:
    """start_daemon(specs=None, args=(), config=None, ready=True, root=None, env=None) -> DaemonProcess,
    all stopped after the test. `env` adds variables; a value of None removes one."""
    started: list[DaemonProcess] = []

    def start(specs: Path | None = None, args: tuple[str, ...] = (), config: dict | None = None,
              ready: bool = True, root: Path | None = None, env: dict | None = None) -> DaemonProcess:
        root = root or short_tmp
        if specs is None:
            specs = root / "specs"
            specs.mkdir(exist_ok=True)
        daemon = DaemonProcess(root, specs, list(args), config, env)
        started.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def figures(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """figures(**values): record a test's numbers for bench/reliability.py's table. A no-op unless
    WARMD_FIGURES names a file (JSON lines)."""
    target = os.environ.get("WARMD_FIGURES")

    def record(**values: object) -> None:
        if target:
            with open(target, "a") as f:
                f.write(json.dumps({"test": request.node.name, **values}) + "\n")

    return record


@pytest.fixture
def hub() -> Iterator:
    """A hub-compatible server on 127.0.0.1 (tests/hubserver.py), stopped after the test."""
    from hubserver import Hub

    with Hub() as server:
        yield server
