"""warmd side by side with MLServer and TorchServe: one command, one table.

    .venv/bin/python bench/peers.py [--calls 1000] [--rounds 3] [--seconds 5] [--no-torchserve]

Installs each peer into its own virtual environment under $WARMD_PEERS_CACHE (default
~/.cache/warmd-peers), torch pinned to warmd's 2.13.0 (MLServer 1.7.1 with uvloop 0.21.0; TorchServe 0.12.0
with torch-model-archiver, needs Java 17). Serves the same locally made tiny MLP (64->128->10, seeded) from
each, all on 127.0.0.1, and measures in one run:

- infer p50/p99, [1,64] float32, sequential calls; rounds alternate between servers. warmd and MLServer get
  the same Open Inference Protocol (V2) gRPC client; TorchServe its own gRPC inference API; the floor is a
  bare grpcio echo server carrying the same V2 request bytes, and a second floor a bare grpc.aio server
  that runs the same MLP and nothing else (forward_server.py, the same V2 client): what any Python server of
  the model costs;
- throughput of 32 concurrent clients (grpc.aio coroutines in 2 processes, a channel each), with the
  server's CPU time per call: calls/s as median (min-max) over the rounds, and the ratios to the floor and
  warmd's to each peer taken round by round (this VM's pace drifts by 30 % within minutes, a round's
  figures move alike) and reported the same way;
- time to ready (process start until the model answers), time to load a second and a third model;
- memory (RSS of the server's process tree) idle with one model and with three.

Latency and throughput rounds both rotate the servers' order (round r starts at server r mod n): in a
fixed order each server always ran right after the same one. Every server it starts it stops, also on
failure. The table, and under it warmd's calls/s over each peer's per round, go to bench/results/peers.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

from common import REPO, compile_daemon, percentile, rotated, spread, wait_for, workdir, write_report

from waiting import free_port

CACHE = Path(os.environ.get("WARMD_PEERS_CACHE", Path.home() / ".cache" / "warmd-peers"))
TORCH = "torch==2.13.0"
PEERS = {
    "mlserver": ["mlserver==1.7.1", "uvloop==0.21.0", "safetensors"],
    "torchserve": ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml", "safetensors", "numpy",
                   "grpcio", "grpcio-tools", "protobuf"],
}
SIZES = (64, 128, 10)
FLOOR, MODEL_FLOOR = "bare grpcio echo (floor)", "grpc.aio + the MLP's forward (floor with the model)"
MODELS = ("mlp1", "mlp2", "mlp3")

MLSERVER_RUNTIME = textwrap.dedent('''
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse


    class MLP(MLModel):
        async def load(self):
            sizes = (64, 128, 10)
            layers = []
            for a, b in zip(sizes, sizes[1:]):
                layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
            self.net = torch.nn.Sequential(*layers[:-1]).eval()
            self.net.load_state_dict(load_file(self.settings.parameters.uri))
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            x = NumpyCodec.decode_input(payload.inputs[0])
            with torch.inference_mode():
                y = self.net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
            return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)])
''')


TORCHSERVE_HANDLER = textwrap.dedent('''
    # A function entry point ("mlp_handler:handle"): TorchServe refuses a module with two classes.
    import os
    import numpy as np
    import torch
    from safetensors.torch import load_file

    _net = None


    def handle(data, context):
        global _net
        if _net is None:
            sizes = (64, 128, 10)
            layers = []
            for a, b in zip(sizes, sizes[1:]):
                layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
            _net = torch.nn.Sequential(*layers[:-1]).eval()
            folder = context.system_properties.get("model_dir")
            _net.load_state_dict(load_file(os.path.join(folder, "weights.safetensors")))
        if data is None:
            return None
        out = []
        for row in data:
            raw = row.get("data") or row.get("body")
            x = np.frombuffer(bytes(raw), dtype=np.float32).reshape(-1, 64).copy()
            with torch.inference_mode():
                out.append(_net(torch.from_numpy(x)).numpy().tobytes())
        return out
''')
# TorchServe's gRPC inference API, written from its documentation (package and field numbers as TorchServe's).
TORCHSERVE_PROTO = textwrap.dedent('''
    syntax = "proto3";
    package org.pytorch.serve.grpc.inference;
    message PredictionsRequest {
      string model_name = 1;
      string model_version = 2;
      map<string, bytes> input = 3;
    }
    message PredictionResponse { bytes prediction = 1; }
    service InferenceAPIsService {
      rpc Predictions(PredictionsRequest) returns (PredictionResponse);
    }
''')


# ---- environments ----------------------------------------------------------------------------------
def ensure_venv(name: str) -> Path:
    """The peer's own virtual environment (made once): torch first and pinned, then the peer."""
    venv = CACHE / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    wanted = json.dumps(PEERS[name])
    if marker.is_file() and marker.read_text() == wanted:
        return python
    print(f"installing {name} into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, *PEERS[name]], check=True)
    marker.write_text(wanted)
    return python


# ---- processes and probes ------------------------------------------------------------------------
@contextlib.contextmanager
def started(args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> Iterator[subprocess.Popen]:
    """A server process in its own process group, stopped (group and all) at the end, also on failure."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        try:
            yield proc
        finally:
            family = descendants(proc.pid)          # some (TorchServe's java) leave the process group
            for sig, wait in ((15, 20), (9, 10)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)


def descendants(pid: int) -> list[int]:
    """`pid`'s children, their children, and so on."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(c) for task in Path(f"/proc/{p}/task").iterdir() for c in (task / "children").read_text().split()]
        except OSError:
            continue
        found += kids
        todo += kids
    return found


def tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and all its descendants."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


# ---- clients ---------------------------------------------------------------------------------------
def v2_request(model: str):  # type: ignore[no-untyped-def]
    import numpy as np

    from warmd.v2 import inference_pb2 as v2

    x = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)
    request = v2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(x.tobytes())
    return request


class V2:
    """The same Open Inference Protocol gRPC client for every V2 server."""

    def __init__(self, address: str, metadata: tuple = ()) -> None:
        import grpc

        from warmd.v2 import inference_pb2 as v2
        from warmd.v2 import inference_pb2_grpc

        self.v2, self.metadata = v2, metadata
        self.channel = grpc.insecure_channel(address)
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def infer(self, model: str) -> None:
        self.stub.ModelInfer(v2_request(model), timeout=60, metadata=self.metadata)

    def load(self, model: str) -> None:
        self.stub.RepositoryModelLoad(self.v2.RepositoryModelLoadRequest(model_name=model), timeout=300,
                                      metadata=self.metadata)

    def ready(self, model: str) -> bool:
        return self.stub.ModelReady(self.v2.ModelReadyRequest(name=model), timeout=5, metadata=self.metadata).ready


class TorchServeGrpc:
    """TorchServe's own gRPC inference API (stubs compiled from TORCHSERVE_PROTO into `folder`)."""

    def __init__(self, address: str, folder: Path) -> None:
        import grpc
        import numpy as np

        stubs = self.stubs(folder)
        self.pb = sys.modules["ts_inference_pb2"]
        self.stub = stubs.InferenceAPIsServiceStub(grpc.insecure_channel(address))
        self.body = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32).tobytes()

    @staticmethod
    def stubs(folder: Path):  # type: ignore[no-untyped-def]
        """The service stubs module, compiled from TORCHSERVE_PROTO into `folder` once."""
        from grpc_tools import protoc

        if not (folder / "ts_inference_pb2.py").exists():
            (folder / "ts_inference.proto").write_text(TORCHSERVE_PROTO)
            protoc.main(["protoc", f"-I{folder}", f"--python_out={folder}", f"--grpc_python_out={folder}",
                         "ts_inference.proto"])
        sys.path.insert(0, str(folder))
        import ts_inference_pb2_grpc

        return ts_inference_pb2_grpc

    def infer(self, model: str) -> None:
        reply = self.stub.Predictions(self.pb.PredictionsRequest(model_name=model, input={"data": self.body}),
                                      timeout=60)
        assert len(reply.prediction) == 40, reply.prediction[:200]


