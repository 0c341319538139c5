"""`warm service install | uninstall | status`: start warmd (and warm-tray) at login, for the current user,
no root.

Linux: a systemd user unit for the daemon (Type=notify, Restart=on-failure) and an XDG autostart entry for
the tray. macOS: LaunchAgents for both (RunAtLoad, KeepAlive on failure). Windows: launchers in the Startup
folder. The templates are in packaging/ (shipped as `warm/templates`, a link to it). The files are written,
then the service manager is asked to enable and start the daemon unless `enable=False`; the tray starts
with the next graphical login.

The daemon started at login serves the specs folder recorded at install (`--specs` in its command line):
the one asked for, else the one the daemon answering now serves, else the default folder. A daemon that
started from the unit serves the models the user already had, not an empty default folder.

When the service manager cannot do what was asked (no systemd user session, no systemctl), install fails
with `unavailable` and a message that says the next step; the files stay written for that step.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from warmd import paths
from warmd.errors import Code, WarmdError

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


def render(entry: Entry, specs: Path) -> str:
    """The entry's file: its template with the programs, the specs folder and the log files filled in."""
    text = (resources.files("warm") / "templates" / entry.template).read_text(encoding="utf-8")
    logs = paths.default_log_dir()
    return (text.replace("{warmd}", executable("warmd")).replace("{warm_tray}", executable("warm-tray"))
            .replace("{specs}", _quote(entry.template, str(specs)))
            .replace("{log}", str(logs / "launchd.log")).replace("{tray_log}", str(logs / "warm-tray.log")))


def _quote(template: str, value: str) -> str:
    """`value` as one argument in the template's language."""
    if template.endswith(".service"):      # systemd: quotes, and % / $ are specifiers / variables
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
        return f'"{escaped}"'
    if template.endswith(".plist"):
        from xml.sax.saxutils import escape

        return escape(value)
    return f'"{value.replace("%", "%%")}"'     # a Windows command file


def specs_folder(specs: Path | None = None) -> Path:
    """The specs folder the daemon started at login will serve: `specs` (which must exist), else the one
    the daemon answering now serves, else the default folder (created).

    Raises:
        WarmdError: `invalid_argument` when `specs` is not a folder.
    """
    if specs is not None:
        folder = Path(os.path.expanduser(specs)).absolute()
        if not folder.is_dir():
            raise WarmdError(Code.INVALID_ARGUMENT, f"--specs {folder} is not a folder; create it or name the "
                             "folder your specs are in")
        return folder
    running = _running_daemon()
    if running is not None and running.specs_dir:
        return Path(running.specs_dir)
    folder = paths.default_specs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def install(home: Path | None = None, platform: str = sys.platform, enable: bool = True,
            tray: bool = True, specs: Path | None = None) -> tuple[list[Path], str]:
    """Write the login entries (the tray's only with `tray`) and, with `enable`, enable and start the daemon.

    Args:
        specs: the specs folder the daemon serves (default: see `specs_folder`).
    Returns:
        The files written, and what was done (the specs folder, what the service manager did).
    Raises:
        WarmdError: `invalid_argument` for a `specs` that is not a folder (nothing written);
            `unavailable` when the service manager could not enable the daemon (the files are written;
            the message says what to do next).
    """
    family, found = entries(home, platform)
    folder = specs_folder(specs)
    written = []
    for entry in found if tray else found[:1]:
        entry.file.parent.mkdir(parents=True, exist_ok=True)
        entry.file.write_text(render(entry, folder), encoding="utf-8")
        written.append(entry.file)
    serves = f"serves {folder}" + ("" if any(folder.glob("*.y*ml")) else
                                   " (no spec files there yet: add NAME.yaml files or `warm add hf://ORG/NAME`)")
    if not enable:
        return written, f"written (not enabled); {serves}"
    failed = _manage(family, found, "enable")
    if failed:
        raise WarmdError(Code.UNAVAILABLE, f"wrote {written[0]}, but {failed}. {_next_step(family, folder)}")
    started = "the Startup folder starts them at the next login" if family == "win32" else "enabled and started"
    return written, f"{started}; {serves}"


def _next_step(family: str, folder: Path) -> str:
    by_hand = f"`{executable('warmd')} serve --specs {folder}`"
    if family == "linux":
        return ("Without a systemd user session (ssh, a container) run `loginctl enable-linger $USER`, log in "
                f"again and rerun `warm service install`; or start the daemon by hand: {by_hand}")
    return f"Start the daemon by hand: {by_hand}"


def uninstall(home: Path | None = None, platform: str = sys.platform,
              enable: bool = True) -> tuple[list[Path], str]:
    """Stop and disable the daemon (with `enable`), then remove every login entry."""
    family, found = entries(home, platform)
    said = "not managed"
    if enable and found[0].file.exists():       # a daemon no service manager runs needs no stopping
        said = _manage(family, found, "disable") or "disabled and stopped"
    removed = [e.file for e in found if e.file.exists()]
    for path in removed:
        path.unlink()
    return removed, said


def status(home: Path | None = None, platform: str = sys.platform) -> dict[str, object]:
    """Installed (the files), enabled (the service manager's word, when it can be asked), running (the
    daemon answers on its socket; the tray has a process), and where the logs are."""
    family, (daemon, tray) = entries(home, platform)
    running = _running_daemon()
    pid = running.pid if running is not None else None
    enabled: object = None
    if family == "linux" and daemon.file.exists() and shutil.which("systemctl"):
        out = subprocess.run(["systemctl", "--user", "is-enabled", UNIT], capture_output=True, text=True)
        enabled = out.stdout.strip() == "enabled" if out.returncode in (0, 1) and out.stdout.strip() else None
    return {"platform": family, "file": str(daemon.file), "installed": daemon.file.exists(), "enabled": enabled,
            "running": pid is not None, "pid": pid,
            "tray_file": str(tray.file), "tray_installed": tray.file.exists(), "tray_running": _tray_running(),
            "log_file": str(paths.default_log_dir() / "warmd.log"),
            "journal": "journalctl --user -u warmd" if family == "linux" else ""}


def _running_daemon() -> Any:
    """The Status of the daemon answering on the default socket now, or None."""
    from warm.client import Client

    try:
        with Client(timeout=1.0) as client:
            return client.status()
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
    """Ask the service manager to enable (or disable) the daemon. Returns "" when done, else what failed."""
    if family == "linux":
        commands = [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", action, "--now", UNIT]]
    elif family == "darwin":
        verb = "load" if action == "enable" else "unload"
        commands = [["launchctl", verb, "-w", str(e.file)] for e in found if e.file.exists()]
    else:
        return ""       # the Startup folder starts them at the next login
    for command in commands:
        if shutil.which(command[0]) is None:
            return f"{command[0]} is not installed"
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            return f"`{' '.join(command)}` failed ({out.stderr.strip() or out.stdout.strip()})"
    return ""
