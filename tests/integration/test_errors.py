"""The inference path's error boundary, through the real daemon: whatever a provider raises leaves with a
stable code (invalid_argument, insufficient_memory, provider_failed; never internal), is counted by V2
statistics and Prometheus, and leaves a V2 stream going; declared input dtypes are checked (converted when
exact, else refused) before the provider runs; texts are bounded by `max_input_chars`."""
from __future__ import annotations

import contextlib
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models import affine_spec, affine_specs, write_mlp
from waiting import free_port, rss_bytes, wait_until
from warm import Code, WarmdError
from warmd.v2 import inference_pb2 as v2
from warmd.v2 import inference_pb2_grpc

FAULTY = ("provider: torch\ndevice: cpu\nsource: {path: none.safetensors}\noptions: {factory: 'testmodels.py:Faulty'}\n"
          "inputs: [{name: x, dtype: FP32, shape: [-1, 4]}]\n")


def _specs(root: Path) -> Path:
    from safetensors.numpy import save_file

    specs = affine_specs(root, 2.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    write_mlp(specs, "undeclared")               # the same MLP without `inputs:`: only the runtime can object
    text = (specs / "undeclared.yaml").read_text()
    (specs / "undeclared.yaml").write_text(text[:text.index("inputs:")])
    save_file({}, str(specs / "none.safetensors"))
    (specs / "faulty.yaml").write_text(FAULTY)
    return specs


def _failure(call) -> WarmdError:  # type: ignore[no-untyped-def]
    with pytest.raises(WarmdError) as info:
        call()
    return info.value


def test_provider_failures_have_stable_codes_and_are_counted(start_daemon, short_tmp: Path) -> None:
    port = free_port()
    daemon = start_daemon(_specs(short_tmp), config={"metrics": f"127.0.0.1:{port}"})
    ones = np.ones((1, 4), np.float32)
    with daemon.client() as c:
        # a dtype the model cannot take, undeclared in the spec: torch's RuntimeError is the user's mistake
        err = _failure(lambda: c.infer("undeclared", {"x": np.ones((1, 64), np.int64)}))
        assert err.code is Code.INVALID_ARGUMENT, err
        assert "x INT64 [1, 64]" in err.message and "same dtype" in err.message
        err = _failure(lambda: c.infer("undeclared", {"x": np.ones((1, 3), np.float32)}))
        assert err.code is Code.INVALID_ARGUMENT and "x FP32 [1, 3]" in err.message, err
        err = _failure(lambda: c.infer("faulty", {"x": ones}))               # first value 1: out of memory
        assert err.code is Code.INSUFFICIENT_MEMORY and "out of memory" in err.message, err
        err = _failure(lambda: c.infer("faulty", {"x": 2 * ones}))           # first value 2: a plain bug
        assert err.code is Code.PROVIDER_FAILED and "KeyError" in err.message and "oops" in err.message, err
        assert np.array_equal(c.infer("faulty", {"x": 3 * ones}).outputs["output"], 3 * ones)   # still serving
        assert c.infer("undeclared", {"x": np.ones((1, 64), np.float32)}).outputs["output"].shape == (1, 10)
    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        stats = {s.name: s.inference_stats for s in stub.ModelStatistics(v2.ModelStatisticsRequest(),
                                                                         timeout=10).model_stats}
    assert (stats["undeclared"].fail.count, stats["undeclared"].success.count) == (2, 1)
    assert (stats["faulty"].fail.count, stats["faulty"].success.count) == (2, 1)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    errors = {(s.labels["model"], s.labels["code"]): s.value for f in text_string_to_metric_families(text)
              for s in f.samples if s.name == "warmd_request_errors_total"}
    assert errors == {("undeclared", "invalid_argument"): 2, ("faulty", "insufficient_memory"): 1,
                      ("faulty", "provider_failed"): 1}
    cli = daemon.warm("infer", "undeclared", "--input", "x=[[1,1,1,1]]", "--dtype", "int64")
    assert cli.returncode == 1 and "invalid_argument" in cli.stderr and "internal" not in cli.stderr, cli.stderr


def test_declared_dtypes_convert_when_exact_and_are_refused_otherwise(start_daemon, short_tmp: Path) -> None:
    daemon = start_daemon(_specs(short_tmp))
    x = np.array([[0.5, 1.5, -2, 4]], np.float32)
    with daemon.client() as c:
        want = c.infer("affine", {"x": x}).outputs["y"]
        for exact in (x.astype(np.float16), np.array([[1, 2, 3, 4]], np.int16), np.array([[1, 0, 1, 1]], np.uint8)):
            got = c.infer("affine", {"x": exact}).outputs["y"]
            assert np.array_equal(got, 2 * exact.astype(np.float32)), exact.dtype
        assert np.array_equal(c.infer("affine", {"x": x.astype(np.float16)}).outputs["y"], want)
        for lossy, name in ((np.array([[1, 1, 1, 1]], np.int64), "INT64"), (x.astype(np.float64), "FP64"),
                            (np.array([[1, 1, 1, 1]], np.int32), "INT32")):
            err = _failure(lambda: c.infer("affine", {"x": lossy}))
            assert err.code is Code.INVALID_ARGUMENT, err
            assert f"input 'x' is {name}" in err.message and "declares FP32" in err.message, err.message
            assert "FP16" in err.message                                   # what would convert exactly
    cli = daemon.warm("infer", "affine", "--input", "x=[[1,1,1,1]]", "--dtype", "int64")
    assert cli.returncode == 1 and "invalid_argument" in cli.stderr and "declares FP32" in cli.stderr, cli.stderr


def test_v2_stream_keeps_going_after_provider_failures(start_daemon, short_tmp: Path) -> None:
    daemon = start_daemon(_specs(short_tmp))

    def request(model: str, first: float, dtype=np.float32, width: int = 4) -> v2.ModelInferRequest:  # type: ignore[no-untyped-def]
        arr = np.full((1, width), first, dtype)
        r = v2.ModelInferRequest(model_name=model, id=f"{model}-{first}")
        r.inputs.add(name="x", datatype={np.float32: "FP32", np.int64: "INT64"}[dtype], shape=list(arr.shape))
        r.raw_input_contents.append(arr.tobytes())
        return r

    sent = [request("faulty", 3), request("faulty", 1), request("faulty", 2),
            request("undeclared", 1, np.int64, 64), request("affine", 1, np.int64), request("faulty", 5)]
    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        replies = list(stub.ModelStreamInfer(iter(sent), timeout=60))
    assert len(replies) == len(sent)
    errors = [r.error_message.split("]")[0] + "]" if r.error_message else "" for r in replies]
    assert errors == ["", "[insufficient_memory]", "[provider_failed]", "[invalid_argument]", "[invalid_argument]",
                      ""], [r.error_message for r in replies]
    last = replies[-1].infer_response
    assert last.id == "faulty-5" and np.frombuffer(last.raw_output_contents[0], np.float32).tolist() == [5.0] * 4


def test_text_longer_than_max_input_chars_is_refused_before_the_model(start_daemon, short_tmp: Path,
                                                                      tiny_bert: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    (specs / "enc.yaml").write_text(f"provider: transformers\ntask: feature-extraction\ndevice: cpu\n"
                                    f"source: {{path: {tiny_bert}}}\nmax_input_chars: 2000\n")
    daemon = start_daemon(specs, config={"path_roots": [str(tiny_bert)]})
    with daemon.client() as c:
        assert c.infer("enc", text=["a " * 250]).outputs["embedding"].shape == (1, 32)     # 500 characters
        err = _failure(lambda: c.infer("enc", text=["fine", "b" * 2001]))
        assert err.code is Code.INVALID_ARGUMENT and "text 1 is 2001 characters" in err.message, err
        assert "at most 2000" in err.message and "max_input_chars" in err.message
        # within max_input_chars but over the model's 512 positions: refused, naming the context length
        err = _failure(lambda: c.infer("enc", text=["a " * 600]))
        assert err.code is Code.INVALID_ARGUMENT and "context length" in err.message, err
        assert "512 tokens" in err.message and "max_length" in err.message
        assert c.infer("enc", text=["a b"]).outputs["embedding"].shape == (1, 32)


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Path:
    from models import write_tiny_transformer

    write_tiny_transformer(tmp_path / "bert", "bert")
    return tmp_path / "bert"


def test_a_huge_text_is_refused_at_once_and_memory_comes_back(start_daemon, short_tmp: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    (specs / "minilm.yaml").write_text((Path(__file__).parents[2] / "specs" / "minilm.yaml").read_text())
    daemon = start_daemon(specs)
    huge = "word " * (2 * 2**20)                                 # 10 MiB: the default max_input_chars is 100000
    with daemon.client(timeout=120) as c:
        for _ in range(2):
            c.infer("minilm", text=["warm up " * 1000])
        before = rss_bytes(daemon.proc.pid) / 2**20
        for _ in range(3):
            t0 = time.monotonic()
            err = _failure(lambda: c.infer("minilm", text=[huge]))
            assert err.code is Code.INVALID_ARGUMENT and "at most 100000" in err.message, err
            assert time.monotonic() - t0 < 5                    # no tokenizing: it was 9.5 s per call
        for _ in range(3):
            c.infer("minilm", text=["word " * 19_000])           # 95000 characters: accepted, then trimmed
        grown = lambda: rss_bytes(daemon.proc.pid) / 2**20 - before  # noqa: E731
        with contextlib.suppress(AssertionError):                # the trim follows the big calls by 0.1 s
            wait_until(lambda: grown() < 64, timeout=10)
        after = grown()
        assert c.infer("minilm", text=["hello"]).outputs["embedding"].shape == (1, 384)
    assert after < 64, (before, after)                          # it grew by ~900 MiB and kept it


def test_a_request_over_max_message_bytes_names_the_limit_and_the_setting(start_daemon, short_tmp: Path) -> None:
    daemon = start_daemon(_specs(short_tmp), config={"max_message_bytes": "1MiB"})
    big = np.zeros((2**16, 4), np.float32)                               # 1 MiB of values, over the limit
    with daemon.client() as c:
        err = _failure(lambda: c.infer("affine", {"x": big}))
        assert err.code is Code.INVALID_ARGUMENT, err                    # it was `busy`
        assert "max_message_bytes" in err.message and "1.0 MiB (1048576 bytes)" in err.message, err.message
        assert "request" in err.message
        assert c.infer("affine", {"x": big[:1000]}).outputs["y"].shape == (1000, 4)
    np.save(short_tmp / "big.npy", big)
    cli = daemon.warm("infer", "affine", "--input", f"x=@{short_tmp / 'big.npy'}")
    assert cli.returncode == 1 and "[invalid_argument]" in cli.stderr and "max_message_bytes" in cli.stderr, cli.stderr


def test_other_user_mistakes_are_invalid_argument_and_change_nothing(start_daemon, short_tmp: Path) -> None:
    from multiprocessing import shared_memory

    specs = _specs(short_tmp)
    daemon = start_daemon(specs)
    block = shared_memory.SharedMemory(create=True, size=4096)
    try:
        with daemon.client() as c:
            for name in ("a/b", "../up", "Upper"):               # online, "a/b" was internal: FileNotFoundError
                err = _failure(lambda: c.add("hf://org/model", name=name))
                assert err.code is Code.INVALID_ARGUMENT and "not a model name" in err.message, (name, err)
            err = _failure(lambda: c.register_region("r", "/" + block.name, 16, offset=-8))
            assert err.code is Code.INVALID_ARGUMENT and "offset" in err.message, err
            c.register_region("r", "/" + block.name, 16)                  # the refused one left nothing behind
    finally:
        block.close()
        block.unlink()
    assert sorted(p.name for p in specs.glob("*.yaml")) == ["affine.yaml", "faulty.yaml", "undeclared.yaml"]
    assert not list(short_tmp.glob("*.yaml*")) and not list(specs.glob(".*"))
