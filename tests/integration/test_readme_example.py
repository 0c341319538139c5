"""The README's examples run as written. The torch example ("### A torch model, step by step"): its
`file=` blocks are saved into the default specs folder of a fresh home, a daemon serves that folder, and
each `$ ` line of its console block runs through bash from the checkout; what they print must be what the
README shows. The plugin example ("### A plugin from git, step by step"): its blocks are the files of a
repository folder, and its console block commits and installs it from there (only the commit differs)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

HEADING = "### A torch model, step by step"
PLUGIN_HEADING = "### A plugin from git, step by step"


def _section(heading: str = HEADING) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(heading) + len(heading)
    end = text.find("\n### ", start)
    return text[start:end if end != -1 else len(text)]


def _blocks(section: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced block, in order."""
    blocks, lines = [], iter(section.splitlines())
    for line in lines:
        if line.startswith("```") and line.strip() != "```":
            info, body = line[3:].strip(), []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            blocks.append((info, "\n".join(body) + "\n"))
    return blocks


def test_the_torch_example_runs_as_written(start_daemon, short_tmp: Path) -> None:
    blocks = _blocks(_section())
    files = {info.split("file=")[1]: body for info, body in blocks if "file=" in info}
    assert set(files) == {"tiny.py", "make_tiny.py", "tiny.yaml"}
    [console] = [body for info, body in blocks if info == "console"]

    home = short_tmp / "home"
    specs = home / ".config" / "warmd" / "specs"        # the README's default folder, in a fresh home
    specs.mkdir(parents=True)
    for name, body in files.items():
        (specs / name).write_text(body)
    daemon = start_daemon(specs, env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")})

    venv = REPO / ".venv" / "bin"
    assert (venv / "python").exists() and Path(sys.executable).parent == venv, "run the tests with .venv/bin/python"
    commands = [line[2:] for line in console.splitlines() if line.startswith("$ ")]
    shown = [line for line in console.splitlines() if not line.startswith("$ ")]
    printed = []
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=120,
                                env={**daemon.env, "WARMD_SOCKET": str(daemon.socket)})
        assert result.returncode == 0, f"{command}: {result.stderr}"
        printed += result.stdout.splitlines()
    assert printed == shown
    assert (specs / "tiny.safetensors").is_file()


def test_the_plugin_example_installs_from_its_repository(start_daemon, short_tmp: Path) -> None:
    blocks = _blocks(_section(PLUGIN_HEADING))
    files = {info.split("file=")[1]: body for info, body in blocks if "file=" in info}
    assert set(files) == {"adapter.py", "factor.json", "scale.yaml", "warmd-plugin.yaml"}
    [console] = [body for info, body in blocks if info == "console"]
    repo = short_tmp / "scale-plugin"
    repo.mkdir()
    for name, body in files.items():
        (repo / name).write_text(body)
    daemon = start_daemon()

    env = {**daemon.env, "WARMD_SOCKET": str(daemon.socket),
           "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{daemon.env['PATH']}"}
    commands = [line[2:] for line in console.splitlines() if line.startswith("$ ")]
    shown = [line for line in console.splitlines() if not line.startswith("$ ")]
    printed = []
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=short_tmp, capture_output=True, text=True,
                                timeout=120, env=env)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        printed += result.stdout.splitlines()
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert printed == [re.sub(r"commit [0-9a-f]{12}", f"commit {head[:12]}", line) for line in shown]
