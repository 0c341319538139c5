"""What warm-tray shows, as plain data: built from daemon snapshots and watch events, no display needed.

`TrayState` holds the last snapshot (models, roles, profiles, downloads under way) and folds events into it;
`status()` says what the icon shows and `menu()` what the menu holds, as `Item`s whose `Action`s the app
(tray/app.py) carries out. Keeping this free of pystray lets the tests drive it from scripted events.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from warmd.units import format_size
from warmd.v1 import warmd_pb2 as pb

_RESIDENT = (pb.LOADING, pb.READY)


@dataclass(frozen=True)
class Action:
    """What a menu item does. verbs: load unload pin unpin pull cancel choose profile open_logs pause add_url
    (ask for a plugin's repository URL, then install it) quit."""

    verb: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Item:
    label: str
    action: Action | None = None
    checked: bool | None = None        # None: a plain item; True/False: a check (or radio) item
    radio: bool = False
    enabled: bool = True
    submenu: tuple["Item", ...] = ()
    separator: bool = False


SEPARATOR = Item("", enabled=False, separator=True)


@dataclass(frozen=True)
class Status:
    """The icon: `kind` picks the picture, `progress` (0..1) draws a ring, `title` is the tooltip."""

    kind: str                          # unreachable | busy | error | ready | idle
    title: str
    progress: float | None = None


@dataclass
class Download:
    job_id: str
    model: str
    done: int = 0
    total: int = 0


@dataclass
class Install:
    """A plugin being added from a URL (or updated): the gate's step as it goes."""

    job_id: str
    plugin: str
    step: str = ""
    message: str = ""


@dataclass(frozen=True)
class Change:
    """What an event asks of the app: a fresh snapshot, and/or a desktop notification (title, body)."""

    refresh: bool = False
    notify: tuple[str, str] | None = None


@dataclass
class TrayState:
    connected: bool = False
    retry_in: float = 0.0                                    # seconds to the next reconnect, when not connected
    models: dict[str, pb.Model] = field(default_factory=dict)          # by name, in catalog order
    roles: list[pb.RoleChoice] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    active_profile: str = ""
    downloads: dict[str, Download] = field(default_factory=dict)       # by job id
    installs: dict[str, Install] = field(default_factory=dict)         # plugins being added, by job id
    can_add_url: bool = False                                          # the app has a dialog to ask for one
    loads: dict[str, float] = field(default_factory=dict)              # model -> fraction of its load job
    errors: dict[str, str] = field(default_factory=dict)               # model (or "" for the tray) -> message
    log_file: str = ""

    # ---- input ---------------------------------------------------------------------------------
    def snapshot(self, listing: pb.ListModelsResponse, profiles: pb.ListProfilesResponse,
                 status: pb.StatusResponse) -> None:
        """Replace what the daemon owns with a fresh read (after connecting, or when events say so)."""
        self.connected, self.retry_in = True, 0.0
        self.models = {m.name: m for m in listing.models}
        self.roles, self.profiles, self.active_profile = list(profiles.roles), list(profiles.profiles), profiles.active
        self.downloads = {j.id: Download(j.id, j.model, j.progress.done, j.progress.total)
                          for j in status.jobs if j.kind == "download"}
        self.loads = {name: frac for name, frac in self.loads.items()
                      if name in self.models and self.models[name].state == pb.LOADING}
        self.errors = {name: why for name, why in self.errors.items() if not name or name in self.models}
        for m in listing.models:
            if m.state == pb.FAILED and m.error:
                self.errors.setdefault(m.name, f"{m.error} [{m.error_code}]")
        self.log_file = status.log_file

    def disconnected(self, retry_in: float) -> None:
        self.connected, self.retry_in = False, retry_in
        self.downloads.clear()
        self.loads.clear()
        self.installs.clear()

    def apply(self, event: pb.Event) -> Change:
        """Fold one watch event in; returns whether a snapshot is due and what to notify."""
        kind, name = event.kind, event.model
        if event.plugin:
            return self._plugin(event)
        if kind == "job.progress":
            return self._progress(event)
        if kind == "download.started":
            self.downloads[event.job_id] = Download(event.job_id, name)
            self.errors.pop(name, None)
            return Change(refresh=True)
        if kind == "download.finished":
            self.downloads.pop(event.job_id, None)
            return Change(True, ("Download finished", f"{name} is downloaded and verified"))
        if kind == "download.failed":
            self.downloads.pop(event.job_id, None)
            if event.error_code == "cancelled":
                return Change(True, ("Download cancelled", f"{name}: the partial files are kept for next time"))
            self.errors[name] = f"download failed: {event.message} [{event.error_code}]"
            return Change(True, ("Download failed", f"{name}: {event.message} [{event.error_code}]"))
        if kind == "model.failed":
            self.loads.pop(name, None)
            self.errors[name] = f"{event.message} [{event.error_code}]"
            return Change(True, ("Load failed", f"{name}: {event.message} [{event.error_code}]"))
        if kind == "model.loading":
            self.loads[name] = 0.0
            self.errors.pop(name, None)
        elif kind in ("model.loaded", "model.unloaded"):
            self.loads.pop(name, None)
        return Change(refresh=kind.startswith(("model.", "catalog.")))

    def _plugin(self, event: pb.Event) -> Change:
        """A plugin's install or update: its gate's progress and result, as notifications."""
        kind, plugin = event.kind, event.plugin
        if kind == "job.progress":
            install = self.installs.setdefault(event.job_id, Install(event.job_id, plugin))
            install.plugin, install.step, install.message = plugin, event.progress.phase, event.message
            if event.progress.phase == "clone":
                return Change(notify=("Adding a model", f"{plugin}: {event.message}"))
            if event.progress.phase == "import":
                return Change(notify=("Testing the adapter", f"{plugin}: import, load and run its example in a "
                                                             "separate process"))
            return Change()
        self.installs.pop(event.job_id, None)
        if kind in ("plugin.installed", "plugin.updated"):
            return Change(True, ("Model added" if kind == "plugin.installed" else "Plugin updated", event.message))
        if kind == "plugin.failed":
            self.errors[""] = f"adding {plugin} failed [{event.error_code}]"
            return Change(True, ("Adding a model failed", f"{event.message[:600]} [{event.error_code}]"))
        return Change(refresh=True)

    def _progress(self, event: pb.Event) -> Change:
        p = event.progress
        if p.unit == "bytes":
            download = self.downloads.setdefault(event.job_id, Download(event.job_id, event.model))
            download.done, download.total = p.done, p.total
        elif event.model in self.loads and p.total:
            self.loads[event.model] = p.done / p.total
        return Change()

    def failed(self, model: str, message: str) -> None:
        """An action of the tray's own failed (model "" when it concerns no model)."""
        self.errors[model] = message

    # ---- output --------------------------------------------------------------------------------
    def resident(self) -> list[str]:
        return [name for name, m in self.models.items() if m.state in _RESIDENT]

    def status(self) -> Status:
        if not self.connected:
            return Status("unreachable", f"warmd is not reachable; retrying in {self.retry_in:.0f} s")
        if self.downloads or self.loads or self.installs:
            done = sum(d.done for d in self.downloads.values())
            total = sum(d.total for d in self.downloads.values())
            parts = [f"downloading {d.model} {_percent(d.done, d.total)}" for d in self.downloads.values()]
            parts += [f"loading {name}" for name in self.loads]
            parts += [f"adding {i.plugin} ({i.step}: {i.message})" for i in self.installs.values()]
            fractions = [done / total] if total else []
            fractions += list(self.loads.values())
            return Status("busy", "warmd: " + ", ".join(parts),
                          sum(fractions) / len(fractions) if fractions else None)
        if self.errors:
            return Status("error", "warmd: " + "; ".join(f"{k}: {v}" if k else v for k, v in self.errors.items()))
        ready = [n for n, m in self.models.items() if m.state == pb.READY]
        if ready:
            return Status("ready", f"warmd: {', '.join(ready)} ready")
        return Status("idle", "warmd: no model loaded")

    def menu(self) -> list[Item]:
        head = Item(self.status().title, enabled=False)
        tail = [SEPARATOR, Item("Open logs", Action("open_logs")), Item("Quit tray", Action("quit"))]
        if not self.connected:
            return [head, *tail]
        items = [head, SEPARATOR, *self._choices(), SEPARATOR,
                 Item("Models", submenu=tuple(self._model_menu(m) for m in self.models.values()) or
                      (Item("No models in the specs folder", enabled=False),)),
                 Item("Downloads", submenu=self._downloads_menu())]
        if self.profiles:
            items.append(Item(f"Profile: {self.active_profile}", submenu=tuple(
                Item(p, Action("profile", (p,)), checked=p == self.active_profile, radio=True)
                for p in self.profiles)))
        items.append(Item("Pause (unload everything)", Action("pause"), enabled=bool(self.resident())))
        if self.can_add_url:
            items += [SEPARATOR, Item("Add model from URL…", Action("add_url"))]
        return [*items, *tail]

    def _choices(self) -> list[Item]:
        """Roles as radio groups (picking one makes it play the role); models in no role as check items
        (picking one loads it, or unloads it when it is loaded)."""
        items: list[Item] = []
        in_roles: set[str] = set()
        for choice in self.roles:
            items.append(Item(choice.role, enabled=False))
            for name in choice.candidates:
                in_roles.add(name)
                model = self.models.get(name)
                items.append(Item(self._label(name), Action("choose", (choice.role, name)),
                                  checked=name == choice.model, radio=True, enabled=model is not None))
        others = [m for name, m in self.models.items() if name not in in_roles]
        if others and items:
            items.append(Item("Other models", enabled=False))
        for m in others:
            resident = m.state in _RESIDENT
            items.append(Item(self._label(m.name), Action("unload" if resident else "load", (m.name,)),
                              checked=resident))
        return items or [Item("No models in the specs folder", enabled=False)]

    def _label(self, name: str) -> str:
        model = self.models.get(name)
        if model is None:
            return f"{name} (not in the catalog)"
        download = next((d for d in self.downloads.values() if d.model == name), None)
        if download is not None:
            what = f"downloading {_percent(download.done, download.total)}"
        elif name in self.loads:
            what = f"loading {self.loads[name]:.0%}"
        elif model.state == pb.READY:
            what = "ready" + (", pinned" if model.pin else "")
        elif model.state == pb.FAILED:
            what = "failed"
        elif self.downloadable(model):
            what = "not downloaded" + (f", {format_size(model.files.bytes_total)}" if model.files.bytes_total else "")
        else:
            what = pb.ModelState.Name(model.state).lower()
        return f"{name} ({what})"

    def _model_menu(self, m: pb.Model) -> Item:
        resident = m.state in _RESIDENT
        entries = [Item("Load", Action("load", (m.name,)), enabled=not resident),
                   Item("Unload", Action("unload", (m.name,)), enabled=resident),
                   Item("Pin", Action("unpin" if m.pin else "pin", (m.name,)), checked=m.pin)]
        downloading = [d for d in self.downloads.values() if d.model == m.name]
        if downloading:
            entries.append(Item("Cancel download", Action("cancel", (downloading[0].job_id,))))
        elif self.downloadable(m):
            entries.append(Item(self._download_label(m), Action("pull", (m.name,))))
        return Item(self._label(m.name), submenu=tuple(entries))

    def _downloads_menu(self) -> tuple[Item, ...]:
        running = [Item(f"{d.model} {_percent(d.done, d.total)}" + (
                        f" of {format_size(d.total)}" if d.total else ""),
                        submenu=(Item("Cancel", Action("cancel", (d.job_id,))),))
                   for d in self.downloads.values()]
        busy = {d.model for d in self.downloads.values()}
        offers = [Item(self._download_label(m), Action("pull", (m.name,)))
                  for m in self.models.values() if self.downloadable(m) and m.name not in busy]
        if not running:
            running = [Item("No downloads under way", enabled=False)]
        return tuple(running + ([SEPARATOR, *offers] if offers else []))

    @staticmethod
    def downloadable(m: pb.Model) -> bool:
        """Whether the menu offers to download it: the daemon says its files can be fetched, and they are not
        all on disk."""
        return m.downloadable and m.files.state in ("missing", "partial")

    @staticmethod
    def _download_label(m: pb.Model) -> str:
        size = format_size(m.files.bytes_total) if m.files.bytes_total else "size unknown"
        return f"Download {m.name} ({size})"


def _percent(done: int, total: int) -> str:
    return f"{done / total:.0%}" if total else format_size(done)


def outline(items: list[Item] | tuple[Item, ...]) -> str:
    """The menu on one line, as the tray logs it whenever it changes: what a test waits for before it
    navigates the real menu (labels, check marks, disabled items in parentheses, submenus in braces)."""
    parts = []
    for i in items:
        if i.separator:
            parts.append("-")
            continue
        mark = "" if i.checked is None else "[x] " if i.checked else "[ ] "
        label = mark + (i.label if i.enabled else f"({i.label})")
        parts.append(label + (" {" + outline(i.submenu) + "}" if i.submenu else ""))
    return " | ".join(parts)


def selectable(items: list[Item]) -> list[Item]:
    """The items keyboard navigation visits, in order (enabled, not separators): how the tests find an
    item's position in the real menu."""
    return [i for i in items if i.enabled and not i.separator]
