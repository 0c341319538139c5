"""A local Ray cluster for cluster-mode tests and benchmarks: everything on 127.0.0.1, a token of its own
(no file in ~/.ray), no usage reports, no dashboard, a temp folder of its own.

    with LocalRay(cpus=2, env=...) as ray_cluster:
        ray_cluster.address      # for --address and `cluster:`
        ray_cluster.variables    # the variables every process that joins it needs
        ray_cluster.env          # the environment it was started with, plus those

The head runs in a holder process of its own session, started by `ray.init` (its Ray processes share the
holder's fate): leaving the `with` closes the holder's stdin and it shuts Ray down; a holder that does
not exit in time is killed with its process group. The test process dying closes that stdin too.
"""
from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOLDER = """
import sys
import ray
info = ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, _temp_dir=sys.argv[2])
print("ADDRESS", info.address_info["gcs_address"], flush=True)
sys.stdin.read()
ray.shutdown()
"""
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def ray_env(token_file: Path) -> dict[str, str]:
    """Variables that keep a Ray process on this machine's loopback, with this cluster's token."""
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",   # node IP 127.0.0.1: nothing listens or connects beyond it
        "RAY_USAGE_STATS_ENABLED": "0",             # no usage report leaves the machine
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        # Routing by knowledge, not by timing, on a shared 2-CPU machine: Ray routes a request to a replica
        # that holds its model once it knows where that is, but when a replica's queue-length probe misses
        # its deadline (0.1 s) or the news of a load takes longer than the matching timeout (1-2 s), it
        # sends the request to the replica with the fewest models instead.
        "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "5",
        "RAY_SERVE_MAX_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "10",
        "RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S": "30",
    }


class LocalRay:
    def __init__(self, cpus: int = 2, env: dict[str, str] | None = None) -> None:
        self.cpus = cpus
        self.dir = Path(tempfile.mkdtemp(prefix="wr"))     # short: Ray's socket paths live under it
        token = self.dir / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.variables = ray_env(token)                   # what a process that joins needs
        self.env = {**(env or os.environ), **self.variables}
        self.address = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LocalRay":
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(self.cpus), str(self.dir / "ray")],
                                     env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.dir / "holder.log", "wb"), start_new_session=True)
        try:
            self.address = self._read_address()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _read_address(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Ray's holder exited with {self.proc.returncode}:\n{self.log()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline().decode()
                if line.startswith("ADDRESS "):
                    return line.split()[1]
        raise TimeoutError(f"Ray did not start within {START_TIMEOUT_S}s:\n{self.log()}")

    def log(self) -> str:
        return (self.dir / "holder.log").read_text(errors="replace")[-5000:]

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.stdin.close()            # type: ignore[union-attr]
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None:
            for pid in _session(proc.pid):        # whatever of Ray is left: the holder's session, by pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _session(sid: int) -> list[int]:
    """The processes of session `sid` (the holder and every process Ray started under it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # field 6 of /proc/PID/stat is the session id; the command (field 2) may hold spaces
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[3]) == sid:
                found.append(int(entry.name))
    return found
