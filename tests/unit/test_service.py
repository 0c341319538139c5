"""`warm service`: the files it writes for each platform are valid (systemd-analyze, desktop-file-validate,
plistlib) and install -> status -> uninstall round-trips into a temp home."""
from __future__ import annotations

import json
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from waiting import succeeds, wait_until
from warm import Client, Code, WarmdError, service


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
    assert unit == home / ".config" / "systemd" / "user" / "warmd.service" and said.startswith("written (not enabled)")
    assert desktop == home / ".config" / "autostart" / "warm-tray.desktop"
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    specs = home / ".config" / "warmd" / "specs"                 # no daemon answers: the default folder
    assert Path(exec_start.split("=", 1)[1].split()[0]).is_absolute()
    assert exec_start.endswith(f' serve --specs "{specs}"') and specs.is_dir()
    assert "no spec files there yet" in said
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
    assert Path(daemon["ProgramArguments"][0]).is_absolute()
    assert daemon["ProgramArguments"][1:] == ["serve", "--specs", str(home / ".config" / "warmd" / "specs")]
    assert tray["Label"] == "dev.warmd.tray" and tray["LimitLoadToSessionType"] == "Aqua"
    assert tray["ProgramArguments"] == [service.executable("warm-tray")]
    assert tray["StandardErrorPath"].endswith("warm-tray.log")


def test_windows_startup_launchers(home: Path) -> None:
    files, _ = service.install(home, "win32", enable=False)
    assert [f.name for f in files] == ["warmd.cmd", "warm-tray.cmd"] and all("Startup" in f.parts for f in files)
    assert f' serve --specs "{home / ".config" / "warmd" / "specs"}"' in files[0].read_text()
    assert service.executable("warmd") in files[0].read_text()
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


# ---- the specs folder the daemon started at login serves ---------------------------------------
def _exec_start(unit: Path) -> str:
    return next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")).split("=", 1)[1]


def test_install_records_the_specs_folder_asked_for_quoted_for_systemd(home: Path, tmp_path: Path) -> None:
    specs = tmp_path / "my specs 100%"
    specs.mkdir()
    (specs / "m.yaml").write_text("provider: torch\n")
    files, said = service.install(home, "linux", enable=False, specs=specs)
    assert _exec_start(files[0]).endswith(f' serve --specs "{tmp_path}/my specs 100%%"')     # % is a specifier
    assert said == f"written (not enabled); serves {specs}"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    out = subprocess.run([_tool("systemd-analyze"), "verify", "--user", str(files[0])], capture_output=True,
                         text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert out.returncode == 0, out.stderr
    agents, _ = service.install(home, "darwin", enable=False, specs=specs)
    assert plistlib.loads(agents[0].read_bytes())["ProgramArguments"][-2:] == ["--specs", str(specs)]


def test_install_refuses_a_specs_folder_that_does_not_exist(home: Path, tmp_path: Path) -> None:
    with pytest.raises(WarmdError) as info:
        service.install(home, "linux", enable=False, specs=tmp_path / "nope")
    assert info.value.code is Code.INVALID_ARGUMENT and "is not a folder" in info.value.message
    assert not (home / ".config" / "systemd").exists()                     # nothing written


def test_install_records_the_folder_of_the_daemon_running_now_and_the_unit_serves_it(
        start_daemon, home: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models import affine_spec, affine_specs

    specs = affine_specs(short_tmp, 1.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    monkeypatch.setenv("WARMD_SOCKET", str(daemon.socket))
    result = subprocess.run([sys.executable, "-m", "warm.cli", "service", "install", "--no-enable", "--no-tray"],
                            capture_output=True, text=True, env=dict(os.environ), timeout=60)
    assert result.returncode == 0 and f"serves {specs}" in result.stdout, result.stderr
    command = shlex.split(_exec_start(home / ".config" / "systemd" / "user" / "warmd.service"))
    assert command[1:] == ["serve", "--specs", str(specs)]
    daemon.terminate()

    # What systemd would start at login, on a socket of its own: it serves the same models.
    socket = short_tmp / "run" / "unit.sock"
    started = subprocess.Popen([*command, "--socket", str(socket)], env=daemon.env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: socket.exists() and succeeds(lambda: Client(socket, timeout=2).status()))
        with Client(socket, timeout=10) as c:
            assert [m.name for m in c.list().models] == ["affine"]
    finally:
        started.terminate()
        started.wait(timeout=30)


def _install_without_a_user_session(home: Path, tmp_path: Path, *extra: str,
                                    path: str | None = None) -> subprocess.CompletedProcess:
    """`warm service install` where no systemd user instance can be reached (as over ssh, in a container)."""
    runtime = tmp_path / "empty-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "warm.cli", "service", "install", *extra], capture_output=True,
                          text=True, env=env, timeout=60)


def test_install_without_a_systemd_user_session_fails_with_the_next_step(home: Path, tmp_path: Path) -> None:
    _tool("systemctl")
    result = _install_without_a_user_session(home, tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    said = result.stderr.splitlines()
    assert len(said) == 1 and said[0].startswith("error [unavailable] wrote "), result.stderr
    assert "`systemctl --user daemon-reload` failed" in said[0] and "loginctl enable-linger $USER" in said[0]
    assert f"serve --specs {home / '.config' / 'warmd' / 'specs'}`" in said[0]           # or start it by hand
    assert (home / ".config" / "systemd" / "user" / "warmd.service").is_file()            # kept for that step
    as_json = _install_without_a_user_session(home, tmp_path, "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["error"]["code"] == "unavailable"


def test_install_without_systemctl_fails_with_the_next_step(home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _install_without_a_user_session(home, tmp_path, path=str(empty))
    assert result.returncode == 1 and "[unavailable]" in result.stderr and "systemctl is not installed" in result.stderr
    assert "serve --specs" in result.stderr and len(result.stderr.splitlines()) == 1
