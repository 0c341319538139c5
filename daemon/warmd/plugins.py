"""Provider plugins: `<plugins_dir>/<name>/adapter.py`, each defining one `Provider` subclass.

Two kinds live in the plugins folder:
- folder plugins, an adapter.py the user put there: trusted code, imported into the daemon as before
  (a spec may still ask for `isolation: process`);
- plugins installed from git (`warm add git+URL`, warmd.adapters), recognised by their install record
  (plugin.json): never imported here. Each registers a runner-backed provider (warmd.runner) built from
  its record, so its code only ever runs in runner processes.

Only the configured plugins folder is trusted: a plugin folder or adapter that resolves outside it (a
symlink) is refused unread. A plugin that fails to import, defines no provider (or several), or reuses a
built-in provider's name is reported with its error and stays disabled; the daemon and every other model
keep running. The folder is looked at on start and then every `POLL_S` seconds (by names and mtimes); when
the set of providers changes, the catalog parses every spec again, so a spec waiting for a provider is
accepted the moment its plugin arrives.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from warmd.adapters.record import RECORD, Record, is_installed, read
from warmd.providers import Provider

log = logging.getLogger(__name__)
POLL_S = 2.0
ADAPTER = "adapter.py"


@dataclass(frozen=True)
class PluginState:
    name: str                 # the plugin's folder name
    folder: Path
    provider: str = ""        # the provider name it registered, when it works
    error: str = ""           # why it is disabled
    record: Record | None = None    # installed from git: its install record


class Plugins:
    def __init__(self, folder: Path, registry: dict[str, type[Provider]], on_change: Callable[[], None]) -> None:
        """Args:
            folder: the plugins folder (need not exist).
            registry: the daemon's providers by name; plugins are added to and removed from it.
            on_change: called after the set of providers changed.
        """
        self.folder = folder
        self._registry, self._on_change = registry, on_change
        self._builtin = set(registry)
        self._states: dict[str, PluginState] = {}
        self._loaded: dict[str, type[Provider]] = {}     # plugin folder name -> its provider class
        self._fingerprint: tuple = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scan_lock = threading.Lock()

    def start(self) -> None:
        self.scan()
        self._thread = threading.Thread(target=self._loop, name="plugins", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def states(self) -> list[PluginState]:
        return sorted(self._states.values(), key=lambda s: s.name)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.scan()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad scan
                log.exception("scanning plugins in %s failed", self.folder)

    def scan(self) -> None:
        """Load new or changed plugins, drop vanished ones; call on_change if providers changed. (Called by
        the poll thread and by installs, which need the provider registered before they write specs.)"""
        with self._scan_lock:
            self._scan()

    def _scan(self) -> None:
        folders = self._folders()
        fingerprint = tuple((f.name, _mtime(f / ADAPTER), _mtime(f / RECORD)) for f in folders)
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        before = {n: p for n, p in self._registry.items() if n not in self._builtin}
        self._loaded = {}
        states: dict[str, PluginState] = {}
        claimed: dict[str, str] = {}
        for folder in folders:
            state = self._load(folder)
            if state.provider in claimed:
                state = PluginState(state.name, folder, error=f"provider name {state.provider!r} is already "
                                    f"registered by plugin {claimed[state.provider]!r}")
            elif state.provider:
                claimed[state.provider] = state.name
            states[state.name] = state
        for name in before:
            self._registry.pop(name, None)
        for state in states.values():
            if state.provider:
                self._registry[state.provider] = self._loaded[state.name]
        self._states = states
        for state in states.values():
            if state.error:
                log.error("plugin %s is disabled: %s", state.name, state.error)
        if {n: p for n, p in self._registry.items() if n not in self._builtin} != before:
            self._on_change()

    def _folders(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if not p.name.startswith((".", "_")) and p.is_dir())
        except OSError:
            return []

    def _load(self, folder: Path) -> PluginState:
        adapter = folder / ADAPTER
        root = self.folder.resolve()
        if not folder.resolve().is_relative_to(root) or not adapter.resolve().is_relative_to(root):
            return PluginState(folder.name, folder, error=f"{adapter} resolves outside the plugins folder {root}; "
                               "only code inside it is trusted")
        if is_installed(folder):
            return self._installed(folder)
        if not adapter.is_file():
            return PluginState(folder.name, folder, error=f"no {ADAPTER} in {folder}")
        try:
            cls = import_provider(adapter, f"warmd_plugin_{folder.name}_{_mtime(adapter)}")
        except AdapterError as exc:
            return PluginState(folder.name, folder, error=str(exc))
        if cls.name in self._builtin:
            return PluginState(folder.name, folder, error=f"provider name {cls.name!r} is built in; pick another")
        self._loaded[folder.name] = cls
        return PluginState(folder.name, folder, provider=cls.name)

    def _installed(self, folder: Path) -> PluginState:
        """A plugin installed from git: a runner-backed provider from its record; its code is not imported."""
        from warmd.runner.process import runner_class     # the runner and multiprocessing: with such a plugin only

        try:
            record = read(folder)
        except ValueError as exc:
            return PluginState(folder.name, folder, error=str(exc))
        if record.provider in self._builtin:
            return PluginState(folder.name, folder, error=f"provider name {record.provider!r} is built in", record=record)
        self._loaded[folder.name] = runner_class(record.provider, record.batchable, record.target(), record.code_dir())
        return PluginState(folder.name, folder, provider=record.provider, record=record)


class AdapterError(Exception):
    """An adapter that cannot be used; the message says why (for a person)."""


def import_provider(adapter: Path, module_name: str, class_name: str = "") -> type[Provider]:
    """Import an adapter file and return its provider class.

    Args:
        adapter: the Python file.
        module_name: the name to import it under (unique per version of the file).
        class_name: the class to take; empty: the one Provider subclass the file defines.
    Returns:
        The class, which has a `name`.
    Raises:
        AdapterError: the import failed (a SyntaxError, a SystemExit...), no such class, not exactly one
            Provider subclass, or one without a `name`.
    """
    try:
        spec = importlib.util.spec_from_file_location(module_name, adapter)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[module_name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException as exc:  # noqa: BLE001 - a plugin's SystemExit or SyntaxError disables only it
        sys.modules.pop(module_name, None)
        raise AdapterError(f"import failed: {exc!r}") from exc
    if class_name:
        found = [c for c in [getattr(module, class_name, None)] if inspect.isclass(c) and issubclass(c, Provider)]
        if not found:
            raise AdapterError(f"{adapter} has no Provider subclass named {class_name!r}")
    else:
        found = [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, Provider)
                 and c is not Provider and c.__module__ == module_name and not inspect.isabstract(c)]
        if len(found) != 1:
            raise AdapterError(f"{adapter} must define exactly one Provider subclass, found {len(found)}")
    cls = found[0]
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise AdapterError(f"{cls.__name__} has no `name`")
    return cls


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
