"""The Open Inference Protocol (KServe V2) on the daemon's socket, driven by the real tritonclient package
(in its own environment and process: see tests/tritonclient_run.py) and by a real grpcurl."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from models import affine_spec, affine_specs
from triton_repository import build_repository
from tritonclient_run import triton
from waiting import free_port, wait_until

KIB = 1024


def _url(daemon) -> str:  # type: ignore[no-untyped-def]
    return f"unix:{daemon.socket}"


def test_health_metadata_and_infer_raw_typed_fp16(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 2.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors", extra="version: '3'\n"))
    daemon = start_daemon(specs)
    out = triton(_url(daemon), """
        out["live"], out["ready"] = client.is_server_live(), client.is_server_ready()
        meta = client.get_server_metadata()
        out["server"] = [meta.name, list(meta.extensions)]
        out["model_ready_before"] = client.is_model_ready("affine")
        m = client.get_model_metadata("affine")
        out["model"] = [m.name, list(m.versions), m.platform, [(t.name, t.datatype, list(t.shape)) for t in m.inputs]]
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        inp = grpcclient.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("affine", [inp], outputs=[grpcclient.InferRequestedOutput("y")], request_id="r1")
        out["raw"] = result.as_numpy("y")
        out["id"], out["version"] = result.get_response().id, result.get_response().model_version
        half = grpcclient.InferInput("x", [1, 4], "FP16")
        half.set_data_from_numpy(np.array([[0.5, 1.5, -2, 4]], dtype=np.float16))
        out["fp16"] = client.infer("affine", [half]).as_numpy("y")
        # typed contents: build the request by hand, tritonclient always sends raw bytes
        from tritonclient.grpc import service_pb2
        request = service_pb2.ModelInferRequest(model_name="affine")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
        reply = client._client_stub.ModelInfer(request)
        out["typed"] = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).tolist()
        out["model_ready_after"] = client.is_model_ready("affine")
    """)
    assert out["live"] and out["ready"]
    assert out["server"][0] == "warmd"
    assert {"model_repository", "statistics", "system_shared_memory"} <= set(out["server"][1])
    assert out["model"] == ["affine", ["3"], "torch", [["x", "FP32", [-1, 4]]]]
    assert not out["model_ready_before"] and out["model_ready_after"]
    assert out["raw"] == (2 * np.arange(8, dtype=np.float32).reshape(2, 4)).tolist()
    assert (out["id"], out["version"]) == ("r1", "3")
    assert out["fp16"] == [[1.0, 3.0, -4.0, 8.0]]
    assert out["typed"] == [2.0, 4.0, 6.0, 8.0]


def test_repository_load_unload_and_statistics_share_the_scheduler(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 1.0)
    for name in ("a", "b"):
        # each counts as 150 KiB against a 200 KiB budget: the two never fit together
        (specs / f"{name}.yaml").write_text(affine_spec("w.safetensors", extra=f"memory: {150 * KIB}\n"))
    daemon = start_daemon(specs, config={"cpu_budget": f"{200 * KIB}"})
    out = triton(_url(daemon), """
        out["index0"] = [(m.name, m.state) for m in client.get_model_repository_index().models]
        client.load_model("a")
        x = grpcclient.InferInput("x", [3, 4], "FP32")
        x.set_data_from_numpy(np.ones((3, 4), np.float32))
        for _ in range(2):
            client.infer("a", [x])
        client.load_model("b")              # a is idle and least recently used: evicted for b
        out["index1"] = sorted((m.name, m.state) for m in client.get_model_repository_index().models)
        s = client.get_inference_statistics("a").model_stats[0]
        out["stats"] = [s.inference_count, s.execution_count, s.inference_stats.success.count,
                        s.inference_stats.success.ns > 0, s.last_inference > 0]
        mem = client.get_inference_statistics("b").model_stats[0].memory_usage
        out["memory"] = [(u.type, u.byte_size) for u in mem]
        client.unload_model("b")
        out["index2"] = sorted((m.name, m.state) for m in client.get_model_repository_index().models)
    """)
    assert sorted(out["index0"]) == [["a", "UNAVAILABLE"], ["b", "UNAVAILABLE"]]
    assert out["index1"] == [["a", "UNAVAILABLE"], ["b", "READY"]]
    assert out["stats"] == [6, 2, 2, True, True]
    assert out["memory"] == [["CPU", 150 * KIB]]
    assert out["index2"] == [["a", "UNAVAILABLE"], ["b", "UNAVAILABLE"]]
    with daemon.client() as c:                 # the same scheduler: a pin made here binds V2 loads
        c.pin("a", True)
        c.load("a")
    out = triton(_url(daemon), """
        client.load_model("b")
    """)
    assert out["status"] == "StatusCode.RESOURCE_EXHAUSTED" and "pinned: a" in out["error"]


def test_malformed_requests_are_invalid_argument_and_the_daemon_keeps_serving(start_daemon,
                                                                             short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    out = triton(_url(daemon), """
        from tritonclient.grpc import service_pb2
        def call(request):
            try:
                client._client_stub.ModelInfer(request)
                return "OK"
            except Exception as exc:
                return [str(exc.code()), exc.details()]
        def req(datatype="FP32", shape=(1, 4), raw=b"\\0" * 16, model="affine"):
            r = service_pb2.ModelInferRequest(model_name=model)
            r.inputs.add(name="x", datatype=datatype, shape=list(shape))
            r.raw_input_contents.append(raw)
            return r
        out["short"] = call(req(raw=b"\\0" * 15))
        out["dtype"] = call(req(datatype="FP8"))
        out["negative"] = call(req(shape=(-1, 4)))
        out["huge"] = call(req(shape=(2**40, 2**40)))
        out["rank"] = call(req(shape=(16,), raw=b"\\0" * 64))
        out["model"] = call(req(model="nope"))
        typed = service_pb2.ModelInferRequest(model_name="affine")
        typed.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2])
        out["typed_count"] = call(typed)
        out["still"] = call(req())
    """)
    for case in ("short", "dtype", "negative", "huge", "rank", "typed_count"):
        assert out[case][0] == "StatusCode.INVALID_ARGUMENT", (case, out[case])
    assert "needs 16 bytes, got 15" in out["short"][1]
    assert "unknown dtype 'FP8'" in out["dtype"][1]
    assert out["model"][0] == "StatusCode.NOT_FOUND"
    assert out["still"] == "OK"
    assert daemon.proc.poll() is None


SHM_SNIPPET = """
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    size = x.nbytes
    key_in, key_out = "/warmd-test-in-" + str(__import__("os").getpid()), "/warmd-test-out-" + str(__import__("os").getpid())
    h_in = shm.create_shared_memory_region("in", key_in, size)
    h_out = shm.create_shared_memory_region("out", key_out, size)
    try:
        shm.set_shared_memory_region(h_in, [x])
        client.register_system_shared_memory("in", key_in, size)
        client.register_system_shared_memory("out", key_out, size)
        out["status"] = sorted(client.get_system_shared_memory_status().regions)
        inp = grpcclient.InferInput("x", [4, 4], "FP32")
        inp.set_shared_memory("in", size)
        want = grpcclient.InferRequestedOutput("y")
        want.set_shared_memory("out", size)
        result = client.infer("affine", [inp], outputs=[want])
        out["y_params"] = sorted(result.get_output("y").parameters)
        out["y"] = shm.get_contents_as_numpy(h_out, np.float32, [4, 4]).tolist()   # a copy: the map goes
        bad = grpcclient.InferInput("x", [4, 4], "FP32")
        bad.set_shared_memory("in", size, offset=8)
        try:
            client.infer("affine", [bad])
        except Exception as exc:
            out["bad_offset"] = [exc.status(), exc.message()]
        try:
            client.register_system_shared_memory("escape", "/../etc/passwd", 16)
        except Exception as exc:
            out["bad_key"] = [exc.status(), exc.message()]
        out["tcp"] = __import__("subprocess").run(
            [sys.executable, "-c", OTHER, TCP, key_in], capture_output=True, text=True).stdout.strip()
        client.unregister_system_shared_memory()
        out["after"] = sorted(client.get_system_shared_memory_status().regions)
    finally:
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)
"""

OTHER_CALLER = '''
import sys, numpy as np, tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
tcp, key = sys.argv[1].split("|"), sys.argv[2]
client = grpcclient.InferenceServerClient(url=tcp[0])
headers = {"authorization": "Bearer " + tcp[1]}
regions = sorted(client.get_system_shared_memory_status(headers=headers).regions)
inp = grpcclient.InferInput("x", [4, 4], "FP32")
inp.set_shared_memory("in", 64)
try:
    client.infer("affine", [inp], headers=headers)
    print(regions, "used")
except InferenceServerException as exc:
    print(regions, exc.status())
'''


def test_system_shared_memory_through_tritonclient(start_daemon, short_tmp: Path) -> None:
    port = free_port()
    specs = affine_specs(short_tmp, 3.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs, args=("--tcp", f"127.0.0.1:{port}"))
    token = (Path(daemon.env["XDG_CONFIG_HOME"]) / "warmd" / "token").read_text().strip()
    body = f"OTHER = {OTHER_CALLER!r}\nTCP = {f'127.0.0.1:{port}|{token}'!r}\n" + textwrap.dedent(SHM_SNIPPET)
    out = triton(_url(daemon), body)
    assert out["status"] == ["in", "out"]
    assert out["y_params"] == ["shared_memory_byte_size", "shared_memory_region"]
    assert out["y"] == (3 * np.arange(16, dtype=np.float32).reshape(4, 4)).tolist()
    assert out["bad_offset"][0] == "StatusCode.INVALID_ARGUMENT" and "lies outside" in out["bad_offset"][1]
    assert out["bad_key"][0] == "StatusCode.INVALID_ARGUMENT"
    # another caller (the TCP token) neither sees nor uses the regions registered over the Unix socket
    assert out["tcp"] == "[] StatusCode.INVALID_ARGUMENT"
    assert out["after"] == []


def test_stream_infer_keeps_going_after_a_bad_request(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 2.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    out = triton(_url(daemon), """
        import queue
        results = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for data in ([[1, 2, 3, 4]], [[1, 2, 3]], [[5, 6, 7, 8]]):
            arr = np.array(data, dtype=np.float32)
            inp = grpcclient.InferInput("x", list(arr.shape), "FP32")
            inp.set_data_from_numpy(arr)
            client.async_stream_infer("affine", [inp])
        got = [results.get(timeout=30) for _ in range(3)]
        client.stop_stream()
        out["items"] = [r.as_numpy("y").tolist() if r is not None else "error: " + e.message() for r, e in got]
    """)
    assert out["items"][0] == [[2, 4, 6, 8]]
    assert out["items"][1].startswith("error: [invalid_argument]")
    assert out["items"][2] == [[10, 12, 14, 16]]


def test_grpcurl_lists_both_apis_through_reflection(start_daemon) -> None:
    daemon = start_daemon()
    grpcurl = Path(sys.executable).with_name("grpcurl")
    listed = subprocess.run([str(grpcurl), "-plaintext", "-unix", str(daemon.socket), "list"],
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert {"inference.GRPCInferenceService", "warmd.v1.Warmd", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    live = subprocess.run([str(grpcurl), "-plaintext", "-unix", str(daemon.socket),
                           "inference.GRPCInferenceService/ServerLive"], capture_output=True, text=True, timeout=30)
    assert live.returncode == 0 and '"live": true' in live.stdout


def test_grpcurl_over_tcp_finds_health_without_a_token_and_nothing_else(start_daemon) -> None:
    """Reflection describes public schemas only: open on TCP like health; every other call needs a token."""
    port = free_port()
    daemon = start_daemon(args=("--tcp", f"127.0.0.1:{port}"))
    grpcurl = [str(Path(sys.executable).with_name("grpcurl")), "-plaintext", f"127.0.0.1:{port}"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*grpcurl, *args], capture_output=True, text=True, timeout=30)

    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    described = run("describe", "grpc.health.v1.Health")
    assert described.returncode == 0 and "rpc Check" in described.stdout
    health = run("grpc.health.v1.Health/Check")
    assert health.returncode == 0 and '"status": "SERVING"' in health.stdout
    index = run("inference.GRPCInferenceService/RepositoryIndex")
    assert index.returncode != 0 and "Unauthenticated" in index.stderr
    assert daemon.proc.poll() is None


def test_shared_memory_from_warmds_own_api(start_daemon, short_tmp: Path) -> None:
    from multiprocessing import shared_memory

    from warm import Code, Shared, WarmdError

    specs = affine_specs(short_tmp, 5.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    block = shared_memory.SharedMemory(create=True, size=2 * x.nbytes)
    try:
        np.ndarray(x.shape, np.float32, buffer=block.buf)[:] = x
        with daemon.client() as c:
            c.register_region("frames", "/" + block.name, 2 * x.nbytes)
            result = c.infer("affine", {"x": Shared("frames", x.nbytes, dtype="FP32", shape=(2, 4))},
                             output_regions={"y": Shared("frames", x.nbytes, offset=x.nbytes)})
            assert result.outputs == {} and result.written == {"y": ("FP32", [2, 4])}
            y = np.ndarray(x.shape, np.float32, buffer=block.buf, offset=x.nbytes).copy()
            assert np.array_equal(y, 5 * x)
            with pytest.raises(WarmdError) as info:     # the window ends before the tensor would
                c.infer("affine", {"x": Shared("frames", x.nbytes, offset=x.nbytes + 4, dtype="FP32",
                                               shape=(2, 4))})
            assert info.value.code is Code.INVALID_ARGUMENT and "lies outside" in info.value.message
            c.unregister_region()
            with pytest.raises(WarmdError) as info:
                c.infer("affine", {"x": Shared("frames", x.nbytes, dtype="FP32", shape=(2, 4))})
            assert info.value.code is Code.INVALID_ARGUMENT and "register it first" in info.value.message
    finally:
        block.close()
        block.unlink()


def test_model_config_is_synthesized_from_the_spec(start_daemon, short_tmp: Path) -> None:
    specs, plugins = build_repository(short_tmp)
    daemon = start_daemon(specs, config={"plugins_dir": str(plugins)})
    wait_until(lambda: "simple_string" in {m.name for m in daemon.client().list().models})
    out = triton(_url(daemon), """
        from google.protobuf.json_format import MessageToDict
        client.load_model("simple")
        for name in ("simple", "simple_string", "densenet_onnx", "inception_graphdef"):
            out[name] = MessageToDict(client.get_model_config(name).config, preserving_proto_field_name=True)
    """)
    assert out["simple"] == {
        "name": "simple", "platform": "torch", "backend": "torch", "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": ["16"]},
                  {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": ["16"]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": ["16"]},
                   {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": ["16"]}],
        "dynamic_batching": {}, "instance_group": [{"name": "simple", "count": 1, "kind": "KIND_CPU"}]}
    string = out["simple_string"]     # its provider does not batch: no dynamic batching
    assert string["input"][0]["data_type"] == "TYPE_STRING" and "dynamic_batching" not in string
    densenet = out["densenet_onnx"]          # no batching: max_batch_size 0 (left out of the dict) and full dims
    assert "max_batch_size" not in densenet and densenet["input"][0]["dims"] == ["3", "224", "224"]
    assert out["inception_graphdef"]["output"][0]["name"] == "InceptionV3/Predictions/Softmax"


def test_load_config_override_maps_what_a_spec_has_and_refuses_the_rest(start_daemon, short_tmp: Path) -> None:
    specs, plugins = build_repository(short_tmp)
    daemon = start_daemon(specs, config={"plugins_dir": str(plugins)})
    out = triton(_url(daemon), """
        import json
        def load(config=None, files=None):
            try:
                client.load_model("simple", config=config, files=files)
                c = client.get_model_config("simple").config
                return ["OK", c.max_batch_size, c.dynamic_batching.max_queue_delay_microseconds,
                        c.instance_group[0].kind]
            except InferenceServerException as e:
                return [e.status(), e.message()]
        fetched = json.loads(__import__("google.protobuf.json_format", fromlist=["x"]).MessageToJson(
            client.get_model_config("simple").config))
        fetched["maxBatchSize"] = 4          # a tool sends the config back with one change
        out["round_trip"] = load(json.dumps(fetched))
        out["mapped"] = load(json.dumps({"max_batch_size": 16,
                                         "dynamic_batching": {"max_queue_delay_microseconds": 2000},
                                         "instance_group": [{"kind": "KIND_CPU"}]}))
        out["input"] = load(json.dumps({"input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}]}))
        out["unknown"] = load(json.dumps({"optimization": {"priority": "PRIORITY_MAX"}}))
        out["copies"] = load(json.dumps({"instance_group": [{"kind": "KIND_CPU", "count": 2}]}))
        out["too_big"] = load(json.dumps({"max_batch_size": 100000}))
        out["name"] = load(json.dumps({"name": "other"}))
        out["file"] = load("{}", files={"file:1/model.py": b"import os"})
        out["kept"] = [client.get_model_config("simple").config.max_batch_size]
        out["plain"] = load()
    """)
    assert out["round_trip"] == ["OK", 4, 0, 2]          # 2: KIND_CPU
    assert out["mapped"] == ["OK", 16, 2000, 2]
    for case, needle in (("input", "config field 'input' cannot be overridden"), ("unknown", "optimization"),
                         ("copies", "one copy of a model"), ("too_big", "max_batch to 100000"),
                         ("name", "names model 'other'"), ("file", "file overrides")):
        assert out[case][0] == "StatusCode.INVALID_ARGUMENT", (case, out[case])
        assert out[case][1].startswith("failed to load 'simple': ") and needle in out[case][1], (case, out[case])
    assert out["kept"] == [16]                            # refused overrides changed nothing
    assert out["plain"] == ["OK", 8, 0, 2]                # a load without config: back to the spec file
    assert daemon.proc.poll() is None


def test_cuda_shared_memory_without_a_gpu(start_daemon) -> None:
    """Status and unregister answer (nothing registered); register says there is no device."""
    daemon = start_daemon()
    out = triton(_url(daemon), """
        client.unregister_cuda_shared_memory()
        client.unregister_cuda_shared_memory("never-registered")
        out["status"] = list(client.get_cuda_shared_memory_status().regions)
        try:
            client.register_cuda_shared_memory("gpu", __import__("base64").b64encode(b"\\0" * 64), 0, 1024)
        except InferenceServerException as exc:
            out["register"] = [exc.status(), exc.message()]
        out["after"] = list(client.get_cuda_shared_memory_status().regions)
        out["live"] = client.is_server_live()
    """)
    assert out["status"] == [] and out["after"] == [] and out["live"]
    assert out["register"][0] == "StatusCode.FAILED_PRECONDITION" and "CUDA shared memory needs" in out["register"][1]


def test_bytes_tensors_reach_a_tensor_model_and_text_models_keep_text(start_daemon, short_tmp: Path) -> None:
    specs, plugins = build_repository(short_tmp)
    daemon = start_daemon(specs, config={"plugins_dir": str(plugins)})
    wait_until(lambda: "simple_identity" in {m.name for m in daemon.client().list().models})
    blob = np.array([[b"\x00\xff\x80", b"", "é".encode()]], dtype=object)
    with daemon.client() as c:         # warmd.v1 carries BYTES tensors the same way
        back = c.infer("simple_identity", {"INPUT0": blob}).outputs["OUTPUT0"]
    assert back.dtype == object and back.tolist() == blob.tolist()
    out = triton(_url(daemon), """
        from tritonclient.grpc import service_pb2
        typed = service_pb2.ModelInferRequest(model_name="simple_string")
        for name, values in (("INPUT0", [b"40"] * 16), ("INPUT1", [b"2"] * 16)):
            typed.inputs.add(name=name, datatype="BYTES", shape=[1, 16]).contents.bytes_contents.extend(values)
        reply = client._client_stub.ModelInfer(typed)
        from tritonclient.utils import deserialize_bytes_tensor
        out["typed"] = [deserialize_bytes_tensor(r).tolist()[0].decode() for r in reply.raw_output_contents]
        mixed = service_pb2.ModelInferRequest(model_name="simple")
        mixed.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1]).contents.int_contents.extend([1])
        mixed.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 1])
        mixed.raw_input_contents.extend([b"\\0" * 4, b"\\0" * 4])
        try:
            client._client_stub.ModelInfer(mixed)
        except Exception as exc:
            out["mixed"] = [str(exc.code()), exc.details()]
    """)
    assert out["typed"] == ["42", "38"]
    assert out["mixed"][0] == "StatusCode.INVALID_ARGUMENT" and "must not be specified" in out["mixed"][1]
