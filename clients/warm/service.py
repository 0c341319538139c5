"""`warm service install | uninstall | status`: start warmd at login, for the current user, no root.

Linux: a systemd user unit (Type=notify, Restart=on-failure). macOS: a LaunchAgent (RunAtLoad, KeepAlive on
failure). Windows: a launcher in the Startup folder. The templates are in packaging/ (shipped as
`warm/templates`, a link to it).
The files are written, then the service manager is asked to enable and start them unless `enable=False`.
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


@dataclass(frozen=True)
class Target:
    """Where one platform's service file goes, and from which template."""

    platform: str                 # linux | darwin | win32
    file: Path
    template: str                 # path inside packaging/


def target(home: Path | None = None, platform: str = sys.platform) -> Target:
    home = home or Path.home()
    if platform.startswith("linux"):
        config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        return Target("linux", config / "systemd" / "user" / "warmd.service", "linux/warmd.service")
    if platform == "darwin":
        return Target("darwin", home / "Library" / "LaunchAgents" / "dev.warmd.warmd.plist",
                      "macos/dev.warmd.warmd.plist")
    appdata = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming")
    return Target("win32", appdata / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / "warmd.cmd",
                  "windows/warmd.cmd")


def warmd_executable() -> str:
    """The `warmd` next to this Python (a virtualenv's bin/), else the one on PATH."""
    beside = Path(sys.executable).with_name("warmd.exe" if os.name == "nt" else "warmd")
    return str(beside) if beside.exists() else (shutil.which("warmd") or "warmd")


def render(t: Target) -> str:
    text = (resources.files("warm") / "templates" / t.template).read_text(encoding="utf-8")
    return text.replace("{warmd}", warmd_executable()).replace("{log}", str(paths.default_log_dir() / "launchd.log"))


def install(home: Path | None = None, platform: str = sys.platform, enable: bool = True) -> tuple[Path, str]:
    """Write the service file and (with `enable`) enable and start it. Returns (file, what happened)."""
    t = target(home, platform)
    t.file.parent.mkdir(parents=True, exist_ok=True)
    t.file.write_text(render(t), encoding="utf-8")
    if not enable:
        return t.file, "written (not enabled)"
    return t.file, _manage(t, "enable")


def uninstall(home: Path | None = None, platform: str = sys.platform, enable: bool = True) -> tuple[Path, str]:
    """Stop and disable the service (with `enable`), then remove its file."""
    t = target(home, platform)
    said = _manage(t, "disable") if enable and t.file.exists() else "not managed"
    t.file.unlink(missing_ok=True)
    return t.file, said


def status(home: Path | None = None, platform: str = sys.platform) -> dict[str, object]:
    """Installed (the file), enabled (the service manager's word, when it can be asked), logs."""
    t = target(home, platform)
    enabled: object = None
    if t.platform == "linux" and t.file.exists() and shutil.which("systemctl"):
        out = subprocess.run(["systemctl", "--user", "is-enabled", "warmd.service"], capture_output=True, text=True)
        enabled = out.stdout.strip() == "enabled" if out.returncode in (0, 1) and out.stdout.strip() else None
    return {"platform": t.platform, "file": str(t.file), "installed": t.file.exists(), "enabled": enabled,
            "log_file": str(paths.default_log_dir() / "warmd.log"),
            "journal": "journalctl --user -u warmd" if t.platform == "linux" else ""}


def _manage(t: Target, action: str) -> str:
    if t.platform == "linux":
        commands = [["systemctl", "--user", "daemon-reload"],
                    ["systemctl", "--user", action, "--now", "warmd.service"]]
    elif t.platform == "darwin":
        verb = "load" if action == "enable" else "unload"
        commands = [["launchctl", verb, "-w", str(t.file)]]
    else:
        return "the Startup folder starts it at the next login"
    for command in commands:
        if shutil.which(command[0]) is None:
            return f"{command[0]} not found; {action} it by hand"
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            return f"`{' '.join(command)}` failed: {out.stderr.strip() or out.stdout.strip()}"
    return f"{action}d and {'started' if action == 'enable' else 'stopped'}"