class Echo:
    def __init__(self, address: str) -> None:
        import grpc

        from echo_server import METHOD

        self.call = grpc.insecure_channel(address).unary_unary(METHOD)
        self.body = v2_request("mlp1").SerializeToString()

    def infer(self, model: str) -> None:
        self.call(self.body, timeout=60)


# Throughput: N concurrent clients, each with its own channel, calling back to back. They are coroutines of
# grpc.aio in PROCESSES processes: a thread per client (the old load) cost 0.45-0.9 ms of CPU per call, as
# much as the server, and more the slower the server answered, so on 2 CPUs calls/s measured the clients too.
PROCESSES = 2
LOAD_CLIENT = r'''
import asyncio, sys, time
sys.path[:0] = [sys.argv[1] + "/daemon", sys.argv[1] + "/bench"]
import grpc
from peers import aio_call
kind, address, model, clients, seconds, token = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
async def main():
    stop = time.monotonic() + seconds
    async def client():
        call, done = aio_call(kind, grpc.aio.insecure_channel(address), model, token), 0
        while time.monotonic() < stop:
            await call(); done += 1
        return done
    return sum(await asyncio.gather(*[client() for _ in range(clients)]))
print(asyncio.run(main()))
'''


def aio_call(kind: str, channel, model: str, token: str):  # type: ignore[no-untyped-def]
    """One client's call on a grpc.aio `channel`: echo, V2 ModelInfer or TorchServe's Predictions (for
    TorchServe, `token` is the folder of its compiled stubs)."""
    if kind == "echo":
        from echo_server import METHOD

        echo, body = channel.unary_unary(METHOD), v2_request("mlp1").SerializeToString()
        return lambda: echo(body, timeout=60)
    if kind == "torchserve":
        stubs = TorchServeGrpc.stubs(Path(token))
        ts, pb = stubs.InferenceAPIsServiceStub(channel), sys.modules["ts_inference_pb2"]
        body = v2_request("mlp1").raw_input_contents[0]
        return lambda: ts.Predictions(pb.PredictionsRequest(model_name=model, input={"data": body}), timeout=60)
    from warmd.v2 import inference_pb2_grpc

    stub, request = inference_pb2_grpc.GRPCInferenceServiceStub(channel), v2_request(model)
    metadata = (("authorization", "Bearer " + token),) if token else ()
    return lambda: stub.ModelInfer(request, timeout=60, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Load:
    """What a throughput run measured: calls/s, and CPU microseconds per call of the load's clients and of
    the server (when its pid was given): on a shared machine calls/s moves with everything else that runs,
    CPU per call much less."""

    rate: float
    client_us: float
    server_us: float | None = None


def throughput(kind: str, address: str, model: str, token: str = "", clients: int = 32, seconds: float = 5,
               server_pid: int | None = None) -> Load:
    """Run `clients` concurrent clients for `seconds` against `address` (see LOAD_CLIENT)."""
    per = [clients // PROCESSES + (k < clients % PROCESSES) for k in range(PROCESSES)]
    server0 = tree_cpu(server_pid) if server_pid else 0.0
    children0 = _children_cpu()
    procs = [subprocess.Popen([sys.executable, "-c", LOAD_CLIENT, str(REPO), kind, address, model, str(n),
                               str(seconds), token], stdout=subprocess.PIPE, text=True) for n in per if n]
    calls = sum(int(p.communicate(timeout=seconds + 120)[0].strip() or 0) for p in procs)
    per_call = lambda cpu: cpu / max(calls, 1) * 1e6  # noqa: E731
    return Load(calls / seconds, per_call(_children_cpu() - children0),
                per_call(tree_cpu(server_pid) - server0) if server_pid else None)


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds so far of process `pid` (all its threads) and of its descendants."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def median_load(runs: list[Load]) -> Load:
    """Each figure's median over `runs`."""
    servers = [r.server_us for r in runs if r.server_us is not None]
    return Load(statistics.median(r.rate for r in runs), statistics.median(r.client_us for r in runs),
                statistics.median(servers) if servers else None)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)      # the load's processes, once waited for
    return usage.ru_utime + usage.ru_stime


# ---- the servers -----------------------------------------------------------------------------------
def write_weights(folder: Path, name: str, seed: int) -> Path:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    layers = []
    for a, b in zip(SIZES, SIZES[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    path = folder / f"{name}.safetensors"
    save_file(torch.nn.Sequential(*layers[:-1]).state_dict(), str(path))
    return path


def warmd_server(root: Path, port: int):  # type: ignore[no-untyped-def]
    from models import write_mlp

    specs = root / "warmd-specs"
    specs.mkdir()
    for i, name in enumerate(MODELS):
        write_mlp(specs, name, SIZES, seed=i)
    env = {"XDG_CONFIG_HOME": str(root / "wcfg"), "XDG_RUNTIME_DIR": str(root / "wrun"),
           "XDG_DATA_HOME": str(root / "wdata"), "XDG_STATE_HOME": str(root / "wstate"), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(root / "w.sock"),
            "--tcp", f"127.0.0.1:{port}"]
    return args, env, root / "wcfg" / "warmd" / "token"


def mlserver_server(root: Path, port: int, python: Path):  # type: ignore[no-untyped-def]
    repo = root / "mlserver-models"
    repo.mkdir()
    (repo / "mlp_runtime.py").write_text(MLSERVER_RUNTIME)
    for i, name in enumerate(MODELS):
        folder = repo / name
        folder.mkdir()
        weights = write_weights(folder, "weights", seed=i)
        (folder / "model-settings.json").write_text(json.dumps(
            {"name": name, "implementation": "mlp_runtime.MLP", "parameters": {"uri": str(weights)}}))
    (repo / "settings.json").write_text(json.dumps(
        {"grpc_port": port, "http_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0,
         "load_models_at_startup": False, "host": "127.0.0.1", "metrics_endpoint": None}))
    return [str(python.parent / "mlserver"), "start", str(repo)], {"PYTHONPATH": str(repo)}, repo


def torchserve_server(root: Path, python: Path, ports: dict[str, int]):  # type: ignore[no-untyped-def]
    store = root / "ts-store"
    store.mkdir()
    (root / "mlp_handler.py").write_text(TORCHSERVE_HANDLER)
    archiver = python.parent / "torch-model-archiver"
    for i, name in enumerate(MODELS):
        weights = write_weights(root, "weights", seed=i)
        subprocess.run([str(archiver), "--model-name", name, "--version", "1.0", "--handler",
                        "mlp_handler:handle", "--serialized-file", str(weights), "--export-path",
                        str(store), "--force"], check=True, cwd=root)
    config = root / "config.properties"
    config.write_text("\n".join([
        f"inference_address=http://127.0.0.1:{ports['http']}", f"management_address=http://127.0.0.1:{ports['mgmt']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}", f"grpc_inference_port={ports['grpc']}",
        f"grpc_management_port={ports['grpc_mgmt']}", "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1", "enable_model_api=true", "disable_token_authorization=true",
        f"model_store={store}", "load_models=mlp1.mar", "default_workers_per_model=1",
        "install_py_dep_per_model=false", "enable_envvars_config=false"]) + "\n")
    args = [str(python.parent / "torchserve"), "--start", "--foreground", "--ncs", "--model-store", str(store),
            "--ts-config", str(config)]
    return args, {"PATH": f"{python.parent}:{os.environ['PATH']}", "LOG_LOCATION": str(root / "ts-logs"),
                  "METRICS_LOCATION": str(root / "ts-logs")}


def torchserve_register(mgmt_port: int, model: str) -> None:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{mgmt_port}/models?url={model}.mar&initial_workers=1"
                                     "&synchronous=true", method="POST")
    urllib.request.urlopen(request, timeout=300).read()


# ---- measuring -------------------------------------------------------------------------------------
def latency(client, model: str, calls: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(20):
        client.infer(model)
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.infer(model)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per round and server")
    parser.add_argument("--rounds", type=int, default=3, help="latency and throughput rounds")
    parser.add_argument("--seconds", type=float, default=5, help="throughput run per server")
    parser.add_argument("--no-torchserve", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # run the cleanups of every started server
    compile_daemon()        # as installed: the peers' packages are compiled by pip
    mls_python = ensure_venv("mlserver")
    rows: dict[str, dict[str, object]] = {}
    with workdir() as root, contextlib.ExitStack() as stack:
        # floor
        echo_port = free_port()
        echo_proc = stack.enter_context(started([sys.executable, str(REPO / "bench" / "echo_server.py"),
                                                 f"127.0.0.1:{echo_port}"], root / "echo.log"))
        echo = Echo(f"127.0.0.1:{echo_port}")
        wait_for(lambda: echo.infer("mlp1") or True)

        # warmd: ready = process start until mlp1 answers
        w_port = free_port()
        w_args, w_env, token_file = warmd_server(root, w_port)
        t0 = time.monotonic()
        warmd = stack.enter_context(started(w_args, root / "warmd.log", w_env))
        wait_for(lambda: token_file.is_file() and token_file.read_text().strip(), timeout=180)
        token = token_file.read_text().strip()
        w = V2(f"127.0.0.1:{w_port}", (("authorization", f"Bearer {token}"),))
        w_ready = wait_for(lambda: w.infer("mlp1") or True, timeout=180) - t0

        # MLServer
        m_port = free_port()
        m_args, m_env, _ = mlserver_server(root, m_port, mls_python)
        t0 = time.monotonic()
        mls = stack.enter_context(started(m_args, root / "mlserver.log", m_env))
        m = V2(f"127.0.0.1:{m_port}")
        wait_for(lambda: m.load("mlp1") or True, timeout=180)
        m_ready = wait_for(lambda: m.infer("mlp1") or True, timeout=180) - t0

        # the floor with the model: mlp1's weights (seed 0), V2 ModelInfer only
        f_port = free_port()
        bare = stack.enter_context(started([sys.executable, str(REPO / "bench" / "forward_server.py"),
                                            f"127.0.0.1:{f_port}", str(write_weights(root, "floor", seed=0)),
                                            ",".join(map(str, SIZES))], root / "forward.log"))
        f = V2(f"127.0.0.1:{f_port}")
        wait_for(lambda: f.infer("mlp1") or True, timeout=60)

        servers = {FLOOR: (echo, None), MODEL_FLOOR: (f, bare), "warmd": (w, warmd), "MLServer 1.7.1": (m, mls)}
        if not args.no_torchserve:
            ts_python = ensure_venv("torchserve")
            ports = {k: free_port() for k in ("http", "mgmt", "metrics", "grpc", "grpc_mgmt")}
            t_args, t_env = torchserve_server(root, ts_python, ports)
            t0 = time.monotonic()
            ts = stack.enter_context(started(t_args, root / "torchserve.log", t_env, cwd=root))
            t = TorchServeGrpc(f"127.0.0.1:{ports['grpc']}", root)
            t_ready = wait_for(lambda: t.infer("mlp1") or True, timeout=300) - t0
            servers["TorchServe 0.12.0"] = (t, ts)
        for name, (_, proc) in servers.items():
            rows[name] = {"lat": [], "rss1": tree_rss(proc.pid) if proc else 0}
        rows["warmd"]["ready"], rows["MLServer 1.7.1"]["ready"] = w_ready, m_ready
        if "TorchServe 0.12.0" in servers:
            rows["TorchServe 0.12.0"]["ready"] = t_ready
        for round_ in range(args.rounds):                  # alternate between servers, each in turn first
            for name, (client, _) in rotated(list(servers.items()), round_):
                rows[name]["lat"] += latency(client, "mlp1", args.calls)
        for name, client in (("warmd", w), ("MLServer 1.7.1", m)):
            loads = []
            for model in MODELS[1:]:
                t0 = time.monotonic()
                client.load(model)
                client.infer(model)
                loads.append(time.monotonic() - t0)
            rows[name]["load2"], rows[name]["load3"] = loads
        rows["warmd"]["rss3"], rows["MLServer 1.7.1"]["rss3"] = tree_rss(warmd.pid), tree_rss(mls.pid)
        if "TorchServe 0.12.0" in servers:
            loads = []
            for model in MODELS[1:]:
                t0 = time.monotonic()
                torchserve_register(ports["mgmt"], model)
                t.infer(model)
                loads.append(time.monotonic() - t0)
            rows["TorchServe 0.12.0"]["load2"], rows["TorchServe 0.12.0"]["load3"] = loads
            rows["TorchServe 0.12.0"]["rss3"] = tree_rss(ts.pid)
        # throughput: rounds alternate between servers, each in turn first (a shared machine's noise hits each
        # alike); rows[name]["tput"][r] is round r's, so report() can divide figures of the same round
        loads = [(FLOOR, "echo", f"127.0.0.1:{echo_port}", "", echo_proc),
                 (MODEL_FLOOR, "v2", f"127.0.0.1:{f_port}", "", bare),
                 ("warmd", "v2", f"127.0.0.1:{w_port}", token, warmd),
                 ("MLServer 1.7.1", "v2", f"127.0.0.1:{m_port}", "", mls)]
        if "TorchServe 0.12.0" in servers:
            loads.append(("TorchServe 0.12.0", "torchserve", f"127.0.0.1:{ports['grpc']}", str(root), ts))
        for round_ in range(args.rounds):
            for name, kind, address, secret, proc in rotated(loads, round_):
                rows[name].setdefault("tput", []).append(throughput(   # type: ignore[union-attr]
                    kind, address, "mlp1", secret, seconds=args.seconds, server_pid=proc.pid if proc else None))
    report(rows, args)
    return 0


def report(rows: dict[str, dict[str, object]], args: argparse.Namespace) -> None:
    floor_name = FLOOR
    floor = statistics.median(rows[floor_name]["lat"])  # type: ignore[arg-type]
    own = statistics.median(rows["warmd"]["lat"])  # type: ignore[arg-type]

    def cell(row: dict, key: str, fmt: Callable[[float], str]) -> str:
        return fmt(row[key]) if key in row and row[key] else "—"

    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    sec = lambda s: f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"  # noqa: E731
    times = lambda r: f"{r:.2f}x"  # noqa: E731
    tput = {name: median_load(row["tput"]) for name, row in rows.items()}  # type: ignore[arg-type]
    lines = ["# warmd, MLServer and TorchServe side by side", "",
             f"`.venv/bin/python bench/peers.py --calls {args.calls} --rounds {args.rounds} --seconds {args.seconds:g}` on {platform.machine()}, "
             f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}. Tiny MLP 64-128-10, [1,64] float32, all over TCP on "
             "127.0.0.1; warmd and MLServer with the same V2 gRPC client. Throughput: 32 clients (grpc.aio, "
             f"{PROCESSES} processes), {args.rounds} rounds, each starting at the next server; calls/s as median "
             "(min–max) over the rounds, its ratios taken within each round; server CPU per call (median of the "
             "rounds) covers the server's process tree.", "",
             "| server | infer p50 | p99 | p50 / floor | p50 / warmd | calls/s, 32 clients: median (min–max) | "
             "calls/s / floor, per round: median (min–max) | "
             "server CPU µs/call | ready | load 2nd | load 3rd | RSS, 1 model | RSS, 3 models |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lat = row["lat"]
        p50 = statistics.median(lat)  # type: ignore[arg-type]
        rates = [load.rate for load in row["tput"]]  # type: ignore[attr-defined]
        lines.append(f"| {name} | {p50 * 1e3:.2f} ms | {percentile(lat, 99) * 1e3:.2f} ms | {p50 / floor:.2f}x | "  # type: ignore[arg-type]
                     f"{p50 / own:.2f}x | {spread(rates, lambda r: f'{r:.0f}')} | "
                     f"{spread(round_ratios(rows, name, floor_name), times)} | "
                     f"{tput[name].server_us or 0:.0f} | {cell(row, 'ready', sec)} | "
                     f"{cell(row, 'load2', sec)} | {cell(row, 'load3', sec)} | {cell(row, 'rss1', mib)} | "
                     f"{cell(row, 'rss3', mib)} |")
    lines.append("")
    for peer in rows:
        if peer not in (floor_name, "warmd"):
            lines.append(f"- warmd / {peer} calls/s, per round: median (min–max) "
                         f"{spread(round_ratios(rows, 'warmd', peer), times)} over {args.rounds} rounds")
    model_floor = statistics.median(rows[MODEL_FLOOR]["lat"])  # type: ignore[arg-type]
    lines.append(f"- warmd's infer p50 / the floor with the model's: {own / model_floor:.2f}x")
    write_report("peers", lines)


def round_ratios(rows: dict[str, dict[str, object]], name: str, over: str) -> list[float]:
    """`name`'s calls/s over `over`'s, round by round: a round's figures were measured at one pace of the VM."""
    return [a.rate / b.rate for a, b in zip(rows[name]["tput"], rows[over]["tput"])]  # type: ignore[call-overload]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "daemon"))
    sys.exit(main())
