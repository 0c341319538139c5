"""`warm service install | uninstall | status`: start warmd (and warm-tray) at login, for the current user,
no root.

Linux: a systemd user unit for the daemon (Type=notify, Restart=on-failure) and an XDG autostart entry for
the tray. macOS: LaunchAgents for both (RunAtLoad, KeepAlive on failure). Windows: launchers in the Startup
folder. The templates are in packaging/ (shipped as `warm/templates`, a link to it). The files are written,
then the service manager is asked to enable and start the daemon unless `enable=False`; the tray starts
with the next graphical login.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from warmd import paths

UNIT = "warmd.service"


@dataclass(frozen=True)
class Entry:
    """One file that starts a program at login, and the template it is written from."""

    program: str                  # warmd | warm-tray
    file: Path
    template: str                 # path inside packaging/


def entries(home: Path | None = None, platform: str = sys.platform) -> tuple[str, list[Entry]]:
    """(platform family, [the daemon's entry, the tray's entry]) for this user."""
    home = home or Path.home()
    if platform.startswith("linux"):
        config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        return "linux", [Entry("warmd", config / "systemd" / "user" / UNIT, f"linux/{UNIT}"),
                         Entry("warm-tray", config / "autostart" / "warm-tray.desktop", "linux/warm-tray.desktop")]
    if platform == "darwin":
        agents = home / "Library" / "LaunchAgents"
        return "darwin", [Entry("warmd", agents / "dev.warmd.warmd.plist", "macos/dev.warmd.warmd.plist"),
                          Entry("warm-tray", agents / "dev.warmd.tray.plist", "macos/dev.warmd.tray.plist")]
    startup = (Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "Microsoft" / "Windows"
               / "Start Menu" / "Programs" / "Startup")
    return "win32", [Entry("warmd", startup / "warmd.cmd", "windows/warmd.cmd"),
                     Entry("warm-tray", startup / "warm-tray.cmd", "windows/warm-tray.cmd")]


def executable(program: str) -> str:
    """`program` next to this Python (a virtualenv's bin/), else the one on PATH."""
    beside = Path(sys.executable).with_name(f"{program}.exe" if os.name == "nt" else program)
    return str(beside) if beside.exists() else (shutil.which(program) or program)


def render(entry: Entry) -> str:
    text = (resources.files("warm") / "templates" / entry.template).read_text(encoding="utf-8")
    logs = paths.default_log_dir()
    return (text.replace("{warmd}", executable("warmd")).replace("{warm_tray}", executable("warm-tray"))
            .replace("{log}", str(logs / "launchd.log")).replace("{tray_log}", str(logs / "warm-tray.log")))


def install(home: Path | None = None, platform: str = sys.platform, enable: bool = True,
            tray: bool = True) -> tuple[list[Path], str]:
    """Write the login entries (the tray's only with `tray`) and, with `enable`, enable and start the daemon.

    Returns:
        The files written, and what the service manager said.
    """
    family, found = entries(home, platform)
    written = []
    for entry in found if tray else found[:1]:
        entry.file.parent.mkdir(parents=True, exist_ok=True)
        entry.file.write_text(render(entry), encoding="utf-8")
        written.append(entry.file)
    return written, _manage(family, found, "enable") if enable else "written (not enabled)"


def uninstall(home: Path | None = None, platform: str = sys.platform,
              enable: bool = True) -> tuple[list[Path], str]:
    """Stop and disable the daemon (with `enable`), then remove every login entry."""
    family, found = entries(home, platform)
    said = _manage(family, found, "disable") if enable and found[0].file.exists() else "not managed"
    removed = [e.file for e in found if e.file.exists()]
    for path in removed:
        path.unlink()
    return removed, said


def status(home: Path | None = None, platform: str = sys.platform) -> dict[str, object]:
    """Installed (the files), enabled (the service manager's word, when it can be asked), running (the
    daemon answers on its socket; the tray has a process), and where the logs are."""
    family, (daemon, tray) = entries(home, platform)
    enabled: object = None
    if family == "linux" and daemon.file.exists() and shutil.which("systemctl"):
        out = subprocess.run(["systemctl", "--user", "is-enabled", UNIT], capture_output=True, text=True)
        enabled = out.stdout.strip() == "enabled" if out.returncode in (0, 1) and out.stdout.strip() else None
    return {"platform": family, "file": str(daemon.file), "installed": daemon.file.exists(), "enabled": enabled,
            "running": _daemon_pid() is not None, "pid": _daemon_pid(),
            "tray_file": str(tray.file), "tray_installed": tray.file.exists(), "tray_running": _tray_running(),
            "log_file": str(paths.default_log_dir() / "warmd.log"),
            "journal": "journalctl --user -u warmd" if family == "linux" else ""}


def _daemon_pid() -> int | None:
    from warm.client import Client
    from warmd.errors import WarmdError

    try:
        with Client(timeout=1.0) as client:
            return client.status().pid
    except WarmdError:
        return None


def _tray_running() -> bool | None:
    """Whether a warm-tray process of this user runs (Linux: from /proc; elsewhere unknown)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            if cmdline.stat().st_uid != os.getuid():
                continue
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"warm-tray") for a in args[:2]) or b"warm.tray.app" in args[:3]:
            return True
    return False


def _manage(family: str, found: list[Entry], action: str) -> str:
    if family == "linux":
        commands = [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", action, "--now", UNIT]]
    elif family == "darwin":
        verb = "load" if action == "enable" else "unload"
        commands = [["launchctl", verb, "-w", str(e.file)] for e in found if e.file.exists()]
    else:
        return "the Startup folder starts them at the next login"
    for command in commands:
        if shutil.which(command[0]) is None:
            return f"{command[0]} not found; {action} it by hand"
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            return f"`{' '.join(command)}` failed: {out.stderr.strip() or out.stdout.strip()}"
    return f"{action}d and {'started' if action == 'enable' else 'stopped'}"
