"""Shared by the benchmarks: start and stop processes, percentiles, each round's order, a results table."""
from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "tests"))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """Median (min–max) of `values`, each written by `fmt`: one table cell."""
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def rotated(items: list[T], start: int) -> list[T]:
    """`items` from index `start` (mod their number) round to the one before it: round r of a bench starts
    at server r mod n, so no server always runs first or right after the same one (on this VM a round's
    order moved its figures by up to 20 %)."""
    k = start % len(items)
    return items[k:] + items[:k]


def compile_daemon(checkout: Path = REPO) -> None:
    """Byte-compile `checkout`'s daemon/, as pip does when it installs the wheel: this machine sets PYTHONDONTWRITEBYTECODE,
    so a checkout's daemon would compile every module again at every start (~0.25 s here), a cost no
    installed daemon pays."""
    import compileall

    compileall.compile_dir(str(checkout / "daemon"), quiet=1)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="wb") as d:   # short: Unix socket paths are limited
        yield Path(d)


@contextlib.contextmanager
def process(args: list[str], root: Path, log_name: str,
            env_extra: dict[str, str | None] | None = None) -> Iterator[subprocess.Popen]:
    """A child process with isolated per-user folders (plus `env_extra`; None removes a variable),
    always stopped at the end."""
    env = dict(os.environ)
    for name in ("config", "state", "data", "cache", "runtime"):
        (root / name).mkdir(exist_ok=True)
    env.update(XDG_CONFIG_HOME=str(root / "config"), XDG_STATE_HOME=str(root / "state"),
               XDG_DATA_HOME=str(root / "data"), XDG_CACHE_HOME=str(root / "cache"),
               XDG_RUNTIME_DIR=str(root / "runtime"), HF_HUB_OFFLINE="1")
    for key, value in (env_extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    with open(root / log_name, "wb") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.002) -> float:  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; returns the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return time.monotonic()
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(interval)
    raise TimeoutError("not ready in time")


def write_report(name: str, lines: list[str]) -> Path:
    """Print the report and write it to bench/results/<name>.md (the README links those)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {path}")
    return path
