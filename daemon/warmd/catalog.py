"""The set of specs in the specs folder, kept current by watching it.

A rescan reads every spec file (re-parsing only files whose bytes changed), then compares the new set
of models with the old by name: added, changed, removed. A file that used to hold a valid spec and now
fails validation keeps its last good spec active (a broken save never takes a working model away) and
shows its error beside it. Editor swap and temp files are not spec files: only `*.yaml`/`*.yml` whose
name does not start with `.` or `#` count.

An override (a V2 load's `config`) replaces some fields of one model's spec, on top of whatever its file
says, until it is cleared, the model's spec goes away, or the daemon stops; every reader of the catalog
sees the spec with it applied.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.providers import Provider
from warmd.spec import ModelSpec, SpecFileError, parse_spec_file

log = logging.getLogger(__name__)
SAFETY_RESCAN_S = 5.0      # also rescans when no file event came (folder deleted and recreated, NFS)
MAX_DEBOUNCE_S = 1.0

# (old, new): (None, spec) added; (spec, spec) changed; (spec, None) removed.
ChangeListener = Callable[[ModelSpec | None, ModelSpec | None], None]


@dataclass
class _FileState:
    digest: str
    spec: ModelSpec | None = None
    error: SpecFileError | None = None


class Catalog:
    """Valid specs by name, rejected files by path, and change notifications."""

    def __init__(self, root: Path, path_roots: list[Path], providers: Mapping[str, type[Provider]],
                 bus: EventBus, debounce_s: float = 0.25) -> None:
        self.root, self.path_roots, self.providers, self.bus = root, path_roots, providers, bus
        self.debounce_s = debounce_s
        self._files: dict[Path, _FileState] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._rejected: dict[Path, SpecFileError] = {}
        self._overrides: dict[str, dict[str, Any]] = {}    # model name -> ModelSpec fields over its file
        self._listeners: list[ChangeListener] = []
        self._lock = threading.Lock()          # guards the maps above
        self._scan_lock = threading.Lock()     # one rescan at a time
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._observer: Observer | None = None
        self._thread: threading.Thread | None = None
        self.folder_error = ""

    # ---- reading -------------------------------------------------------------------------------
    def get(self, name: str) -> ModelSpec | None:
        with self._lock:
            return self._specs.get(name)

    def specs(self) -> list[ModelSpec]:
        with self._lock:
            return sorted(self._specs.values(), key=lambda s: s.name)

    def rejected(self) -> list[SpecFileError]:
        with self._lock:
            return sorted(self._rejected.values(), key=lambda e: str(e.file))

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def overrides(self, name: str) -> dict[str, Any]:
        """The fields overriding model `name`'s spec file (empty: none)."""
        with self._lock:
            return dict(self._overrides.get(name, {}))

    def override(self, name: str, fields: Mapping[str, Any]) -> None:
        """Replace `fields` (ModelSpec field names) of model `name`'s spec; empty `fields` clears the override.
        Listeners hear of the change like of an edited file (a changed signature means a reload)."""
        with self._lock:
            if self._overrides.get(name, {}) == dict(fields):
                return
            if fields:
                self._overrides[name] = dict(fields)
            else:
                self._overrides.pop(name, None)
        self.rescan()

    # ---- scanning ------------------------------------------------------------------------------
    def rescan(self) -> None:
        """Bring the catalog in line with the folder and notify listeners of every difference."""
        with self._scan_lock:
            files = self._spec_files()
            states = {p: self._file_state(p) for p in files}
            with self._lock:
                old_specs, old_rejected = self._specs, self._rejected
            specs, rejected = self._assemble(states, old_specs)
            with self._lock:
                self._files, self._specs, self._rejected = states, specs, rejected
                self._overrides = {n: f for n, f in self._overrides.items() if n in specs}
            self._announce(old_specs, specs, old_rejected, rejected)

    def revalidate(self) -> None:
        """Parse every file again (the set of providers changed: a plugin came or went), then rescan."""
        with self._lock:
            self._files = {}
        self.rescan()

    def _spec_files(self) -> list[Path]:
        try:
            entries = sorted(self.root.iterdir())
            self.folder_error = ""
        except OSError as exc:
            # An unreadable or missing folder means "no specs", said loudly, not a crash.
            message = f"specs folder {self.root} cannot be read: {exc.strerror}"
            if message != self.folder_error:
                log.error("%s", message)
            self.folder_error = message
            return []
        return [p for p in entries if is_spec_file(p)]

    def _file_state(self, path: Path) -> _FileState:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digest = ""
        with self._lock:
            known = self._files.get(path)
        if known is not None and known.digest == digest and digest:
            return known
        try:
            return _FileState(digest, spec=parse_spec_file(path, self.root, self.path_roots, self.providers))
        except SpecFileError as err:
            return _FileState(digest, error=err)

    def _assemble(self, states: dict[Path, _FileState], old_specs: dict[str, ModelSpec],
                  ) -> tuple[dict[str, ModelSpec], dict[Path, SpecFileError]]:
        specs: dict[str, ModelSpec] = {}
        rejected: dict[Path, SpecFileError] = {}
        last_good = {s.file: s for s in old_specs.values()}
        for path, state in states.items():
            spec = state.spec
            if state.error is not None:
                rejected[path] = state.error
                spec = last_good.get(path)      # keep serving the last good version of this file
            if spec is None:
                continue
            with self._lock:
                fields = self._overrides.get(spec.name)
            if fields:
                spec = dataclasses.replace(spec, **fields)
            if spec.name in specs:
                rejected[path] = SpecFileError(
                    path, f"model name {spec.name!r} is already defined by {specs[spec.name].file.name}; "
                    "names must be unique", field="name")
                continue
            specs[spec.name] = spec
        return specs, rejected

    def _announce(self, old: dict[str, ModelSpec], new: dict[str, ModelSpec],
                  old_rejected: dict[Path, SpecFileError], rejected: dict[Path, SpecFileError]) -> None:
        for path, err in rejected.items():
            if str(old_rejected.get(path)) != str(err):
                log.warning("rejected spec %s", err)
                self.bus.publish("catalog.rejected", file=str(path), message=str(err),
                                 error_code=err.code.value)
        for name in sorted(set(old) | set(new)):
            before, after = old.get(name), new.get(name)
            if before == after:
                continue
            if before is None:
                kind, message = "catalog.added", f"added from {after.file.name}"
            elif after is None:
                kind, message = "catalog.removed", f"{before.file.name} no longer defines it"
            else:
                reload = before.signature != after.signature
                kind, message = "catalog.changed", ("weights or options changed" if reload
                                                    else "metadata changed")
            spec = after or before
            log.info("%s %s: %s", kind, name, message)
            self.bus.publish(kind, model=name, file=str(spec.file), message=message)
            for listener in self._listeners:
                try:
                    listener(before, after)
                except Exception:
                    log.exception("catalog listener failed on %s", name)

    def write_spec(self, name: str, body: dict) -> Path:
        """Write a new spec file `<name>.yaml`, validated before it appears (temp file, then rename).

        Raises:
            WarmdError: `invalid_argument` when the name is taken or the file exists; `spec_invalid`
                when the content does not validate.
        """
        target = self.root / f"{name}.yaml"
        if self.get(name) is not None or target.exists():
            raise WarmdError(Code.INVALID_ARGUMENT, f"a model named {name!r} or the file {target} exists; "
                             "pass another name")
        text = f"# written by `warm add`; edit freely\nname: {name}\n" + yaml.safe_dump(body, sort_keys=False)
        tmp = self.root / f".{name}.yaml.tmp"      # a dotfile: the watcher ignores it until the rename
        tmp.write_text(text, encoding="utf-8")
        try:
            parse_spec_file(tmp, self.root, self.path_roots, self.providers)
        except SpecFileError as err:
            tmp.unlink()
            raise WarmdError(err.code, str(err)) from None
        tmp.replace(target)
        self.rescan()
        return target

    # ---- watching ------------------------------------------------------------------------------
    def start(self) -> None:
        """Scan now, then watch the folder in the background."""
        self.rescan()
        self._ensure_watch()
        self._thread = threading.Thread(target=self._loop, name="catalog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.is_set():
            woke = self._dirty.wait(timeout=SAFETY_RESCAN_S)
            if self._stop.is_set():
                return
            if woke:
                self._settle()
            try:
                self._ensure_watch()
                self.rescan()
            except Exception:
                log.exception("catalog rescan failed; will retry")

    def _settle(self) -> None:
        """Debounce: wait until no file event for `debounce_s` (but at most MAX_DEBOUNCE_S)."""
        deadline = time.monotonic() + MAX_DEBOUNCE_S
        self._dirty.clear()
        while time.monotonic() < deadline and self._dirty.wait(timeout=self.debounce_s):
            self._dirty.clear()

    def _ensure_watch(self) -> None:
        alive = self._observer is not None and self._observer.is_alive() and self._observer.emitters
        if alive or not self.root.is_dir():
            return
        if self._observer is not None:
            self._observer.stop()
        observer = Observer()
        observer.schedule(_Poke(self._dirty), str(self.root), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer


class _Poke(FileSystemEventHandler):
    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("opened", "closed_no_write"):
            self.flag.set()


def is_spec_file(path: Path) -> bool:
    """`*.yaml`/`*.yml`, not hidden, not an editor's lock or backup file."""
    name = path.name
    return path.suffix in (".yaml", ".yml") and not name.startswith((".", "#")) and path.is_file()
