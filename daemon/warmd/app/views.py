"""What the application layer answers with: plain data about models, jobs and the daemon, no protobuf.

Each front turns these into its wire (warmd.v1's Model, V2's index and statistics, an HTTP dialect's JSON).
A rule about what a client is shown lives here once, for every front: how a model's error reads when an
older version still serves, what counts as its keep_alive and pin, whether its files can be downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from warmd.config import Settings
from warmd.devices import Device
from warmd.inference import ModelStats
from warmd.jobs import Job
from warmd.plugins import PluginState
from warmd.scheduler import ModelView, Resident
from warmd.spec import ModelSpec, SpecFileError
from warmd.store import FilesState, Store
from warmd.store.sources import handler


@dataclass
class ModelInfo:
    """One model as every front shows it: its spec, where it stands, its files (read from disk when first
    asked for), and its download history (`App.show` only)."""

    spec: ModelSpec
    view: ModelView
    file_error: SpecFileError | None     # the spec file's latest edit, rejected (the spec above still serves)
    default_keep_alive: float
    store: Store = field(repr=False)
    downloads: list[dict] = field(default_factory=list)
    listed: bool = False        # one of a listing: its files as the store remembers them (Store.state)
    _files: FilesState | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> str:
        """available | loading | ready | unloading | failed (warmd.v1.MODEL_STATES)."""
        return self.view.state

    @property
    def resident(self) -> Resident | None:
        return self.view.resident

    @property
    def pinned(self) -> bool:
        """`warm pin`/`unpin` over the spec's `pin`."""
        return self.spec.pin if self.view.pinned is None else self.view.pinned

    @property
    def keep_alive(self) -> float:
        """Seconds it stays resident when idle: the spec's, else the daemon's default (-1 forever)."""
        return self.default_keep_alive if self.spec.keep_alive is None else self.spec.keep_alive

    @property
    def source(self) -> str:
        return self.spec.source.describe()

    @property
    def location(self) -> str:
        """Where a resident model that runs outside this daemon is (the cluster replicas holding it, for
        `warm ps`); "" for a model held here or not resident."""
        r = self.resident
        return r.provider.location() if r is not None and r.provider is not None else ""

    @property
    def downloadable(self) -> bool:
        """Whether `warm pull` fetches its files (hf, url); the other kinds are local or remote."""
        return handler(self.spec.source).downloadable

    @property
    def files(self) -> FilesState:
        # Read once (not functools.cached_property: it takes a lock per access, and a listing has 10 000)
        if self._files is None:
            self._files = self.store.state(self.spec, remembered=self.listed)
        return self._files

    @files.setter
    def files(self, value: FilesState) -> None:
        self._files = value

    @property
    def error_code(self) -> str:
        """The code of what went wrong last: a rejected edit of its file, else its last failed load."""
        if self.file_error is not None:
            return self.file_error.code.value
        return self.view.error.code.value if self.view.error is not None else ""

    @property
    def error(self) -> str:
        """What went wrong last, saying when an older version still serves."""
        if self.file_error is not None:
            return f"the file's latest edit was rejected, still serving the previous version: {self.file_error}"
        if self.view.error is None:
            return ""
        r = self.view.resident
        if r is not None and r.spec.signature != self.spec.signature:     # serving, but not this version
            return f"the load of its new version failed, still serving the previous version: {self.view.error.message}"
        return self.view.error.message


@dataclass(frozen=True)
class Provenance:
    """Which model answered a request, exactly: what every infer response carries."""

    name: str
    version: str
    signature: str
    source: str
    revision: str        # the hub revision the spec asks for ("" for other kinds)
    precision: str
    device: str

    @classmethod
    def of(cls, r: Resident) -> "Provenance":
        src = r.spec.source
        return cls(name=r.spec.name, version=r.spec.version, signature=r.spec.signature, source=src.describe(),
                   revision=handler(src).revision(src), precision=r.spec.precision, device=r.device)


@dataclass(frozen=True)
class Removed:
    freed_bytes: int
    paths: list[Path]


@dataclass(frozen=True)
class Added:
    file: Path
    name: str
    provider: str
    task: str


@dataclass(frozen=True)
class Discovered:
    """A model on this machine that no spec names (the Hugging Face cache, Ollama's store)."""

    repo_id: str
    size_on_disk: int
    path: str
    revisions: tuple[str, ...] = ()
    source: str = ""          # "" (the Hugging Face cache) | "ollama"


@dataclass(frozen=True)
class DeviceUse:
    device: Device
    used: int
    free: int | None          # None: the driver does not say


@dataclass(frozen=True)
class Statistics:
    """One model's request statistics and what it holds now (V2 ModelStatistics, metrics)."""

    spec: ModelSpec
    stats: ModelStats
    resident: Resident | None


@dataclass(frozen=True)
class PluginInfo:
    """A plugin as every front shows it: a folder plugin, or one installed from git with its record."""

    plugin: PluginState
    updating: bool = False         # an update is under way (the installed commit serves meanwhile)

    @property
    def state(self) -> str:
        """installed | updating | disabled (folder plugins: loaded | disabled)."""
        if self.plugin.error:
            return "disabled"
        if self.updating:
            return "updating"
        return "installed" if self.plugin.record is not None else "loaded"

    @property
    def isolated(self) -> bool:
        """Its code runs in runner processes only (installed from git)."""
        return self.plugin.record is not None

    @property
    def models(self) -> list[str]:
        """The models of the specs it installed."""
        return [Path(f).stem for f in self.plugin.record.specs] if self.plugin.record is not None else []


@dataclass(frozen=True)
class DaemonStatus:
    version: str
    pid: int
    started_at: float
    torch_imported: bool
    resident: list[ModelInfo]
    models: int
    rejected: int
    jobs: list[Job]
    plugins: list[PluginInfo]
    devices: list[DeviceUse]
    hf_cache: Path
    settings: Settings        # paths and policies as configured
