"""The application layer: what the daemon does, as one set of calls that every front makes — warmd.v1
(api/service.py), the Open Inference Protocol (api/v2.py) and the HTTP dialects — so that a lookup, an
admission gate, a statistics path or a message exists once, whatever protocol a request came in by.

`App` owns the daemon's parts (catalog, plugins and their installer, store, scheduler, inference,
profiles, shared-memory regions, tokens) and answers in plain data (app/views.py, app/calls.py:
dataclasses and numpy arrays; events are the daemon's one event type, warmd.v1.Event). A front only
translates its wire to these calls and back.

Rules held here:
- one lookup per call: a model name is found in the catalog once (`model_not_found` naming the nearest
  name), and what the call needs (spec, provider) is handed on, never looked up again by name;
- long operations (loads, downloads, plugin installs and updates) are jobs the caller follows
  (`Operation`, app/follow.py); a refused operation changes nothing (`remove` checks before it unloads,
  a V2 load's config override is undone when its load fails);
- nothing here speaks a wire: no protobuf messages are built here but events, and no gRPC context is read.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from warmd import __version__, devices
from warmd.adapters import coder
from warmd.adapters.coder import Coder
from warmd.tokens import TokenInfo, TokenStore
from warmd.app.calls import ChatRequest, Chunk, Inferred, Target, embeddings, select_outputs, stream
from warmd.app.follow import EventStream, Operation
from warmd.app.regions import Regions
from warmd.app.views import (Added, DaemonStatus, DeviceUse, Discovered, ModelInfo, PluginInfo, Provenance,
                             Removed, Statistics)
from warmd.catalog import Catalog
from warmd.cluster import Placement
from warmd.config import Settings
from warmd.errors import Code, WarmdError
from warmd.events import EventBus
from warmd.inference import Inference
from warmd.jobs import Job, Jobs
from warmd.plugins import Plugins
from warmd.providers import PROVIDERS, CallContext, InferRequest, Provider
from warmd.roles import Choice, Profiles
from warmd.policy import Move
from warmd.scheduler import AVAILABLE, DryRun, ModelView, Scheduler
from warmd.spec import ModelSpec, SpecFileError
from warmd.store import Store, hub
from warmd.store.sources import KINDS, handler, parse_reference

if TYPE_CHECKING:
    import numpy as np

    from warmd.adapters.install import Installer

ROLE_PREFIX = "role:"       # a model name that asks for a role's model: role:NAME

__all__ = ["App", "ChatRequest", "Chunk", "Inferred", "ModelInfo", "Operation", "Provenance", "Target",
           "select_outputs"]


class App:
    """The daemon's parts, and every call a front makes of them.

    Args:
        settings: the daemon's settings.
        providers: provider classes by name (default: the built-in ones); plugins add theirs here.
    """

    def __init__(self, settings: Settings, providers: Mapping[str, type[Provider]] | None = None) -> None:
        self.settings = s = settings
        self.bus = EventBus()
        self.providers = dict(PROVIDERS if providers is None else providers)   # plus the plugins', as they come
        if s.cluster:                           # specs placed on the Ray cluster are served through it
            from warmd.cluster.front import ClusterProvider

            self.providers[ClusterProvider.name] = ClusterProvider
        # The plugins folder is a path root too: specs installed with a plugin point into its checkout.
        self.catalog = Catalog(s.specs_dir, s.path_roots + [s.specs_dir, s.plugins_dir], self.providers, self.bus,
                               s.reload_debounce, place=Placement(s.cluster, s.placement),
                               validated_file=s.data_dir / "validated_specs.json")
        self.plugins = Plugins(s.plugins_dir, self.providers, on_change=self.catalog.revalidate)
        self.jobs = Jobs(self.bus)              # every long operation: loads, downloads, plugin installs
        self._installer: Installer | None = None      # made at the first plugin operation (installer)
        self._installer_lock = threading.Lock()
        self.store = Store(s.data_dir, self.bus, offline=s.offline, policy=s.downloads, timeout_s=s.download_timeout,
                           jobs=self.jobs)
        self._live: tuple[int, bool] = (-1, False)     # (catalog generation, whether a spec's source is live)
        inventory = devices.inventory(s.cpu_budget, s.gpu_budget, s.gpu_reserve, s.simulated_gpus)
        self.scheduler = Scheduler(self.catalog, self.store, self.providers, self.bus, s.keep_alive, inventory,
                                   devices.budget_bytes(s.host_tier_budget, inventory["cpu"].total),
                                   eviction=s.eviction, max_keep_alive=s.max_keep_alive, jobs=self.jobs)
        self.inference = Inference(self.scheduler, self.providers)
        self.profiles = Profiles(s.profiles_dir, s.data_dir / "active_profile", s.data_dir / "role_picks.json",
                                 self.catalog, self.scheduler, self.store)
        self.regions = Regions()
        self.tokens = TokenStore(s.token_file.with_name("tokens.json"))
        self.started_at = time.time()

    @property
    def installer(self) -> Installer:
        """Installs plugins from git. Made, and its modules (drafting, the gate) imported, at the first plugin
        operation: a start does not pay for them."""
        with self._installer_lock:
            if self._installer is None:
                from warmd.adapters.install import Installer

                s = self.settings
                self._installer = Installer(s.plugins_dir, self.catalog, self.plugins, self.jobs, s.gate_timeout,
                                            s.offline, s.draft_attempts)
            return self._installer

    # ---- models --------------------------------------------------------------------------------
    def spec(self, name: str, listed_by: str = "`warm ls` lists them") -> ModelSpec:
        """The spec of model `name`.

        Raises:
            WarmdError: `model_not_found`, naming the nearest name and how to list them (`listed_by`).
        """
        return self.catalog.require(name, listed_by=listed_by)

    def find(self, name: str) -> ModelSpec | None:
        """The spec of model `name`, or None: for a caller that asks whether it exists."""
        return self.catalog.get(name)

    def view(self, spec: ModelSpec) -> ModelView:
        """Where the model stands now (state, resident version, last error, pin)."""
        return self.scheduler.view(spec.name)

    def models(self, task: str = "", tag: str = "", state: str = "") -> list[ModelInfo]:
        """The catalog's models, filtered by task, tag and state (available | loading | ready | unloading | failed)."""
        errors = {e.file: e for e in self.catalog.rejected()}
        views = self.scheduler.views()      # one look for all: a catalog may hold 10 000 specs
        found = [self._info(s, errors.get(s.file), views.get(s.name, AVAILABLE), listed=True)
                 for s in self.catalog.specs() if (not task or s.task == task) and (not tag or tag in s.tags)]
        return [m for m in found if not state or m.state == state]

    def listing_version(self) -> tuple[Any, frozenset[str]] | None:
        """What an unfiltered `models()` rests on, for a listing kept serialized between calls: (a value that
        changes whenever a model outside the scheduler's views could show otherwise, the names in its views,
        which show their own figures and are asked for each time with `model`). None while it cannot be
        told: a download runs, or a spec's files are asked of something running (a remote, the cluster)."""
        files = self.store.listing_version()
        generation = self.catalog.generation
        if self._live[0] != generation:
            self._live = (generation, any(handler(s.source).live for s in self.catalog.specs()))
        if files is None or self._live[1]:
            return None
        names = frozenset(self.scheduler.views())
        return (generation, files, names), names

    def model(self, name: str) -> ModelInfo:
        """One model.

        Raises:
            WarmdError: `model_not_found`.
        """
        spec = self.spec(name)
        return self._info(spec, next((e for e in self.catalog.rejected() if e.file == spec.file), None))

    def show(self, name: str) -> ModelInfo:
        """One model with its download history, and the full size of files not downloaded yet (asked of the
        source, at most 2 s, remembered; never offline)."""
        info = self.model(name)
        info.downloads = self.store.downloads.history(info.name)
        if info.files.state in ("missing", "partial") and not info.files.bytes_total:
            info.files = dataclasses.replace(info.files, bytes_total=self.store.probe_size(info.spec))
        return info

    def rejected(self) -> list[SpecFileError]:
        """Spec files that were rejected, and the specs folder while it cannot be read."""
        return self.catalog.rejected()

    def discovered(self) -> list[Discovered]:
        """Models on this machine that no spec names: in the Hugging Face cache and in Ollama's store."""
        specs = self.catalog.specs()
        return [Discovered(**d) for kind in KINDS.values() for d in kind.discover(specs)]

    def pull(self, name: str) -> Operation:
        """Download the model's files (or join the transfer under way), as an operation to follow; leaving
        it early leaves the transfer, which stops when nobody follows it any more.

        Raises:
            WarmdError: `model_not_found`; what Store.pull refuses (offline, a local source).
        """
        spec = self.spec(name)
        if self.store.state(spec).state in ("verified", "complete"):
            return Operation.done(spec.name, "download.finished", "already on disk")
        with contextlib.ExitStack() as exits:     # kept by the operation once the transfer is joined
            job, future = exits.enter_context(self.store.pull(spec))
            follower = self.jobs.follow(job)      # by job id: a transfer another spec started too
            return Operation(spec.name, "download.finished", job, future, follower, exits.pop_all())

    def load(self, name: str, keep_alive: float | None = None,
             config: Mapping[str, Any] | None = None) -> Operation:
        """Load the model (downloading its files first if needed), as an operation to follow.

        Args:
            keep_alive: seconds it stays when idle, over its spec's.
            config: spec fields that override its file for this load (V2's `config`), until its next load
                or unload through V2; {} goes back to the file. Undone when the load fails.
        Raises:
            WarmdError: `model_not_found`; the load's own error once followed.
        """
        spec = self.spec(name)
        on_error = None
        if config is not None:
            before = self.catalog.overrides(spec.name)
            self.catalog.override(spec.name, config)
            on_error = lambda _err: self.catalog.override(spec.name, before)  # noqa: E731 - a refused load changes nothing
        try:
            job, future = self.scheduler.start_load(spec.name, keep_alive=keep_alive)
        except WarmdError as err:
            if on_error is not None:
                on_error(err)
            raise
        if job is None:
            return Operation.done(spec.name, "model.loaded", "already resident")
        # by job id: its download's events too
        return Operation(spec.name, "model.loaded", job, future, self.jobs.follow(job), on_error=on_error)

    def plan_load(self, name: str) -> DryRun:
        """What loading the model would do now, without doing it: the device, the bytes, and what would be
        parked or unloaded first and why (`warm load --dry-run`).

        Raises:
            WarmdError: `model_not_found`; what the load would fail with (insufficient_memory...).
        """
        return self.scheduler.plan_load(self.spec(name).name)

    def evictions(self, model: str = "") -> list[tuple[float, Move]]:
        """The residency log, oldest first: (unix time, the policy's decision with its reason and figures)."""
        return self.scheduler.evictions(model)

    def unload(self, name: str, reset_config: bool = False) -> ModelInfo | None:
        """Unload the model once its requests in flight finish (up to drain_timeout).

        Args:
            reset_config: also drop a V2 config override (it lasts until the next V2 load or unload).
        Returns:
            The model as it is now, or None when no spec defines it any more.
        """
        self.scheduler.unload(name, wait_s=self.settings.drain_timeout)
        if reset_config:
            self.catalog.override(name, {})
        spec = self.catalog.get(name)
        return None if spec is None else self._info(spec, None)

    def remove(self, name: str) -> Removed:
        """Unload the model and delete its downloaded files, never files another spec's revision uses.

        Raises:
            WarmdError: what the source's kind refuses (local sources, shared files), before anything is
                unloaded; `busy` when requests are still in flight after drain_timeout.
        """
        spec = self.spec(name)
        others = [s for s in self.catalog.specs() if s.name != spec.name]
        self.store.check_removable(spec, others)       # a refused rm leaves the model loaded
        self.scheduler.unload(spec.name, reason="removed", wait_s=self.settings.drain_timeout)
        if self.scheduler.view(spec.name).resident is not None:
            raise WarmdError(Code.BUSY, f"{spec.name!r} still has requests in flight; retry when they finish")
        freed, removed = self.store.remove(spec, others)
        return Removed(freed, removed)

    def add(self, source: str, name: str = "", revision: str = "") -> Added:
        """Write a spec into the specs folder for `hf://ORG/NAME` (from the hub's metadata) or
        `ollama://NAME[:TAG]` (from Ollama's store on this machine).

        Raises:
            WarmdError: `invalid_argument` for another form or a taken name (before the source is asked);
                `network_forbidden` offline for the hub; what the source answers.
        """
        kind, ref = parse_reference(source)
        name = name or kind.default_name(ref)
        self.catalog.check_free(name)                  # refused before the source is asked
        body = kind.suggest(ref, revision, offline=self.store.offline)
        path = self.catalog.write_spec(name, body)
        return Added(path, name, body["provider"], body["task"])

    def pin(self, name: str, pinned: bool) -> ModelInfo:
        """Never evict or expire the model (over its spec's `pin`, until the daemon restarts), or undo it."""
        self.scheduler.pin(name, pinned)
        return self.model(name)

    # ---- plugins -------------------------------------------------------------------------------
    def install_plugin(self, source: str, name: str = "", draft: bool = False, accept: bool = False) -> Operation:
        """Install a provider plugin from git (`git+URL[@REV]` or a local repository): clone, pin the commit,
        gate it, install it with its example specs, as an operation to follow (its events name the plugin);
        leaving it early cancels it.

        Args:
            draft: the repository has no adapter: the active profile's `coder` drafts one (installer.py);
                the operation ends with `plugin.drafted` unless `accept`.
            accept: install the draft once it passed; without `draft`, the kept draft that passed.
        Raises:
            WarmdError: `invalid_argument` (a malformed source or name, no coder role, nothing to accept),
                `network_forbidden` (offline), `unavailable` (no model can be the coder); once followed, the
                gate's refusal (which step, the traceback's last lines) or the clone's error.
        """
        coder = self._coder() if draft else None
        job, future = self.installer.install(source, name, coder, accept)
        return self._plugin_operation(name or source, "plugin.drafted" if draft and not accept else "plugin.installed",
                                      job, future)

    def update_plugin(self, name: str) -> Operation:
        """Fetch plugin `name`'s source again, gate the new commit and switch only if it passes (the old one
        serves meanwhile), as an operation to follow; leaving it early cancels it.

        Raises:
            WarmdError: `invalid_argument` for a name no git install has; `busy` while it installs or updates.
        """
        return self._plugin_operation(name, "plugin.updated", *self.installer.update(name))

    def remove_plugin(self, name: str) -> list[str]:
        """Remove a plugin installed from git with the specs it wrote (their models unload).

        Returns:
            The paths deleted.
        Raises:
            WarmdError: `invalid_argument` for a name no git install has; `busy` while it installs or updates.
        """
        return self.installer.remove(name)

    def plugin_list(self) -> list[PluginInfo]:
        """Every plugin: folder plugins and those installed from git (source, commit, the gate's last result)."""
        updating = self.installer.updating()
        return [PluginInfo(p, p.name in updating) for p in self.plugins.states()]

    def _coder(self) -> Coder:
        """The active profile's `coder`: a chat model this daemon serves, else the role's endpoint.

        Raises:
            WarmdError: `invalid_argument` when the profile has no coder role; `unavailable` when none of its
                models qualifies and it has no endpoint; what coder.remote refuses.
        """
        choice = self.profiles.resolve("coder", endpoint=True)
        if choice.endpoint is not None:
            return coder.remote(choice.endpoint, self.settings.offline)
        target = self.target(choice.model)
        return coder.local(choice.model, lambda messages, sampling, context: self.chat(
            target, ChatRequest(list(messages), dict(sampling)), context))

    def _plugin_operation(self, plugin: str, final_kind: str, job: Job, future: Future) -> Operation:
        exits = contextlib.ExitStack()
        exits.callback(lambda: future.done() or job.cancel())     # a caller who leaves cancels it
        return Operation(plugin, final_kind, job, future, self.jobs.follow(job), exits)

    # ---- jobs and events -----------------------------------------------------------------------
    def running(self) -> list[Job]:
        """The long operations under way: loads, downloads, plugin installs and updates."""
        return self.jobs.running()

    def cancel(self, job_id: str) -> None:
        """Cancel a running job: a load stops at its next step, a download at its next chunk (keeping its
        partial files for the next attempt).

        Raises:
            WarmdError: `invalid_argument` when no job with that id is running.
        """
        self.jobs.cancel(job_id)

    def watch(self, kinds: tuple[str, ...] | list[str] = (), model: str = "") -> EventStream:
        """Every event whose kind starts with one of `kinds` (all when empty), about `model` if given."""
        return EventStream(self.bus.subscribe(kinds=kinds, model=model))

    def status(self) -> DaemonStatus:
        return DaemonStatus(
            version=__version__, pid=os.getpid(), started_at=self.started_at, torch_imported="torch" in sys.modules,
            resident=[self._info(r.spec, None) for r in self.scheduler.resident()],
            models=len(self.catalog.specs()), rejected=len(self.catalog.rejected()), jobs=self.running(),
            plugins=self.plugin_list(), hf_cache=hub.cache_root(), settings=self.settings,
            devices=[DeviceUse(d, used, free) for d, used, free in self.scheduler.device_usage()])

    # ---- inference -----------------------------------------------------------------------------
    def target(self, name: str, listed_by: str = "`warm ls` lists them") -> Target:
        """The model a call will run on: the one lookup of a call. `role:NAME` is the model that plays role
        NAME in the active profile now (spec names never hold a colon).

        Raises:
            WarmdError: `model_not_found` (see `spec`); for a role, what `resolve_role` raises.
        """
        if name.startswith(ROLE_PREFIX):
            name = self.resolve_role(name[len(ROLE_PREFIX):]).model
        spec = self.spec(name, listed_by)
        return Target(spec, self.providers.get(spec.provider))

    def infer(self, target: Target | str, request: InferRequest, keep_alive: float | None = None) -> Inferred:
        """Run one request: admitted (max_in_flight, max_queue), batched where the spec asks, counted,
        loading the model first when it is not resident.

        Raises:
            WarmdError: `busy`, `cancelled`, `deadline_exceeded`, the load's error, or the provider's failure
                with its code (inference.py's boundary).
        """
        target = self.target(target) if isinstance(target, str) else target
        resident, result = self.inference.run(target.spec, request, keep_alive)
        return Inferred(result, resident)

    def infer_stream(self, target: Target | str, request: InferRequest,
                     keep_alive: float | None = None) -> Iterator[Chunk]:
        """`infer`, streamed: text and progress as the provider reports them, then the result. Closing the
        iterator early cancels the call."""
        target = self.target(target) if isinstance(target, str) else target
        return stream(lambda r: self.infer(target, r, keep_alive), request, target.name)

    def chat(self, target: Target | str, chat: ChatRequest, context: CallContext | None = None,
             keep_alive: float | None = None) -> Iterator[Chunk]:
        """Continue a conversation on a chat model, streamed (the last chunk's `result.chat` has the text, why
        it stopped and the usage); closing the iterator stops generation."""
        request = InferRequest(parameters=chat.parameters(), context=context or CallContext())
        return self.infer_stream(target, request, keep_alive)

    def generate(self, target: Target | str, prompt: str, sampling: Mapping[str, Any] | None = None,
                 context: CallContext | None = None, keep_alive: float | None = None) -> Iterator[Chunk]:
        """Continue a prompt on a text-generation (or chat) model, streamed as `chat`; `sampling` as a chat's
        (its `max_tokens` is text-generation's `max_new_tokens`)."""
        target = self.target(target) if isinstance(target, str) else target
        parameters = dict(sampling or {})
        if target.spec.task == "text-generation" and "max_tokens" in parameters:
            parameters["max_new_tokens"] = parameters.pop("max_tokens")
        request = InferRequest(text=[prompt], parameters=parameters, context=context or CallContext())
        return self.infer_stream(target, request, keep_alive)

    def embed(self, target: Target | str, texts: list[str], context: CallContext | None = None,
              keep_alive: float | None = None) -> np.ndarray:
        """Embed texts on a feature-extraction model: a float32 array [len(texts), dim]."""
        return embeddings(self.infer(target, InferRequest(text=list(texts), context=context or CallContext()),
                                     keep_alive))

    def statistics(self, specs: list[ModelSpec] | None = None) -> list[Statistics]:
        """Request statistics of `specs` (default: every model) and what each holds now."""
        return [Statistics(s, self.inference.stats(s.name), self.scheduler.view(s.name).resident)
                for s in (self.catalog.specs() if specs is None else specs)]

    # ---- roles and profiles --------------------------------------------------------------------
    def resolve_role(self, role: str, profile: str = "") -> Choice:
        """The model that plays `role` in `profile` (default: the active one), and why others were passed over."""
        return self.profiles.resolve(role, profile)

    def active_profile(self) -> tuple[str, list[str], list[Choice]]:
        """(the active profile, every profile's name, the active profile's roles as they resolve now)."""
        active = self.profiles.active()
        return active, self.profiles.names(), self.profiles.choices(active)

    def use_profile(self, name: str) -> list[Choice]:
        return self.profiles.use(name)

    def choose_role(self, role: str, model: str) -> Choice:
        return self.profiles.choose(role, model)

    # ---- tokens --------------------------------------------------------------------------------
    def create_token(self, name: str, scope: str) -> tuple[str, TokenInfo]:
        """A new token (returned once; the daemon keeps its hash) and what the daemon keeps of it."""
        token = self.tokens.create(name, scope)
        return token, self.tokens.lookup(token)  # type: ignore[return-value]

    def list_tokens(self) -> list[TokenInfo]:
        return self.tokens.list()

    def revoke_token(self, name: str) -> None:
        self.tokens.revoke(name)

    # ---- helpers -------------------------------------------------------------------------------
    def _info(self, spec: ModelSpec, file_error: SpecFileError | None, view: ModelView | None = None,
              listed: bool = False) -> ModelInfo:
        return ModelInfo(spec, view or self.scheduler.view(spec.name), file_error, self.scheduler.default_keep_alive,
                         self.store, listed=listed)
