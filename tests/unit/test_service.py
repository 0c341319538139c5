"""`warm service`: the files it writes for each platform are valid and round-trip into a temp home."""
from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from warm import service


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "AppData"))
    return tmp_path


def test_linux_unit_round_trip_and_systemd_accepts_it(home: Path, tmp_path: Path) -> None:
    path, said = service.install(home, "linux", enable=False)
    assert path == home / ".config" / "systemd" / "user" / "warmd.service" and said == "written (not enabled)"
    unit = path.read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert Path(exec_start.split("=", 1)[1].split()[0]).is_absolute() and exec_start.endswith(" serve")
    assert "Type=notify" in unit and "Restart=on-failure" in unit
    assert service.status(home, "linux")["installed"] is True
    if shutil.which("systemd-analyze"):
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        out = subprocess.run(["systemd-analyze", "verify", "--user", str(path)], capture_output=True, text=True,
                             env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
        assert out.returncode == 0, out.stderr
    service.uninstall(home, "linux", enable=False)
    assert not path.exists() and service.status(home, "linux")["installed"] is False


def test_macos_launch_agent_parses(home: Path) -> None:
    path, _ = service.install(home, "darwin", enable=False)
    assert path.parent == home / "Library" / "LaunchAgents"
    agent = plistlib.loads(path.read_bytes())
    assert agent["Label"] == "dev.warmd.warmd" and agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    assert Path(agent["ProgramArguments"][0]).is_absolute() and agent["ProgramArguments"][1:] == ["serve"]


def test_windows_startup_launcher(home: Path) -> None:
    path, _ = service.install(home, "win32", enable=False)
    assert path.name == "warmd.cmd" and "Startup" in path.parts
    assert " serve" in path.read_text() and service.warmd_executable() in path.read_text()


def test_cli_writes_and_reports(home: Path) -> None:
    env = {**os.environ}
    run = lambda *a: subprocess.run([sys.executable, "-m", "warm.cli", "service", *a, "--no-enable", "--json"],  # noqa: E731
                                    capture_output=True, text=True, env=env)
    installed = json.loads(run("install").stdout)
    assert Path(installed["file"]).is_file()
    status = json.loads(subprocess.run([sys.executable, "-m", "warm.cli", "service", "status", "--json"],
                                       capture_output=True, text=True, env=env).stdout)
    assert status["installed"] is True and status["log_file"].endswith("warmd.log")
    assert json.loads(run("uninstall").stdout)["file"] == installed["file"]
    assert not Path(installed["file"]).exists()
