"""Scoped tokens over TCP: read < infer < admin, created and revoked with `warm token`, kept hashed."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np

from models import affine_spec, affine_specs
from tritonclient_run import triton
from waiting import error_code, free_port
from warm import Client, Code

X = np.ones((1, 4), np.float32)



def test_scopes_revocation_and_hashed_storage(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    port = free_port()
    daemon = start_daemon(specs, args=("--tcp", f"127.0.0.1:{port}"))
    tokens = {}
    for scope in ("read", "infer", "admin"):
        made = daemon.warm("token", "create", "--name", f"app-{scope}", "--scope", scope)
        assert made.returncode == 0, made.stderr
        tokens[scope] = made.stdout.strip()
    listed = json.loads(daemon.warm("token", "list", "--json").stdout)
    assert {(t["name"], t["scope"]) for t in listed} >= {("app-read", "read"), ("app-infer", "infer"),
                                                         ("app-admin", "admin"), ("owner", "admin")}
    stored = Path(daemon.env["XDG_CONFIG_HOME"]) / "warmd" / "tokens.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert not any(token in stored.read_text() for token in tokens.values())     # hashes only

    def as_(scope: str) -> Client:
        return Client(tcp=f"127.0.0.1:{port}", token=tokens[scope], timeout=30)

    with as_("read") as c:
        assert [m.name for m in c.list().models] == ["affine"]
        assert error_code(lambda: c.infer("affine", {"x": X})) is Code.PERMISSION_DENIED
        # InferStream runs models as Infer does (it was missing from the table, which let `read` through)
        assert error_code(lambda: list(c.infer_stream("affine", {"x": X}))) is Code.PERMISSION_DENIED
        assert error_code(lambda: c.load("affine")) is Code.PERMISSION_DENIED
        assert error_code(lambda: c.create_token("sneaky", "admin")) is Code.PERMISSION_DENIED
    with as_("infer") as c:
        assert c.infer("affine", {"x": X}).outputs["y"].shape == (1, 4)   # loads on demand
        assert error_code(lambda: c.unload("affine")) is Code.PERMISSION_DENIED
        assert error_code(lambda: c.pin("affine", True)) is Code.PERMISSION_DENIED
        assert error_code(lambda: c.install_plugin("git+https://127.0.0.1:9/r")) is Code.PERMISSION_DENIED
        assert c.plugins() == []                                           # listing is read
    with as_("admin") as c:
        c.unload("affine")
        c.load("affine")
    # the same scopes bind the V2 protocol on the same port
    out = triton(f"127.0.0.1:{port}", """
        out["live"] = client.is_server_live(headers=headers)
        try:
            client.load_model("affine", headers=headers)
        except Exception as exc:
            out["load"] = exc.status()
    """, headers={"authorization": f"Bearer {tokens['infer']}"})
    assert out == {"live": True, "load": "StatusCode.PERMISSION_DENIED"}

    assert daemon.warm("token", "revoke", "app-infer").returncode == 0
    with as_("infer") as c:
        assert error_code(lambda: c.infer("affine", {"x": X})) is Code.UNAUTHENTICATED
    with as_("admin") as c:       # other tokens are untouched
        assert c.status().pid == daemon.proc.pid
    bad = daemon.warm("token", "create", "--name", "../x", "--scope", "read")
    assert bad.returncode == 1 and "[invalid_argument]" in bad.stderr


def test_a_corrupt_tokens_file_stops_the_start_with_a_clear_message(start_daemon, short_tmp: Path) -> None:
    config = short_tmp / "config" / "warmd"
    config.mkdir(parents=True)
    (config / "tokens.json").write_text("{not json")
    daemon = start_daemon(ready=False)
    assert daemon.proc.wait(timeout=20) != 0
    assert "is not a warmd tokens file" in daemon.log()


def test_every_rpc_of_both_services_has_its_scope_in_the_table_and_an_unknown_one_needs_admin() -> None:
    """The methods come from the .proto files (warmd.v1 and V2), not from a second hand-written list: a new
    RPC nobody gave a scope fails here, and until it has one the daemon asks `admin` for it."""
    from warmd.api.auth import METHOD_SCOPES, SCOPES, required_scope
    from warmd.v1 import warmd_pb2
    from warmd.v2 import inference_pb2

    methods = {f"/{s.full_name}/{m.name}" for d in (warmd_pb2.DESCRIPTOR, inference_pb2.DESCRIPTOR)
               for s in d.services_by_name.values() for m in s.methods}
    assert {"/warmd.v1.Warmd/Infer", "/inference.GRPCInferenceService/ModelInfer"} <= methods
    assert set(METHOD_SCOPES) == methods            # every RPC placed, no stale names
    assert set(METHOD_SCOPES.values()) <= set(SCOPES)
    assert required_scope("/warmd.v1.Warmd/SomethingNew") == "admin"
    assert required_scope("/inference.GRPCInferenceService/SomethingNew") == "admin"
