"""The tray's one dialog: "Add model from URL…", asking for a plugin repository's URL.

GTK 3 (Linux, the backend warm-tray's icon uses there): the dialog is built on GTK's main thread (pystray's
loop runs it), modal to nothing, and answers through a callback on a thread of its own, so the menu never
waits for the install. Elsewhere there is no dialog and the menu leaves the item out.
"""
from __future__ import annotations

import sys
import threading
from typing import Callable

TITLE = "Add model from URL"
HINT = "git+https://github.com/org/repo@v1.0, git+file:///path or /path/to/a/git/repo"


def available() -> bool:
    """Whether this desktop can show the dialog (GTK 3 through PyGObject)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk  # noqa: F401
    except (ImportError, ValueError):
        return False
    return True


def ask_url(answer: Callable[[str], None]) -> None:
    """Show the dialog; `answer(url)` runs on a new thread when the user adds one (not on cancel)."""
    from gi.repository import GLib

    GLib.idle_add(_show, answer)


def _show(answer: Callable[[str], None]) -> bool:
    from gi.repository import Gtk

    dialog = Gtk.Dialog(title=TITLE)
    dialog.add_buttons("Cancel", Gtk.ResponseType.CANCEL, "Add", Gtk.ResponseType.OK)
    dialog.set_default_response(Gtk.ResponseType.OK)
    box = dialog.get_content_area()
    box.set_spacing(6)
    box.set_border_width(10)
    box.add(Gtk.Label(label="A repository with a warmd-plugin.yaml (or an adapter.py): its adapter is tested in a "
                            "separate process before it is installed.", wrap=True, xalign=0, max_width_chars=60))
    entry = Gtk.Entry(placeholder_text=HINT, activates_default=True, width_chars=60)
    box.add(entry)
    dialog.show_all()
    entry.grab_focus()
    response = dialog.run()
    url = entry.get_text().strip()
    dialog.destroy()
    if response == Gtk.ResponseType.OK and url:
        threading.Thread(target=answer, args=(url,), name="tray-add-url", daemon=True).start()
    return False            # run once (GLib.idle_add)
