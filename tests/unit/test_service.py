"""`warm service`: the files it writes for each platform are valid (systemd-analyze, desktop-file-validate,
plistlib) and install -> status -> uninstall round-trips into a temp home."""
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
    monkeypatch.setenv("WARMD_SOCKET", str(tmp_path / "no-daemon.sock"))
    return tmp_path


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: run .ci/setup (it installs the validators)"
    return path


def test_linux_unit_and_autostart_entry_round_trip_and_validate(home: Path, tmp_path: Path) -> None:
    files, said = service.install(home, "linux", enable=False)
    unit, desktop = files
    assert unit == home / ".config" / "systemd" / "user" / "warmd.service" and said == "written (not enabled)"
    assert desktop == home / ".config" / "autostart" / "warm-tray.desktop"
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert Path(exec_start.split("=", 1)[1].split()[0]).is_absolute() and exec_start.endswith(" serve")
    assert "Type=notify" in text and "Restart=on-failure" in text
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    out = subprocess.run([_tool("systemd-analyze"), "verify", "--user", str(unit)], capture_output=True, text=True,
                         env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert out.returncode == 0, out.stderr
    out = subprocess.run([_tool("desktop-file-validate"), str(desktop)], capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
    exec_line = next(line for line in desktop.read_text().splitlines() if line.startswith("Exec="))
    assert exec_line.split("=", 1)[1] == service.executable("warm-tray")

    state = service.status(home, "linux")
    assert state["installed"] is True and state["tray_installed"] is True
    assert state["running"] is False and state["pid"] is None           # no daemon on that socket
    removed, _ = service.uninstall(home, "linux", enable=False)
    assert sorted(removed) == sorted(files) and not unit.exists() and not desktop.exists()
    assert service.status(home, "linux")["installed"] is False


def test_daemon_only_install(home: Path) -> None:
    files, _ = service.install(home, "linux", enable=False, tray=False)
    assert [f.name for f in files] == ["warmd.service"]
    assert service.status(home, "linux")["tray_installed"] is False


def test_macos_launch_agents_parse(home: Path) -> None:
    files, _ = service.install(home, "darwin", enable=False)
    agents = {p.name: plistlib.loads(p.read_bytes()) for p in files}
    assert all(p.parent == home / "Library" / "LaunchAgents" for p in files)
    daemon, tray = agents["dev.warmd.warmd.plist"], agents["dev.warmd.tray.plist"]
    assert daemon["Label"] == "dev.warmd.warmd" and daemon["RunAtLoad"] is True
    assert daemon["KeepAlive"] == {"SuccessfulExit": False}
    assert Path(daemon["ProgramArguments"][0]).is_absolute() and daemon["ProgramArguments"][1:] == ["serve"]
    assert tray["Label"] == "dev.warmd.tray" and tray["LimitLoadToSessionType"] == "Aqua"
    assert tray["ProgramArguments"] == [service.executable("warm-tray")]
    assert tray["StandardErrorPath"].endswith("warm-tray.log")


def test_windows_startup_launchers(home: Path) -> None:
    files, _ = service.install(home, "win32", enable=False)
    assert [f.name for f in files] == ["warmd.cmd", "warm-tray.cmd"] and all("Startup" in f.parts for f in files)
    assert " serve" in files[0].read_text() and service.executable("warmd") in files[0].read_text()
    assert service.executable("warm-tray") in files[1].read_text()


def test_status_sees_a_running_daemon(start_daemon, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = start_daemon()
    monkeypatch.setenv("WARMD_SOCKET", str(daemon.socket))
    state = service.status(home, "linux")
    assert state["running"] is True and state["pid"] == daemon.proc.pid


def test_cli_writes_and_reports(home: Path) -> None:
    env = {**os.environ}
    run = lambda *a: subprocess.run([sys.executable, "-m", "warm.cli", "service", *a, "--no-enable", "--json"],  # noqa: E731
                                    capture_output=True, text=True, env=env)
    installed = json.loads(run("install").stdout)
    assert len(installed["files"]) == 2 and all(Path(f).is_file() for f in installed["files"])
    status = json.loads(subprocess.run([sys.executable, "-m", "warm.cli", "service", "status", "--json"],
                                       capture_output=True, text=True, env=env).stdout)
    assert status["installed"] is True and status["tray_installed"] is True
    assert status["log_file"].endswith("warmd.log") and status["running"] is False
    assert sorted(json.loads(run("uninstall").stdout)["files"]) == sorted(installed["files"])
    assert not any(Path(f).exists() for f in installed["files"])
