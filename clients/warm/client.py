"""`warm.Client`: typed access to a running warmd over its Unix socket (or TCP with a token)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

# gRPC's C core writes transport events (a GOAWAY when the daemon stops) to stderr at INFO unless told
# otherwise; a client reports every failure itself, as a WarmdError. A setting of the user's own wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402 - after the setting above

from warmd import paths
from warmd.errors import METADATA_KEY, Code, WarmdError, from_rpc_error
from warmd.v1 import MODEL_STATES, warmd_pb2_grpc
from warmd.v1 import warmd_pb2 as pb


@dataclass
class InferResult:
    """Outputs by name (numpy arrays), a JSON value for non-tensor results, and provenance.

    `written` holds (dtype, shape) of the outputs the daemon wrote into shared memory instead."""

    outputs: dict[str, Any]
    json: Any
    signature: pb.ModelSignature
    written: dict[str, tuple[str, list[int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """One piece of a streamed call (`Client.infer_stream`): exactly one field is set."""

    text: str = ""                                   # the next piece of generated text
    progress: tuple[int, int, str] | None = None     # (done, total, unit) of a long job
    result: InferResult | None = None                # the last chunk


@dataclass(frozen=True)
class Shared:
    """A tensor in a registered shared-memory region (`Client.register_region`), in place of an array.

    As an input it needs `dtype` (an Open Inference Protocol name, e.g. "FP32") and `shape`; as an output
    destination only the window."""

    region: str
    byte_size: int
    offset: int = 0
    dtype: str = ""
    shape: tuple[int, ...] = ()

    def ref(self) -> pb.RegionRef:
        return pb.RegionRef(region=self.region, offset=self.offset, byte_size=self.byte_size)


class Client:
    """A connection to warmd.

    Args:
        socket: the daemon's Unix socket (default: $WARMD_SOCKET, else the per-user runtime dir).
        tcp: "HOST:PORT" to connect over TCP instead (default: $WARMD_TCP); needs a token.
        token: the bearer token for TCP (default: $WARMD_TOKEN, else the daemon's token file).
        timeout: seconds for each unary call (None = no deadline; loads can take a while).
    Raises:
        WarmdError: from every method, with the daemon's stable code (`unavailable` when the daemon
            is not running).
    """

    def __init__(self, socket: str | Path | None = None, *, tcp: str | None = None,
                 token: str | None = None, timeout: float | None = None) -> None:
        tcp = tcp or os.environ.get("WARMD_TCP") or None
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = ()
        options = [("grpc.max_receive_message_length", 256 * 2**20),
                   ("grpc.max_send_message_length", 256 * 2**20)]
        if tcp and socket is None:
            self.target = tcp
            if token is None:
                token = os.environ.get("WARMD_TOKEN") or _read_token(paths.default_token_file())
            self._metadata = (("authorization", f"Bearer {token}"),)
        else:
            path = Path(socket or os.environ.get("WARMD_SOCKET") or paths.default_socket())
            self.target = f"unix:{path}"
        self._channel = grpc.insecure_channel(self.target, options=options)
        self._stub = warmd_pb2_grpc.WarmdStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # ---- models --------------------------------------------------------------------------------
    def list(self, *, task: str = "", tag: str = "", state: str = "",
             discovered: bool = False) -> pb.ListModelsResponse:
        """Models in the catalog (`.models`) and rejected spec files (`.rejected`).

        Args:
            state: available | loading | ready | unloading | failed, or "" for any.
            discovered: also list models in the Hugging Face cache that no spec names (`.discovered`).
        """
        if state and state not in MODEL_STATES:
            raise WarmdError(Code.INVALID_ARGUMENT, f"state must be one of {', '.join(MODEL_STATES)}")
        return self._call(self._stub.ListModels, pb.ListModelsRequest(
            task=task, tag=tag, state=MODEL_STATES.get(state, 0), include_discovered=discovered))

    def get(self, name: str) -> pb.Model:
        return self._call(self._stub.GetModel, pb.GetModelRequest(name=name))

    def load(self, name: str, *, keep_alive: float | None = None,
             on_event: Callable[[pb.Event], None] | None = None) -> pb.Model:
        """Load a model and wait until it is ready.

        Args:
            keep_alive: seconds it stays resident when idle (-1 forever), overriding the spec.
            on_event: called with each event of the load job (progress, loaded).
        Returns:
            The model, now READY.
        """
        request = pb.LoadModelRequest(name=name)
        if keep_alive is not None:
            request.keep_alive_s = keep_alive
        for event in self._stream(self._stub.LoadModel, request):
            if on_event is not None:
                on_event(event)
        return self.get(name)

    def plan_load(self, name: str) -> pb.LoadPlan:
        """What loading `name` would do now, without doing it: the device, the bytes, and which models
        would be parked or unloaded first and why. Fails as the load would (e.g. `insufficient_memory`)."""
        return self._call(self._stub.PlanLoad, pb.PlanLoadRequest(name=name))

    def evictions(self, model: str = "") -> list[pb.Eviction]:
        """The residency log, oldest first: evictions, parks, discards, expiries and pressure reliefs,
        each with its reason and figures (only `model`'s when given)."""
        return list(self._call(self._stub.ListEvictions, pb.ListEvictionsRequest(model=model)).evictions)

    def pull(self, name: str, *, on_event: Callable[[pb.Event], None] | None = None) -> pb.Model:
        """Download a model's files (joining a transfer already under way) and wait until they are verified.

        Args:
            on_event: called with each event (download.started, job.progress with bytes, download.finished).
        Returns:
            The model, with `files.state` "verified" (or "complete").
        """
        for event in self._stream(self._stub.PullModel, pb.PullModelRequest(name=name)):
            if on_event is not None:
                on_event(event)
        return self.get(name)

    def cancel(self, job_id: str) -> None:
        """Cancel a running job (`status().jobs`): a load stops at its next step; a download keeps its
        partial files for the next attempt."""
        self._call(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id))

    def remove(self, name: str) -> pb.RemoveModelResponse:
        """Unload a model and delete its downloaded files; returns the bytes freed and paths deleted."""
        return self._call(self._stub.RemoveModel, pb.RemoveModelRequest(name=name))

    def add(self, source: str, *, revision: str = "", name: str = "") -> pb.AddModelResponse:
        """Write a spec for `hf://org/name` into the daemon's specs folder, from the repo's metadata."""
        return self._call(self._stub.AddModel, pb.AddModelRequest(source=source, revision=revision, name=name))

    def install_plugin(self, source: str, *, name: str = "", draft: bool = False, accept: bool = False,
                       on_event: Callable[[pb.Event], None] | None = None) -> pb.Event:
        """Install a provider plugin from a git repository (`git+https://host/org/repo[@REV]`, `git+file://...`
        or an absolute path), once its gate passed, with its example specs.

        Args:
            draft: the repository has no adapter: the daemon's `coder` role drafts one, each attempt gated
                (a `plugin.draft` event with its diff per attempt).
            accept: install the draft once it passed (with `draft`), or the kept draft that passed.
            on_event: called with each event (job.progress per gate step, then plugin.installed).
        Returns:
            The last event: `plugin.installed`, whose message names the commit and the models, or
            `plugin.drafted` (draft without accept) with the passing draft's diff.
        Raises:
            WarmdError: `provider_failed` when the gate refused it (the message says which step and why; for a
                draft, the last attempt's); `spec_invalid` for a broken manifest; `invalid_argument` for a bad
                source, a taken name, no coder role or no passed draft to accept.
        """
        return self._last(self._stub.InstallPlugin, pb.InstallPluginRequest(source=source, name=name, draft=draft,
                                                                            accept=accept), on_event)

    def update_plugin(self, name: str, *, on_event: Callable[[pb.Event], None] | None = None) -> pb.Event:
        """Fetch plugin `name`'s source again and switch to its newest commit if that passes the gate (the
        installed one serves meanwhile). Returns the last event, `plugin.updated`."""
        return self._last(self._stub.UpdatePlugin, pb.UpdatePluginRequest(name=name), on_event)

    def remove_plugin(self, name: str) -> list[str]:
        """Remove a plugin installed from git and the specs it wrote; returns the paths deleted."""
        return list(self._call(self._stub.RemovePlugin, pb.RemovePluginRequest(name=name)).removed)

    def plugins(self) -> list[pb.Plugin]:
        """Every plugin: folder plugins and those installed from git (source, commit, state, last gate)."""
        return list(self._call(self._stub.ListPlugins, pb.ListPluginsRequest()).plugins)

    def pin(self, name: str, pinned: bool = True) -> pb.Model:
        """Pin a model (never evicted, never expires) or unpin it, until the daemon restarts."""
        return self._call(self._stub.PinModel, pb.PinModelRequest(name=name, pinned=pinned))

    def unload(self, name: str) -> pb.Model:
        """Unload a model once its in-flight requests finish."""
        return self._call(self._stub.UnloadModel, pb.UnloadModelRequest(name=name))

    def status(self) -> pb.StatusResponse:
        return self._call(self._stub.Status, pb.StatusRequest())

    def infer(self, name: str, inputs: Mapping[str, Any] | None = None, *, text: Sequence[str] = (),
              parameters: Mapping[str, Any] | None = None, outputs: Sequence[str] = (),
              output_regions: Mapping[str, Shared] | None = None,
              keep_alive: float | None = None) -> InferResult:
        """Run a model, loading it first if needed.

        Args:
            inputs: named numpy arrays, or `Shared` tensors already in a registered region.
            text: strings, for text models.
            parameters: provider parameters (JSON-able).
            outputs: output names to return (default: all).
            output_regions: outputs to write into registered shared-memory windows instead.
        Returns:
            The outputs as numpy arrays (and those written to shared memory), plus the model's signature.
        Raises:
            WarmdError: `invalid_argument` for inputs the model cannot take or bad region references.
        """
        request = self._infer_request(name, inputs, text, parameters, outputs, output_regions, keep_alive)
        return _result(self._call(self._stub.Infer, request))

    def infer_stream(self, name: str, inputs: Mapping[str, Any] | None = None, *, text: Sequence[str] = (),
                     parameters: Mapping[str, Any] | None = None,
                     keep_alive: float | None = None) -> Iterator[Chunk]:
        """Run a model and follow it: generated text as it comes, progress of long jobs, then the result.

        Leaving the loop early (break, an exception) cancels the call, and the daemon stops the model at
        its next step. Arguments as for `infer`.
        Raises:
            WarmdError: as `infer`; `cancelled` or `deadline_exceeded` when the call was stopped.
        """
        request = self._infer_request(name, inputs, text, parameters, (), None, keep_alive)
        call = self._stub.InferStream(request, timeout=self.timeout, metadata=self._metadata)
        try:
            for chunk in call:
                kind = chunk.WhichOneof("chunk")
                if kind == "text":
                    yield Chunk(text=chunk.text)
                elif kind == "progress":
                    yield Chunk(progress=(chunk.progress.done, chunk.progress.total, chunk.progress.unit))
                else:
                    yield Chunk(result=_result(chunk.result))
        except grpc.RpcError as err:
            raise self._error(err) from None
        finally:
            call.cancel()

    @staticmethod
    def _infer_request(name: str, inputs: Mapping[str, Any] | None, text: Sequence[str],
                       parameters: Mapping[str, Any] | None, outputs: Sequence[str],
                       output_regions: Mapping[str, Shared] | None, keep_alive: float | None) -> pb.InferRequest:
        from warmd import tensors

        def encode(key: str, value: Any) -> pb.Tensor:
            if isinstance(value, Shared):
                return pb.Tensor(name=key, dtype=value.dtype, shape=list(value.shape), region=value.ref())
            return tensors.to_proto(key, value)

        request = pb.InferRequest(model=name, text=list(text), outputs=list(outputs),
                                  parameters_json=json.dumps(dict(parameters)) if parameters else "",
                                  inputs=[encode(k, v) for k, v in (inputs or {}).items()],
                                  output_regions={k: v.ref() for k, v in (output_regions or {}).items()})
        if keep_alive is not None:
            request.keep_alive_s = keep_alive
        return request

    def resolve_role(self, role: str, profile: str = "") -> pb.RoleChoice:
        """The model that plays `role` in the active (or named) profile, and why others were passed over.

        Raises:
            WarmdError: `invalid_argument` for an unknown role or profile; `unavailable` when no
                preferred model qualifies.
        """
        return self._call(self._stub.ResolveRole, pb.ResolveRoleRequest(role=role, profile=profile))

    def list_profiles(self) -> pb.ListProfilesResponse:
        return self._call(self._stub.ListProfiles, pb.ListProfilesRequest())

    def use_profile(self, name: str) -> list[pb.RoleChoice]:
        """Make profile `name` active: its roles' models load, the previous profile's others unload."""
        return list(self._call(self._stub.UseProfile, pb.UseProfileRequest(name=name)).roles)

    def choose_role(self, role: str, model: str) -> pb.RoleChoice:
        """Make `model` (one of the role's candidates) play `role` in the active profile from now on, and
        start loading it; "" clears the pick. Kept across restarts.

        Raises:
            WarmdError: `invalid_argument` for an unknown role or a model that is not a candidate;
                `unavailable` when the model cannot play it now (the reason is in the message).
        """
        return self._call(self._stub.ChooseRoleModel, pb.ChooseRoleModelRequest(role=role, model=model))

    def create_token(self, name: str, scope: str = "read") -> tuple[str, pb.TokenInfo]:
        """A new token for TCP clients: `read` < `infer` < `admin`. Returns (token, info); the token is
        shown only now (the daemon keeps its hash).

        Raises:
            WarmdError: `invalid_argument` for a bad or taken name or an unknown scope.
        """
        reply = self._call(self._stub.CreateToken, pb.CreateTokenRequest(name=name, scope=scope))
        return reply.token, reply.info

    def list_tokens(self) -> list[pb.TokenInfo]:
        return list(self._call(self._stub.ListTokens, pb.ListTokensRequest()).tokens)

    def revoke_token(self, name: str) -> None:
        """Revoke token `name`: calls with it are UNAUTHENTICATED from now on."""
        self._call(self._stub.RevokeToken, pb.RevokeTokenRequest(name=name))

    def register_region(self, name: str, key: str, byte_size: int, offset: int = 0) -> None:
        """Map [offset, offset + byte_size) of the POSIX shared-memory object `key` ("/frames") as `name`.

        Raises:
            WarmdError: `invalid_argument` for a bad key, a window beyond the object, or a taken name.
        """
        self._call(self._stub.RegisterRegion,
                   pb.RegisterRegionRequest(name=name, key=key, offset=offset, byte_size=byte_size))

    def unregister_region(self, name: str = "") -> None:
        """Forget region `name` (all of this caller's regions when empty)."""
        self._call(self._stub.UnregisterRegion, pb.UnregisterRegionRequest(name=name))

    def watch(self, *, kinds: Sequence[str] = (), model: str = "") -> Iterator[pb.Event]:
        """Every event as it happens (catalog changes, loads, unloads, progress), until closed.

        Returns once the daemon has subscribed, so no event after this call is missed.
        """
        call = self._stub.Watch(pb.WatchRequest(kinds=list(kinds), model=model), metadata=self._metadata)
        try:
            started = next(call)
        except grpc.RpcError as err:
            call.cancel()
            raise self._error(err) from None
        assert started.kind == "watch.started", started.kind
        return self._events(call)

    # ---- plumbing ------------------------------------------------------------------------------
    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _last(self, method: Any, request: Any, on_event: Callable[[pb.Event], None] | None) -> pb.Event:
        last = pb.Event()
        for last in self._stream(method, request):
            if on_event is not None:
                on_event(last)
        return last

    def _stream(self, method: Any, request: Any) -> Iterator[Any]:
        return self._events(method(request, metadata=self._metadata))

    def _events(self, call: Any) -> Iterator[Any]:
        try:
            yield from call
        except grpc.RpcError as err:
            raise self._error(err) from None
        finally:
            call.cancel()

    def _error(self, err: grpc.RpcError) -> WarmdError:
        error = from_rpc_error(err)
        from_daemon = any(k == METADATA_KEY for k, _ in (err.trailing_metadata() or ()))
        if not from_daemon and err.details() == SERVER_STOPPED:
            return WarmdError(Code.UNAVAILABLE, f"warmd at {self.target} stopped before the call finished (it was "
                              "shut down or restarted); retry once it is back (`warm status` tells)")
        if err.code() == grpc.StatusCode.UNAVAILABLE and not from_daemon:
            error.message = f"warmd is not reachable at {self.target} ({err.details()}); start it with `warmd serve`"
        return error


# What gRPC tells the calls still open when a server stops (after the daemon's drain_timeout).
SERVER_STOPPED = "Cancelling all calls"


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        raise WarmdError(Code.UNAUTHENTICATED, f"no token: TCP needs the daemon's token ({path} is not "
                         "readable); pass token= or set WARMD_TOKEN") from None


def _result(response: pb.InferResponse) -> InferResult:
    from warmd import tensors

    return InferResult(outputs={t.name: tensors.from_proto(t) for t in response.outputs if not t.HasField("region")},
                       json=json.loads(response.json) if response.json else None, signature=response.signature,
                       written={t.name: (t.dtype, list(t.shape)) for t in response.outputs if t.HasField("region")})
