"""Who may call what over TCP. The Unix socket is the user's own (0600): everything is allowed there.

Over TCP every call needs `authorization: Bearer <token>`. Tokens carry one scope, each tier including the
ones before it:

    read   list, show, status, watch; V2 health, metadata, config, index, statistics
    infer  + running models (which loads them on demand) and shared-memory regions
    admin  + pull, load, unload, rm, add, pin, installing plugins, and managing tokens

The daemon keeps only each token's SHA-256 (`tokens.json` next to the token file, 0600). The owner token
(the token file, written once for the local user's own TCP clients) has `admin`. A missing or unknown
(revoked) token is UNAUTHENTICATED; a known token outside its scope is PERMISSION_DENIED.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from warmd.errors import METADATA_KEY, Code, WarmdError
from warmd.paths import write_atomic

SCOPES = ("read", "infer", "admin")
OWNER = "owner"
# Health is answerable without a token so that service managers and load balancers can probe it; server
# reflection too, so that tools (grpcurl) can find health: it describes only the public schemas (the .proto
# files), never a model, a file or a setting.
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")
_WARMD, _V2 = "/warmd.v1.Warmd/", "/inference.GRPCInferenceService/"
# Calls that need more than `read` (everything else, reflection included, is `read`).
METHOD_SCOPES = {
    **{_WARMD + m: "infer" for m in ("Infer", "RegisterRegion", "UnregisterRegion")},
    **{_V2 + m: "infer" for m in ("ModelInfer", "ModelStreamInfer", "SystemSharedMemoryRegister",
                                  "SystemSharedMemoryUnregister", "CudaSharedMemoryRegister",
                                  "CudaSharedMemoryUnregister")},
    **{_WARMD + m: "admin" for m in ("LoadModel", "UnloadModel", "PullModel", "CancelJob", "RemoveModel",
                                     "AddModel", "PinModel", "CreateToken", "ListTokens", "RevokeToken",
                                     "UseProfile", "ChooseRoleModel", "InstallPlugin", "UpdatePlugin",
                                     "RemovePlugin")},
    **{_V2 + m: "admin" for m in ("RepositoryModelLoad", "RepositoryModelUnload")},
}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def required_scope(method: str) -> str:
    return METHOD_SCOPES.get(method, "read")


def allows(scope: str, needed: str) -> bool:
    return SCOPES.index(scope) >= SCOPES.index(needed)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def caller(context: grpc.ServicerContext) -> str:
    """Who is calling, for what belongs to a caller (shared-memory regions): the bearer token on TCP (by its
    hash), else the one local user of the user-only Unix socket."""
    token = dict(context.invocation_metadata()).get("authorization", "")
    return "token:" + _digest(token)[:16] if token else "local"


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scope: str
    sha256: str
    created: float


class TokenStore:
    """Named, scoped tokens, kept as hashes in a JSON file that only this daemon writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_digest: dict[str, TokenInfo] = {}
        if path.is_file():
            try:
                entries = json.loads(path.read_text())["tokens"]
                self._by_digest = {e["sha256"]: TokenInfo(**e) for e in entries}
            except (ValueError, KeyError, TypeError) as exc:
                raise WarmdError(Code.INVALID_ARGUMENT, f"{path} is not a warmd tokens file ({exc}); "
                                 "move it away to start with no named tokens") from None

    def ensure_owner(self, token_file: Path) -> None:
        """Create the owner token file (0600, folder 0700) if missing, and trust its token as `admin`."""
        token = token_file.read_text().strip() if token_file.is_file() else ""
        if not token:
            token = secrets.token_urlsafe(32)
            token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(token_file, token + "\n", mode=0o600)
        with self._lock:
            kept = {d: t for d, t in self._by_digest.items() if t.name != OWNER}
            self._commit_locked({**kept, _digest(token): TokenInfo(OWNER, "admin", _digest(token), time.time())})

    def create(self, name: str, scope: str) -> str:
        """A new token `name` with `scope`. Returns the token itself, which is not kept anywhere.

        Raises:
            WarmdError: `invalid_argument` for a bad or taken name, or an unknown scope.
        """
        if not _NAME.match(name) or name == OWNER:
            raise WarmdError(Code.INVALID_ARGUMENT, f"token name {name!r}: use 1-64 letters, digits, . _ - "
                             f"(not {OWNER!r})")
        if scope not in SCOPES:
            raise WarmdError(Code.INVALID_ARGUMENT, f"scope {scope!r}: use one of {', '.join(SCOPES)}")
        token = secrets.token_urlsafe(32)
        with self._lock:
            if any(t.name == name for t in self._by_digest.values()):
                raise WarmdError(Code.INVALID_ARGUMENT, f"a token named {name!r} exists; revoke it first")
            self._commit_locked({**self._by_digest,
                                 _digest(token): TokenInfo(name, scope, _digest(token), time.time())})
        return token

    def revoke(self, name: str) -> None:
        """Forget token `name`; calls with it are UNAUTHENTICATED from now on."""
        with self._lock:
            kept = {d: t for d, t in self._by_digest.items() if t.name != name}
            if len(kept) == len(self._by_digest):
                raise WarmdError(Code.INVALID_ARGUMENT, f"no token named {name!r}; `warm token list` shows them")
            if name == OWNER:
                raise WarmdError(Code.INVALID_ARGUMENT, "the owner token cannot be revoked; delete the token "
                                 "file and restart the daemon to replace it")
            self._commit_locked(kept)

    def list(self) -> list[TokenInfo]:
        with self._lock:
            return sorted(self._by_digest.values(), key=lambda t: t.created)

    def lookup(self, token: str) -> TokenInfo | None:
        with self._lock:
            return self._by_digest.get(_digest(token))

    def _commit_locked(self, tokens: dict[str, TokenInfo]) -> None:
        """Write the new set of tokens, then adopt it: a failed write (a full disk) changes nothing."""
        body = {"tokens": [asdict(t) for t in tokens.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, json.dumps(body, indent=1) + "\n", mode=0o600)
        self._by_digest = tokens


class TokenAuth(grpc.ServerInterceptor):
    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        if details.method.startswith(OPEN_METHODS):
            return continuation(details)
        given = dict(details.invocation_metadata).get("authorization", "")
        info = self._store.lookup(given.removeprefix("Bearer ")) if given.startswith("Bearer ") else None
        if info is None:
            return _deny(continuation(details), Code.UNAUTHENTICATED,
                         "missing, unknown or revoked bearer token; send 'authorization: Bearer <token>' (the "
                         "daemon's token file, or one from `warm token create`)")
        needed = required_scope(details.method)
        if not allows(info.scope, needed):
            return _deny(continuation(details), Code.PERMISSION_DENIED,
                         f"token {info.name!r} has scope {info.scope!r}; {details.method.rsplit('/', 1)[-1]} "
                         f"needs {needed!r}")
        return continuation(details)


def _deny(handler, code: Code, message: str):  # type: ignore[no-untyped-def]
    """A handler of the same shape as the real one that answers with `code`."""

    def unary(request, context):  # type: ignore[no-untyped-def]
        context.set_trailing_metadata(((METADATA_KEY, code.value),))
        context.abort(code.status, message)

    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        def bidi(_requests, context):  # type: ignore[no-untyped-def]
            unary(None, context)
            yield from ()
        return grpc.stream_stream_rpc_method_handler(bidi, handler.request_deserializer,
                                                     handler.response_serializer)
    if handler.response_streaming:
        def stream(request, context):  # type: ignore[no-untyped-def]
            unary(request, context)
            yield from ()
        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                    handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                               handler.response_serializer)
