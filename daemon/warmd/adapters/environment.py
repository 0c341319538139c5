"""A plugin's own virtual environment for its manifest's requirements; the daemon's stays untouched.

Rules:
- One environment per installed commit (`<commit>.venv` beside the checkout), made without pip (fast);
  the daemon's pip installs into it (`pip --python`), so pip reads the user's configuration as it always
  does (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS, proxies, certificates); offline, it gets `--no-index`.
- Requirements are PEP 508 strings checked by the manifest, passed after `--`: never pip options.
- pip runs in a process of its own with a timeout; a failure names the requirement step and pip's last lines.
- The runner puts the environment's site-packages ahead of the daemon's (warmd.runner.child); packages the
  runner itself imports before the adapter (PyYAML, jsonschema, grpcio, protobuf) stay the daemon's.
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

OUTPUT_LINES = 15


class RequirementsFailed(Exception):
    """pip could not install the requirements; `output` is its last lines."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class Environment:
    folder: Path

    @property
    def site_packages(self) -> Path:
        return Path(sysconfig.get_path("purelib", vars={"base": str(self.folder), "platbase": str(self.folder)}))

    @property
    def python(self) -> Path:
        return self.folder / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def create(folder: Path, requirements: tuple[str, ...], offline: bool, timeout_s: float) -> Environment:
    """Make the environment and install `requirements` into it.

    Raises:
        RequirementsFailed: pip is missing, failed, or ran past `timeout_s`.
    """
    import venv     # only an install makes an environment: not on the daemon's path to ready (2 ms)

    venv.EnvBuilder(with_pip=False, symlinks=sys.platform != "win32").create(folder)
    env = Environment(folder)
    command = [sys.executable, "-m", "pip", "--python", str(env.python), "install", "--no-input",
               "--disable-pip-version-check", *(["--no-index"] if offline else []), "--", *requirements]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise RequirementsFailed(f"pip did not finish within {timeout_s:.0f} s", _tail(exc.stdout, exc.stderr)) from None
    if done.returncode != 0:
        reason = "pip is not installed in the daemon's environment" if "No module named pip" in done.stderr \
            else f"pip exited with status {done.returncode}"
        raise RequirementsFailed(f"{reason} installing {', '.join(requirements)}", _tail(done.stdout, done.stderr))
    return env


def _tail(*texts: object) -> str:
    lines = [line for t in texts if t for line in (t.decode(errors="replace") if isinstance(t, bytes)
                                                   else str(t)).splitlines() if line.strip()]
    return "\n".join(lines[-OUTPUT_LINES:])
