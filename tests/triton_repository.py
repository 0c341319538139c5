"""Triton's example model repository as warmd specs (tests/from_triton), a daemon serving it, and Triton's
client examples run against it unchanged, in the tritonclient environment (see tests/tritonclient_run.py)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import DaemonProcess
from tritonclient_run import PYTHON
from waiting import wait_until

# Not "triton": tests/ is on sys.path, and torch takes a folder of that name for OpenAI's Triton compiler.
TRITON = Path(__file__).resolve().parent / "from_triton"
EXAMPLES = TRITON / "examples"


def build_repository(root: Path) -> tuple[Path, Path]:
    """Copy the example repository's specs and the provider plugin under `root`; write the empty weights.

    Returns:
        (specs folder, plugins folder).
    """
    from safetensors.torch import save_file

    specs, plugins = root / "specs", root / "plugins"
    shutil.copytree(TRITON / "repository", specs)
    shutil.copytree(TRITON / "plugins", plugins)
    save_file({}, str(specs / "empty.safetensors"))    # the models hold no weights
    return specs, plugins


def start(root: Path, specs: Path, plugins: Path, args: tuple[str, ...] = ()) -> DaemonProcess:
    """A daemon serving `specs`, once every one of them is in the catalog (plugin providers included)."""
    daemon = DaemonProcess(root, specs, list(args), {"plugins_dir": str(plugins)})
    daemon.wait_ready()
    wanted = sorted(p.stem for p in specs.glob("*.yaml"))
    with daemon.client() as c:
        wait_until(lambda: sorted(m.name for m in c.list().models) == wanted, timeout=20)
    return daemon


def run(daemon: DaemonProcess, example: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run one of Triton's examples, unchanged, in the tritonclient environment against `daemon`."""
    return subprocess.run([str(PYTHON), str(EXAMPLES / example), "-u", f"unix:{daemon.socket}", *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
