"""`warm-tray`: an icon in the system tray to switch models, following the daemon live.

Linux: pystray's GTK backend in an XEmbed tray (trayer, stalonetray, XFCE, MATE, ...) or its AppIndicator
backend where a StatusNotifierWatcher runs (KDE; GNOME with the AppIndicator extension); both need PyGObject
and GTK 3 (`pip install 'warmd[tray]'`). macOS and Windows: pystray's own backends. pystray is imported only
after the checks in `desktop_backend`, because importing it without a display fails with an unhelpful error.

Threads: pystray's loop owns the main thread; `_follow` holds the watch stream (reconnecting with backoff);
`_refresh_loop` re-reads the daemon when events say so; each menu action runs on a thread of its own so the
menu never blocks on a load or a download ("Add model from URL…" asks in a GTK dialog first: dialog.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from warm.client import Client
from warm.tray import dialog
from warm.tray.state import Action, Item, Status, TrayState, outline
from warmd import paths
from warmd.errors import Code, WarmdError
from warmd.v1 import warmd_pb2 as pb

log = logging.getLogger("warm.tray")

BACKOFF_S = (0.5, 10.0)          # the first and the longest wait between reconnects
# A size the daemon could not learn in time (its 2 s probe of the hub ran out on a busy machine or a slow
# network) is asked again this much later, this many times per connection; the daemon keeps late answers.
SIZE_RETRY_S, SIZE_TRIES = 2.0, 5
EXIT_NO_DESKTOP = 2


class NoDesktop(Exception):
    """There is nothing to show an icon on; the message says what is missing and what to do."""


# ---- the desktop -------------------------------------------------------------------------------
def desktop_backend(host_timeout_s: float) -> str:
    """The pystray backend to use here, once a tray host is there to show the icon.

    Args:
        host_timeout_s: how long to wait for a tray host (at login the panel may start after us).
    Returns:
        "gtk" (XEmbed tray) or "appindicator" (StatusNotifierItem) on Linux; "" elsewhere (pystray decides).
    Raises:
        NoDesktop: no display, no GTK 3 through PyGObject, or no tray host within the timeout.
    """
    if not sys.platform.startswith("linux"):
        return ""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise NoDesktop("warm-tray needs a graphical session: neither DISPLAY nor WAYLAND_DISPLAY is set")
    try:
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import GLib, Gtk
    except (ImportError, ValueError) as exc:
        raise NoDesktop(f"warm-tray needs GTK 3 through PyGObject ({exc}): pip install 'warmd[tray]' and install "
                        "your distribution's GTK 3 introspection data (Debian: gir1.2-gtk-3.0)") from None
    GLib.set_prgname("warm-tray")                   # the icon's and the menu's X window names
    if not Gtk.init_check()[0]:
        raise NoDesktop(f"warm-tray cannot open the display {os.environ.get('DISPLAY') or '(Wayland)'}")
    deadline = time.monotonic() + host_timeout_s
    while True:
        if _status_notifier_watcher() and _has_appindicator(gi):
            return "appindicator"
        if _xembed_tray():
            return "gtk"
        if time.monotonic() >= deadline:
            raise NoDesktop(f"no system tray to show the icon in after {host_timeout_s:.0f} s: no XEmbed tray "
                            "(_NET_SYSTEM_TRAY_S0) and no StatusNotifierWatcher on the session bus. On GNOME, "
                            "enable the AppIndicator extension; in a bare X session run a tray such as trayer.")
        time.sleep(0.5)


def _xembed_tray() -> bool:
    if not os.environ.get("DISPLAY"):
        return False
    from Xlib import X, display

    try:
        d = display.Display()
    except Exception:  # noqa: BLE001 - python-xlib raises several kinds for an unusable display
        return False
    try:
        return d.get_selection_owner(d.intern_atom(f"_NET_SYSTEM_TRAY_S{d.get_default_screen()}")) != X.NONE
    finally:
        d.close()


def _status_notifier_watcher() -> bool:
    from gi.repository import Gio, GLib

    try:
        bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        reply = bus.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                              "NameHasOwner", GLib.Variant("(s)", ("org.kde.StatusNotifierWatcher",)),
                              None, Gio.DBusCallFlags.NONE, 1000, None)
        return bool(reply.unpack()[0])
    except GLib.Error:
        return False


def _has_appindicator(gi: Any) -> bool:
    for name in ("AyatanaAppIndicator3", "AppIndicator3"):
        try:
            gi.require_version(name, "0.1")
            return True
        except ValueError:
            continue
    return False


# ---- the tray ----------------------------------------------------------------------------------
class Tray:
    """The icon, its menu and the threads that keep them true to the daemon.

    Args:
        connect: makes a fresh `Client` (one per connection: a new channel skips grpc's own reconnect backoff).
    """

    def __init__(self, connect: Callable[[], Client]) -> None:
        import pystray

        from warm.tray import icons

        self._connect, self._pystray, self._icons = connect, pystray, icons
        self.state = TrayState(can_add_url=dialog.available())
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._dirty = threading.Event()
        self._shown: Status | None = None
        self._shown_menu = ""
        self._notified: dict[str, float] = {}           # model -> when the last notification about it went out
        self._sized: dict[str, int] = {}                # model -> times its size was asked on this connection
        self.icon = pystray.Icon("warm-tray", icons.draw(self.state.status()), self.state.status().title,
                                 pystray.Menu(self._items))

    def run(self) -> None:
        """Show the icon and serve its menu until Quit (blocks the calling thread: pystray's loop)."""
        def setup(icon: Any) -> None:
            icon.visible = True
            for target in (self._follow, self._refresh_loop):
                threading.Thread(target=target, name=f"tray{target.__name__}", daemon=True).start()

        self.icon.run(setup)

    def stop(self) -> None:
        self._stopping.set()
        self._dirty.set()
        self.icon.stop()

    # ---- following the daemon ------------------------------------------------------------------
    def _follow(self) -> None:
        delay = BACKOFF_S[0]
        while not self._stopping.is_set():
            client = self._connect()
            try:
                events = client.watch()              # subscribed before the snapshot: no event falls between
                self._snapshot(client)
                log.info("connected to warmd at %s", client.target)
                self._sized.clear()                      # a restarted daemon has forgotten what it was asked
                self._dirty.set()                        # the refresher then asks for unknown sizes
                delay = BACKOFF_S[0]
                for event in events:
                    with self._lock:
                        change = self.state.apply(event)
                    if change.notify:
                        self._notify(event.model, *change.notify)
                    if change.refresh:
                        self._dirty.set()
                    self._render()
                raise WarmdError(Code.UNAVAILABLE, "the watch stream ended")
            except WarmdError as err:
                if self._stopping.is_set():
                    return
                log.info("daemon unreachable (%s); retrying in %.1f s", err.message, delay)
                with self._lock:
                    self.state.disconnected(delay)
                self._render()
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_S[1])
            finally:
                client.close()

    def _refresh_loop(self) -> None:
        while not self._stopping.is_set():
            self._dirty.wait()
            time.sleep(0.1)                          # one snapshot for a burst of events
            self._dirty.clear()
            if self._stopping.is_set() or not self.state.connected:
                continue
            try:
                with self._connect() as client:
                    self._snapshot(client)
                    self._ask_sizes(client)
            except WarmdError as err:
                log.info("refresh failed: %s", err)

    def _snapshot(self, client: Client) -> None:
        listing, profiles, status = client.list(), client.list_profiles(), client.status()
        with self._lock:
            self.state.snapshot(listing, profiles, status)
        self._render()

    def _ask_sizes(self, client: Client) -> None:
        """Models not downloaded yet show their size: GetModel asks the source (up to 2 s) and the daemon
        remembers the answer, so each model is asked until it answers (a few times per connection), not at
        every refresh."""
        with self._lock:
            unknown = [m.name for m in self.state.models.values() if self.state.downloadable(m)
                       and not m.files.bytes_total and self._sized.get(m.name, 0) < SIZE_TRIES]
        late = False
        for name in unknown:
            self._sized[name] = self._sized.get(name, 0) + 1
            model = client.get(name)
            if model.files.bytes_total:
                with self._lock:
                    if name in self.state.models:
                        self.state.models[name].files.bytes_total = model.files.bytes_total
                self._render()
            else:
                late = True
        if late:           # the daemon may know it in a moment: its probe goes on and keeps the answer
            timer = threading.Timer(SIZE_RETRY_S, self._dirty.set)
            timer.daemon = True
            timer.start()

    # ---- showing -------------------------------------------------------------------------------
    def _render(self) -> None:
        with self._lock:
            status, menu = self.state.status(), outline(self.state.menu())
        if status != self._shown:
            self._shown = status
            self.icon.icon = self._icons.draw(status)
            self.icon.title = status.title[:120]       # some trays cap tooltips
        self.icon.update_menu()
        if menu != self._shown_menu:
            self._shown_menu = menu
            log.info("menu: %s", menu)

    def _items(self) -> list[Any]:
        with self._lock:
            return [self._menu_item(item) for item in self.state.menu()]

    def _menu_item(self, item: Item) -> Any:
        pystray = self._pystray
        if item.separator:
            return pystray.Menu.SEPARATOR
        submenu = pystray.Menu(*(self._menu_item(i) for i in item.submenu)) if item.submenu else None
        action = item.action
        return pystray.MenuItem(item.label, submenu if submenu is not None else
                                (lambda icon, _: self.do(action)) if action else None,
                                checked=None if item.checked is None else (lambda _, c=item.checked: c),
                                radio=item.radio, enabled=item.enabled)

    def _notify(self, model: str, title: str, body: str) -> None:
        self._notified[model] = time.monotonic()
        log.info("notify: %s: %s", title, body)
        try:
            self.icon.notify(body, title)
        except Exception as exc:  # noqa: BLE001 - no notification server is not the tray's failure
            log.info("no desktop notification (%s)", exc)

    # ---- acting --------------------------------------------------------------------------------
    def do(self, action: Action) -> None:
        """Carry out a menu action on a thread of its own; failures are shown, never raised into the loop."""
        if action.verb == "quit":
            self.stop()
            return
        if action.verb == "add_url":
            dialog.ask_url(self._add)
            return
        threading.Thread(target=self._act, args=(action,), name=f"tray-{action.verb}", daemon=True).start()

    def _act(self, action: Action) -> None:
        model = action.args[0] if action.verb in ("load", "unload", "pin", "unpin", "pull") else ""
        started = time.monotonic()
        log.info("action %s %s", action.verb, " ".join(action.args))
        try:
            with self._connect() as client:
                self._run(client, action)
            with self._lock:
                self.state.errors.pop("", None)
        except WarmdError as err:
            if err.code is Code.CANCELLED or self._notified.get(model, 0) >= started:
                return                                   # a cancel, or an event already told the user
            with self._lock:
                self.state.failed(model, f"{action.verb} failed: {err.message} [{err.code.value}]")
            self._notify(model, f"warm-tray: {action.verb} failed", f"{err.message} [{err.code.value}]")
        self._dirty.set()
        self._render()

    def _add(self, url: str) -> None:
        """Install the plugin at `url`. The daemon's events tell how the gate goes and how it ends (see
        TrayState); a refusal before it began (a malformed URL) has no event, so it is told here."""
        log.info("action add_url %s", url)
        began: list[pb.Event] = []
        try:
            with self._connect() as client:
                client.install_plugin(_source(url), on_event=began.append)
        except WarmdError as err:
            if not began:
                self._notify("", "Adding a model failed", f"{err.message} [{err.code.value}]")
        self._dirty.set()

    def _run(self, client: Client, action: Action) -> None:
        verb, args = action.verb, action.args
        if verb == "load":
            client.load(args[0])
        elif verb == "unload":
            client.unload(args[0])
        elif verb in ("pin", "unpin"):
            client.pin(args[0], verb == "pin")
        elif verb == "pull":
            client.pull(args[0])                         # held open: a download nobody waits for is cancelled
        elif verb == "cancel":
            client.cancel(args[0])
        elif verb == "choose":
            client.choose_role(*args)
        elif verb == "profile":
            client.use_profile(args[0])
        elif verb == "pause":
            for name in self.state.resident():
                client.unload(name)
        elif verb == "open_logs":
            open_file(Path(self.state.log_file or paths.default_log_dir() / "warmd.log"))
        else:
            raise WarmdError(Code.INVALID_ARGUMENT, f"unknown tray action {verb!r}")


def _source(url: str) -> str:
    """What the user typed as the daemon takes it: a local folder made absolute, anything else as it is."""
    folder = Path(url).expanduser()
    return str(folder.resolve()) if not url.startswith("git+") and folder.is_dir() else url


def open_file(path: Path) -> None:
    """Open `path` with the desktop's default application.

    Raises:
        WarmdError: `unavailable` when the desktop has no opener or it fails.
    """
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606 - the user's own log file
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None:
        raise WarmdError(Code.UNAVAILABLE, f"no {opener} to open {path}; the log is there")
    if subprocess.run([opener, str(path)], capture_output=True).returncode != 0:
        raise WarmdError(Code.UNAVAILABLE, f"{opener} could not open {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="warm-tray", description="warmd in the system tray")
    parser.add_argument("--socket", default=None, help="the daemon's socket (default: $WARMD_SOCKET or the "
                        "per-user runtime dir)")
    parser.add_argument("--tcp", default=None, help="HOST:PORT instead of the socket (token: $WARMD_TOKEN)")
    parser.add_argument("--host-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for a system tray to appear (default 30)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s warm-tray %(message)s")
    try:
        backend = desktop_backend(args.host_timeout)
    except NoDesktop as exc:
        print(f"warm-tray: {exc}", file=sys.stderr)
        return EXIT_NO_DESKTOP
    if backend:
        os.environ["PYSTRAY_BACKEND"] = backend
    Tray(lambda: Client(args.socket, tcp=args.tcp)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
