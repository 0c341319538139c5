"""Who may call which gRPC method over TCP. The Unix socket is the user's own (0600): everything is allowed
there.

Over TCP every call needs `authorization: Bearer <token>`, a token of warmd.tokens with one scope, each tier
including the ones before it:

    read   list, show, status, watch; V2 health, metadata, config, index, statistics
    infer  + running models (which loads them on demand) and shared-memory regions
    admin  + pull, load, unload, rm, add, pin, installing plugins, and managing tokens

Every RPC of both services is placed in `METHOD_SCOPES`; one that is not (added to a .proto, forgotten
here) needs `admin`, so a forgotten entry fails closed. A missing or unknown (revoked) token is
UNAUTHENTICATED; a known token outside its scope is PERMISSION_DENIED.
"""
from __future__ import annotations

import grpc

from warmd.errors import Code, WarmdError
from warmd.tokens import SCOPES, TokenStore, allows, digest

__all__ = ["METHOD_SCOPES", "SCOPES", "TokenAuth", "allows", "caller", "required_scope"]

# Health is answerable without a token so that service managers and load balancers can probe it; server
# reflection too, so that tools (grpcurl) can find health: it describes only the public schemas (the .proto
# files), never a model, a file or a setting.
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")
_WARMD, _V2 = "/warmd.v1.Warmd/", "/inference.GRPCInferenceService/"
# The scope of every RPC, by tier. A method missing here (a new RPC nobody placed yet) needs `admin`: the
# table fails closed. tests/integration/test_tokens.py checks it against the methods the .proto files define.
_READ = {
    _WARMD: ("ListModels", "GetModel", "Status", "Watch", "ResolveRole", "ListProfiles", "PlanLoad",
             "ListEvictions", "ListPlugins"),
    _V2: ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
          "ModelStatistics", "RepositoryIndex", "SystemSharedMemoryStatus", "CudaSharedMemoryStatus"),
}
_INFER = {
    _WARMD: ("Infer", "InferStream", "RegisterRegion", "UnregisterRegion"),
    _V2: ("ModelInfer", "ModelStreamInfer", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
          "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister"),
}
_ADMIN = {
    _WARMD: ("LoadModel", "UnloadModel", "PullModel", "CancelJob", "RemoveModel", "AddModel", "PinModel",
             "CreateToken", "ListTokens", "RevokeToken", "UseProfile", "ChooseRoleModel", "InstallPlugin",
             "UpdatePlugin", "RemovePlugin"),
    _V2: ("RepositoryModelLoad", "RepositoryModelUnload"),
}
METHOD_SCOPES = {service + method: scope for scope, table in (("read", _READ), ("infer", _INFER), ("admin", _ADMIN))
                 for service, methods in table.items() for method in methods}


def required_scope(method: str) -> str:
    """The scope `method` ("/package.Service/Method") needs; `admin` for one the table does not name."""
    return METHOD_SCOPES.get(method, "admin")


def caller(context: grpc.ServicerContext) -> str:
    """Who is calling, for what belongs to a caller (shared-memory regions): the bearer token on TCP (by its
    hash), else the one local user of the user-only Unix socket."""
    token = dict(context.invocation_metadata()).get("authorization", "")
    return "token:" + digest(token)[:16] if token else "local"


class TokenAuth:
    """The TCP port's check of every call but health and reflection (api/aio.py runs it)."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Let the call of `method` through, or refuse it.

        Raises:
            WarmdError: `unauthenticated` without a known bearer token; `permission_denied` for a token
                whose scope does not include the method's.
        """
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        info = self._store.lookup(given.removeprefix("Bearer ")) if given.startswith("Bearer ") else None
        if info is None:
            raise WarmdError(Code.UNAUTHENTICATED, "missing, unknown or revoked bearer token; send 'authorization: "
                             "Bearer <token>' (the daemon's token file, or one from `warm token create`)")
        needed = required_scope(method)
        if not allows(info.scope, needed):
            raise WarmdError(Code.PERMISSION_DENIED, f"token {info.name!r} has scope {info.scope!r}; "
                             f"{method.rsplit('/', 1)[-1]} needs {needed!r}")
