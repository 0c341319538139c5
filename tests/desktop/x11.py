"""A real desktop for tray tests: Xvfb on a free display, trayer as the system tray, warm-tray under
dbus-run-session beside a notification recorder, and xdotool to click. Every process is stopped on exit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from waiting import wait_until

HERE = Path(__file__).resolve().parent
TOOLS = ("Xvfb", "trayer", "xdotool", "dbus-run-session")


class Desktop:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._procs: list[subprocess.Popen] = []
        self.env: dict[str, str] = {}

    def __enter__(self) -> "Desktop":
        # Xvfb -displayfd picks a free display; on a machine where other test runs start and kill X servers
        # at the same time, two can race for one display's lock and one loses its socket. So the display
        # counts only once a client (xdotool) has talked to it, and a lost race starts another server.
        for _ in range(3):
            display = self._start_xvfb()
            self.env = {**os.environ, "DISPLAY": f":{display}", "NO_AT_BRIDGE": "1", "GDK_BACKEND": "x11"}
            self.env.pop("WAYLAND_DISPLAY", None)
            try:
                wait_until(self._answers, timeout=10, interval=0.1)
                return self
            except AssertionError:
                self.__exit__()
                self._procs.clear()
        raise AssertionError(f"no X server answered (see {self.folder / 'xvfb.log'})")

    def _start_xvfb(self) -> str:
        read, write = os.pipe()
        # -noreset: the server would otherwise reset whenever its last client leaves (each xdotool call)
        self._start(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp",
                     "-noreset"], "xvfb", pass_fds=(write,))
        os.close(write)
        with os.fdopen(read) as pipe:
            display = pipe.readline().strip()     # Xvfb writes the display number once it accepts clients
        assert display, "Xvfb did not start (see xvfb.log)"
        return display

    def _answers(self) -> bool:
        return subprocess.run(["xdotool", "getdisplaygeometry"], env=self.env, capture_output=True,
                              timeout=20).returncode == 0

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)   # its session: dbus-run-session's bus and child too
            proc.wait()

    def _start(self, args: list[str], log: str, env: dict[str, str] | None = None,
               pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
        out = open(self.folder / f"{log}.log", "ab")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or self.env or None, pass_fds=pass_fds, start_new_session=True)
        self._procs.append(proc)
        return proc

    def start_trayer(self) -> None:
        trayer = ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--height", "32",
                  "--SetDockType", "true", "--transparent", "false", "--tint", "0x303030"]
        proc = self._start(trayer, "trayer")
        deadline = time.monotonic() + 60
        while not self.windows("panel"):
            if time.monotonic() > deadline:
                raise AssertionError("trayer's panel did not appear; trayer.log:\n"
                                     + (self.folder / "trayer.log").read_text(errors="replace"))
            if proc.poll() is not None:           # it gave up early (e.g. the display was not ready): again
                proc = self._start(trayer, "trayer")
            time.sleep(0.05)

    def start_tray(self, socket: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """warm-tray for the daemon at `socket`, in a session bus with notifications recorded."""
        command = ["dbus-run-session", "--", sys.executable, str(HERE / "notifications.py"),
                   str(self.notes_file), "--", sys.executable, "-m", "warm.tray.app", "--socket", str(socket), *args]
        return self._start(command, "tray", env={**self.env, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def notes_file(self) -> Path:
        return self.folder / "notifications.jsonl"

    def notes(self) -> list[dict]:
        try:
            return [json.loads(line) for line in self.notes_file.read_text().splitlines()]
        except FileNotFoundError:
            return []

    def tray_log(self) -> str:
        return (self.folder / "tray.log").read_text(errors="replace")

    # ---- X -------------------------------------------------------------------------------------
    def xdotool(self, *args: str) -> str:
        out = subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=20)
        return out.stdout

    def windows(self, classname: str, visible: bool = True) -> list[str]:
        """Windows by WM_CLASS instance (warm-tray's is its program name; its title is the tooltip)."""
        return self.xdotool("search", *(["--onlyvisible"] if visible else []), "--classname", f"^{classname}$").split()

    def windows_named(self, title: str) -> list[str]:
        """Visible windows whose title is exactly `title` (a dialog)."""
        return self.xdotool("search", "--onlyvisible", "--name", f"^{title}$").split()

    def geometry(self, window: str) -> tuple[int, int, int, int]:
        values = dict(line.split("=") for line in
                      self.xdotool("getwindowgeometry", "--shell", window).split())
        return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])

    def tray_icon(self, timeout: float = 30) -> str:
        """The warm-tray icon's window, once it is embedded in the tray (inside trayer's panel)."""
        found: list[str] = []

        def embedded() -> bool:
            panel = self.geometry(self.windows("panel")[0])      # it grows as icons arrive
            for window in self.windows("warm-tray", visible=False):   # embedded plugs may not count as viewable
                x, y, _, _ = self.geometry(window)
                if panel[0] <= x < panel[0] + panel[2] and panel[1] <= y < panel[1] + panel[3]:
                    found.append(window)
            return bool(found)

        try:
            wait_until(embedded, timeout=timeout)
        except AssertionError:
            seen = {w: self.geometry(w) for w in self.xdotool("search", "--classname", "warm-tray|panel").split()}
            raise AssertionError(f"the tray icon did not appear in the tray (windows: {seen}); its log:\n"
                                 f"{self.tray_log()}") from None
        return found[0]

    def open_menu(self, icon: str) -> str:
        """Right-click the icon; returns the menu's window."""
        before = set(self.windows("warm-tray"))
        self.xdotool("mousemove", "--window", icon, "10", "10", "click", "3")
        wait_until(lambda: set(self.windows("warm-tray")) - before, timeout=30)
        return (set(self.windows("warm-tray")) - before).pop()

    def screenshot(self, path: Path) -> None:
        from PIL import ImageGrab

        path.parent.mkdir(parents=True, exist_ok=True)
        ImageGrab.grab(xdisplay=self.env["DISPLAY"]).save(path)

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.xdotool("key", key)
            time.sleep(0.08)            # GTK menus take keys one event at a time
