"""The set of specs in the specs folder, kept current by watching it and every model's local files.

A rescan looks at every spec file (reading only files whose stat changed, re-parsing only files whose bytes
changed, and at a start not those whose bytes passed at an earlier one: warmd.validated), fingerprints each
model's local inputs (its path or package source, a torch factory module: sizes, mtimes, inodes, see
warmd.store.local), then compares the new set of models with the old by name: added, changed, removed.
An edited weights file or factory module is a changed model, like an edited spec. A file that used to
hold a valid spec and now fails validation keeps its last good spec active (a broken save never takes a
working model away) and shows its error beside it. Every `catalog.rejected` of a file is followed, once
the file is fixed, deleted or renamed away, by a `catalog.cleared` for it. An unreadable or missing specs
folder is a rejected "file" of its own (the folder). Editor swap and temp files are not spec files: only
`*.yaml`/`*.yml` whose name does not start with `.` or `#` count.

An override (a V2 load's `config`) replaces some fields of one model's spec, on top of whatever its file
says, until it is cleared, the model's spec goes away, or the daemon stops; every reader of the catalog
sees the spec with it applied.

Each spec is served where its placement says (`place`, warmd.cluster.Placement): a spec placed on a Ray
Serve cluster is the `cluster` provider's, with no local inputs to watch; one placed there in a daemon
without a cluster is a rejected file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.providers import Provider
from warmd.spec import NAME_PATTERN, ModelSpec, SpecFileError, did_you_mean, parse_spec_file
from warmd.store import local
from warmd.validated import ValidatedSpecs, rules
from warmd.watch import Watches

log = logging.getLogger(__name__)
SAFETY_RESCAN_S = 5.0      # also rescans when no file event came (folder deleted and recreated, NFS)
# The watches come on this long after the first scan: watchdog's import, its observer and the watches (~10 ms
# of the interpreter) would otherwise share it with the daemon's path to ready and its first calls.
WATCH_AFTER_S = 0.2
MAX_DEBOUNCE_S = 1.0
# A file whose stat is unchanged is not read again, unless it changed this recently: file times tick
# coarsely (a few ms), so two writes of the same size within one tick have the same stat (git's "racy" rule).
RACY_NS = 2 * 10**9

# (old, new): (None, spec) added; (spec, spec) changed; (spec, None) removed.
ChangeListener = Callable[[ModelSpec | None, ModelSpec | None], None]


@dataclass
class _FileState:
    digest: str
    stamp: tuple[int, int, int, int] | None     # (mtime, ctime, size, inode) when it was read
    spec: ModelSpec | None = None
    error: SpecFileError | None = None


class Catalog:
    """Valid specs by name, rejected files by path, and change notifications."""

    def __init__(self, root: Path, path_roots: list[Path], providers: Mapping[str, type[Provider]],
                 bus: EventBus, debounce_s: float = 0.25,
                 place: Callable[[ModelSpec], ModelSpec] = lambda spec: spec,
                 validated_file: Path | None = None) -> None:
        self.root, self.path_roots, self.providers, self.bus = root, path_roots, providers, bus
        self.debounce_s = debounce_s
        # Where each spec runs (warmd.cluster.Placement): the spec as this daemon serves it, or SpecFileError.
        self.place = place
        self._files: dict[Path, _FileState] = {}
        self._validated = ValidatedSpecs(validated_file)     # files that passed at an earlier start
        self._specs: dict[str, ModelSpec] = {}
        self.generation = 0      # moves with every rescan's result: what `specs()` and `rejected()` give
        self._rejected: dict[Path, SpecFileError] = {}
        self._overrides: dict[str, dict[str, Any]] = {}    # model name -> ModelSpec fields over its file
        self._listeners: list[ChangeListener] = []
        self._lock = threading.Lock()          # guards the maps above
        self._scan_lock = threading.Lock()     # one rescan at a time
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._watches = Watches(self._dirty)
        self._inputs: list[Path] = []          # the last rescan's local inputs: what the watches start from
        self._watching = False                 # set by the catalog's thread once it put the watches on
        self._thread: threading.Thread | None = None

    # ---- reading -------------------------------------------------------------------------------
    def get(self, name: str) -> ModelSpec | None:
        with self._lock:
            return self._specs.get(name)

    def require(self, name: str, listed_by: str = "`warm ls` lists them") -> ModelSpec:
        """The spec named `name`.

        Raises:
            WarmdError: `model_not_found`, naming the nearest model name when one is close and how to list them.
        """
        with self._lock:
            spec = self._specs.get(name)
            if spec is not None:      # every request passes here: the names are listed only for a miss
                return spec
            names = list(self._specs)
        raise WarmdError(Code.MODEL_NOT_FOUND, f"no model named {name!r}{did_you_mean(name, names)}; {listed_by}")

    def specs(self) -> list[ModelSpec]:
        with self._lock:
            return sorted(self._specs.values(), key=lambda s: s.name)

    def rejected(self) -> list[SpecFileError]:
        """Rejected spec files, and the specs folder itself while it cannot be read."""
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
            self._validated.follow(rules(self.providers))
            files, folder_error = self._spec_files()
            states = {p: self._file_state(p) for p in files}
            with self._lock:
                old_specs, old_rejected = self._specs, self._rejected
            specs, rejected, inputs = self._assemble(states, old_specs)
            if folder_error is not None:
                rejected[self.root] = folder_error
            with self._lock:
                self._files, self._specs, self._rejected = states, specs, rejected
                self.generation += 1
                first = self.generation == 1
                self._overrides = {n: f for n, f in self._overrides.items() if n in specs}
            self._announce(old_specs, specs, old_rejected, rejected, first)
            self._inputs = inputs
            if self._watching and not self._stop.is_set():      # the catalog's thread put the watches on
                self._watch(inputs)

    def revalidate(self) -> None:
        """Parse every file again (the set of providers changed: a plugin came or went), then rescan."""
        with self._lock:
            self._files = {}
        self.rescan()

    def _spec_files(self) -> tuple[list[Path], SpecFileError | None]:
        try:
            with os.scandir(self.root) as found:      # its entries know their type: no stat per file
                entries = sorted(((e.name, e.is_file()) for e in found))
        except OSError as exc:
            # An unreadable or missing folder means "no specs", said loudly (a rejected folder), not a crash.
            return [], SpecFileError(self.root, f"the specs folder cannot be read: {exc.strerror}; "
                                     "create it or make it readable (the daemon picks it up)")
        return [self.root / name for name, regular in entries if regular and is_spec_name(name)], None

    def _file_state(self, path: Path) -> _FileState:
        with self._lock:
            known = self._files.get(path)
        stamp = _stamp(path)
        if known is not None and stamp is not None and known.stamp == stamp and \
                time.time_ns() - max(stamp[0], stamp[1]) > RACY_NS:
            return known        # unchanged since it was read: not read again (10 000 specs, every 5 s)
        try:
            raw: bytes | None = path.read_bytes()
        except OSError:
            raw = None          # parse_spec_file says why
        digest = hashlib.sha256(raw).hexdigest() if raw is not None else ""
        if known is not None and known.digest == digest and digest:
            return dataclasses.replace(known, stamp=stamp)
        try:
            spec = parse_spec_file(path, self.root, self.path_roots, self.providers, self._validated, raw)
            return _FileState(digest, stamp, spec=spec)
        except SpecFileError as err:
            return _FileState(digest, stamp, error=err)

    def _assemble(self, states: dict[Path, _FileState], old_specs: dict[str, ModelSpec],
                  ) -> tuple[dict[str, ModelSpec], dict[Path, SpecFileError], list[Path]]:
        """The specs by name (each with the fingerprint of its local inputs), the rejected files, and
        every model's local inputs."""
        specs: dict[str, ModelSpec] = {}
        rejected: dict[Path, SpecFileError] = {}
        last_good = {s.file: s for s in old_specs.values()}
        scan = local.Scan(self.providers)
        inputs: list[Path] = []
        for path, state in states.items():
            spec = state.spec
            if state.error is not None:
                rejected[path] = state.error
                spec = last_good.get(path)      # keep serving the last good version of this file
            if spec is None:
                continue
            if spec.name in specs:
                rejected[path] = SpecFileError(
                    path, f"model name {spec.name!r} is already defined by {specs[spec.name].file.name}; "
                    "names must be unique", field="name")
                continue
            try:
                spec = self.place(spec)
            except SpecFileError as err:
                rejected[path] = err
                continue
            paths = scan.inputs(spec)
            content = scan.fingerprint(paths)
            if spec.content != content:
                spec = dataclasses.replace(spec, content=content)
                if state.error is None:
                    state.spec = spec           # kept with the file's state: the next rescan starts from it
            with self._lock:
                fields = self._overrides.get(spec.name)
            if fields:                          # over the file's spec, never kept in the file's state
                spec = dataclasses.replace(spec, **fields)
            inputs += paths
            specs[spec.name] = spec
        return specs, rejected, inputs

    def _announce(self, old: dict[str, ModelSpec], new: dict[str, ModelSpec],
                  old_rejected: dict[Path, SpecFileError], rejected: dict[Path, SpecFileError],
                  first: bool) -> None:
        """Publish (and log) every difference. At the first scan the models found are logged at debug: the
        daemon's ready line counts them (10 000 specs are not 10 000 lines); rejected files are always warned."""
        for path, err in rejected.items():
            if str(old_rejected.get(path)) != str(err):
                log.warning("rejected spec %s", err)
                self.bus.publish("catalog.rejected", file=str(path), message=str(err),
                                 error_code=err.code.value)
        for name in sorted(set(old) | set(new)):
            before, after = old.get(name), new.get(name)
            if before is after or before == after:
                continue
            if before is None:
                kind, message = "catalog.added", f"added from {after.file.name}"
            elif after is None:
                kind, message = "catalog.removed", f"{before.file.name} no longer defines it"
            else:
                kind, message = "catalog.changed", _change(before, after)
            spec = after or before
            log.log(logging.DEBUG if first else logging.INFO, "%s %s: %s", kind, name, message)
            self.bus.publish(kind, model=name, file=str(spec.file), message=message)
            for listener in self._listeners:
                try:
                    listener(before, after)
                except Exception:
                    log.exception("catalog listener failed on %s", name)
        for path in sorted(set(old_rejected) - set(rejected)):
            defined = next((s.name for s in new.values() if s.file == path), "")
            message = (f"accepted again: defines {defined!r}" if defined else
                       "the specs folder can be read again" if path == self.root else
                       "deleted" if not path.exists() else "no longer a spec file")
            log.info("catalog.cleared %s: %s", path, message)
            self.bus.publish("catalog.cleared", model=defined, file=str(path), message=message)

    def check_free(self, name: str) -> Path:
        """The file a new spec `name` would be written to.

        Raises:
            WarmdError: `invalid_argument` for a name that is not a model name or is taken.
        """
        if not NAME_PATTERN.match(name):
            raise WarmdError(Code.INVALID_ARGUMENT, f"{name!r} is not a model name: lowercase letters, digits, "
                             ". _ -, at most 64, starting with a letter or digit")
        target = self.root / f"{name}.yaml"
        if self.get(name) is not None or target.exists():
            raise WarmdError(Code.INVALID_ARGUMENT, f"a model named {name!r} or the file {target} exists; "
                             "pass another name")
        return target

    def write_spec(self, name: str, body: dict, note: str = "written by `warm add`; edit freely") -> Path:
        """Write a new spec file `<name>.yaml`, validated before it appears (temp file, then rename).

        Args:
            note: the comment on its first line.
        Raises:
            WarmdError: `invalid_argument` when the name is taken or the file exists; `spec_invalid`
                when the content does not validate.
        """
        import yaml

        target = self.check_free(name)
        self.replace_spec(target, f"# {note}\nname: {name}\n" + yaml.safe_dump(body, sort_keys=False))
        return target

    def replace_spec(self, target: Path, text: str) -> None:
        """Write `text` to spec file `target` in the specs folder (new or replacing one), validated before it
        appears (temp file, then rename), and rescan.

        Raises:
            WarmdError: `spec_invalid` when the content does not validate (the file stays as it was).
        """
        tmp = self.root / f".{target.stem}.yaml.tmp"      # a dotfile: the watcher ignores it until the rename
        tmp.write_text(text, encoding="utf-8")
        try:
            parse_spec_file(tmp, self.root, self.path_roots, self.providers)
        except SpecFileError as err:
            tmp.unlink()
            raise WarmdError(err.code, str(err)) from None
        tmp.replace(target)
        self.rescan()

    # ---- watching ------------------------------------------------------------------------------
    def start(self) -> None:
        """Scan now, then watch the folder and the models' local inputs from the catalog's thread: its
        watches come on WATCH_AFTER_S later, and it rescans then (a change in between is not missed)."""
        self.rescan()
        self._thread = threading.Thread(target=self._loop, name="catalog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and rescanning; also before the catalog's thread has put its watches on."""
        self._stop.set()
        self._dirty.set()
        self._watches.stop()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        self._save_validated()          # at once: a daemon stopped right after its first start keeps them
        if self._stop.wait(WATCH_AFTER_S):
            return
        with self._scan_lock:           # the last scan's inputs; the rescan below sees what changed before them
            try:
                self._watch(self._inputs)
            except Exception:  # noqa: BLE001 - the rescans go on, and each tries the watches again
                log.exception("catalog watches failed; rescanning every %.0f s, and trying them again", SAFETY_RESCAN_S)
            self._watching = True
        while not self._stop.is_set():
            try:
                self.rescan()
            except Exception:
                log.exception("catalog rescan failed; will retry")
            self._save_validated()
            if self._dirty.wait(timeout=SAFETY_RESCAN_S) and not self._stop.is_set():
                self._settle()

    def _save_validated(self) -> None:
        with self._scan_lock:           # after the rescan that came before, off the path to ready
            self._validated.save()

    def _settle(self) -> None:
        """Debounce: wait until no file event for `debounce_s` (but at most MAX_DEBOUNCE_S)."""
        deadline = time.monotonic() + MAX_DEBOUNCE_S
        self._dirty.clear()
        while time.monotonic() < deadline and self._dirty.wait(timeout=self.debounce_s):
            self._dirty.clear()

    def _watch(self, inputs: list[Path]) -> None:
        """The specs folder's entries, and each local input: a folder as deep as it goes, or a file."""
        deep = sorted({p for p in inputs if p.is_dir()})
        files = sorted({p for p in inputs if p not in deep})
        self._watches.update([self.root], deep, files)


def _change(before: ModelSpec, after: ModelSpec) -> str:
    """What a catalog.changed is about, in the words of its event."""
    if before.signature == after.signature:
        return "metadata changed"
    if dataclasses.replace(before, content=after.content) == after:
        return "local files changed (weights or factory module); reloading if loaded"
    return "weights or options changed"


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


def is_spec_file(path: Path) -> bool:
    """`*.yaml`/`*.yml`, not hidden, not an editor's lock or backup file."""
    return is_spec_name(path.name) and path.is_file()


def is_spec_name(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and not name.startswith((".", "#"))
