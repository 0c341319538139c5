"""A desktop-notification server for tests: owns org.freedesktop.Notifications on the session bus, appends
each Notify call to a JSON-lines file, and runs a command beside it (exiting when the command does).

    dbus-run-session -- python tests/desktop/notifications.py OUT.jsonl -- warm-tray --socket ...
"""
from __future__ import annotations

import json
import subprocess
import sys

from gi.repository import Gio, GLib

INTERFACE = """
<node><interface name="org.freedesktop.Notifications">
  <method name="Notify">
    <arg type="s" direction="in"/><arg type="u" direction="in"/><arg type="s" direction="in"/>
    <arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="as" direction="in"/>
    <arg type="a{sv}" direction="in"/><arg type="i" direction="in"/><arg type="u" direction="out"/>
  </method>
  <method name="CloseNotification"><arg type="u" direction="in"/></method>
  <method name="GetCapabilities"><arg type="as" direction="out"/></method>
  <method name="GetServerInformation">
    <arg type="s" direction="out"/><arg type="s" direction="out"/><arg type="s" direction="out"/>
    <arg type="s" direction="out"/>
  </method>
</interface></node>
"""


def main() -> int:
    out, command = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    loop = GLib.MainLoop()
    count = [0]

    def call(connection, sender, path, interface, method, params, invocation) -> None:  # type: ignore[no-untyped-def]
        if method == "Notify":
            app, _, _, title, body = params.unpack()[:5]
            with open(out, "a") as f:
                f.write(json.dumps({"app": app, "title": title, "body": body}) + "\n")
            count[0] += 1
            invocation.return_value(GLib.Variant("(u)", (count[0],)))
        elif method == "GetCapabilities":
            invocation.return_value(GLib.Variant("(as)", (["body"],)))
        elif method == "GetServerInformation":
            invocation.return_value(GLib.Variant("(ssss)", ("tests", "warmd", "1", "1.2")))
        else:
            invocation.return_value(None)

    def acquired(connection, name) -> None:  # type: ignore[no-untyped-def]
        child = subprocess.Popen(command)
        GLib.child_watch_add(GLib.PRIORITY_DEFAULT, child.pid, lambda pid, status: loop.quit())

    def on_bus(connection, name) -> None:  # type: ignore[no-untyped-def]
        info = Gio.DBusNodeInfo.new_for_xml(INTERFACE).interfaces[0]
        connection.register_object("/org/freedesktop/Notifications", info, call)

    Gio.bus_own_name(Gio.BusType.SESSION, "org.freedesktop.Notifications", Gio.BusNameOwnerFlags.NONE,
                     on_bus, acquired, lambda *a: loop.quit())
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
