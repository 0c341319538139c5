"""Property-based fuzzing (hypothesis) of the request messages, against the real daemon over its socket:
every reply is a success or a documented code with a message, never INTERNAL/UNKNOWN, and the daemon
keeps serving."""
from __future__ import annotations

import collections
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import affine_spec, affine_specs
from waiting import wait_until
from warmd.errors import METADATA_KEY, Code
from warmd.v1 import warmd_pb2 as pb
from warmd.v1 import warmd_pb2_grpc
from warmd.v2 import inference_pb2 as v2
from warmd.v2 import inference_pb2_grpc

DTYPES = ["FP32", "FP16", "BF16", "FP64", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BYTES",
          "FP8", "", "fp32", "F32\x00", "ÜNICODE"]
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.FAILED_PRECONDITION}
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])

shapes = st.lists(st.one_of(st.integers(-3, 8), st.sampled_from([2**31, 2**40, 2**62, -2**62])), max_size=20)
raws = st.one_of(st.binary(max_size=300), st.builds(lambda n: b"\x01" * n, st.sampled_from([0, 4, 16, 32, 64])))
models = st.sampled_from(["affine", "affine", "affine", "nope", "", "../affine", "a" * 300])
names = st.sampled_from(["x", "x", "y", "", "\x00", "x" * 500])


@pytest.fixture
def channel(start_daemon, short_tmp: Path):  # type: ignore[no-untyped-def]
    specs = affine_specs(short_tmp, 1.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors", extra="keep_alive: -1\n"))
    daemon = start_daemon(specs, config={"max_message_bytes": 1 << 20})
    with daemon.client() as c:
        c.load("affine")
    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        yield ch
    assert daemon.proc.poll() is None, "the daemon died under fuzzing"


def _check(call, seen: collections.Counter | None = None) -> None:  # type: ignore[no-untyped-def]
    try:
        call()
        if seen is not None:
            seen["ok"] += 1
    except grpc.RpcError as err:
        if seen is not None:
            seen[err.code().name] += 1
        assert err.code() in DOCUMENTED, (err.code(), err.details())
        assert err.details(), "an error without a message"
        trailing = dict(err.trailing_metadata() or ())
        if err.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:     # gRPC's own size limit has no code
            assert Code(trailing[METADATA_KEY]), trailing


def _still_serving(ch: grpc.Channel) -> None:
    x = np.ones((1, 4), np.float32)
    reply = warmd_pb2_grpc.WarmdStub(ch).Infer(pb.InferRequest(
        model="affine", inputs=[pb.Tensor(name="x", dtype="FP32", shape=[1, 4], raw=x.tobytes())]), timeout=30)
    assert np.frombuffer(reply.outputs[0].raw, np.float32).tolist() == [1, 1, 1, 1]


def test_fuzz_v1_infer(channel: grpc.Channel, figures) -> None:
    stub = warmd_pb2_grpc.WarmdStub(channel)
    seen: collections.Counter[str] = collections.Counter()

    @FUZZ
    @given(model=models, tensors=st.lists(st.tuples(names, st.sampled_from(DTYPES), shapes, raws), max_size=3),
           text=st.lists(st.text(max_size=20), max_size=3), params=st.sampled_from(["", "{}", "[1]", "{bad", "7"]),
           outputs=st.lists(names, max_size=2), region=st.booleans())
    def run(model, tensors, text, params, outputs, region):  # type: ignore[no-untyped-def]
        request = pb.InferRequest(model=model, text=text, parameters_json=params, outputs=outputs)
        for name, dtype, shape, raw in tensors:
            t = request.inputs.add(name=name, dtype=dtype, shape=shape, raw=raw)
            if region:
                t.region.CopyFrom(pb.RegionRef(region=name, offset=len(raw) - 8, byte_size=len(raw)))
        _check(lambda: stub.Infer(request, timeout=30), seen)

    run()
    _still_serving(channel)
    figures(requests=sum(seen.values()), outcomes=dict(seen))


def test_fuzz_v2_model_infer(channel: grpc.Channel, figures) -> None:
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    seen: collections.Counter[str] = collections.Counter()
    params = st.dictionaries(st.sampled_from(["shared_memory_region", "shared_memory_offset",
                                              "shared_memory_byte_size", "priority", "x"]),
                             st.one_of(st.builds(lambda v: v2.InferParameter(string_param=v), st.text(max_size=10)),
                                       st.builds(lambda v: v2.InferParameter(int64_param=v),
                                                 st.integers(-2**63, 2**63 - 1)),
                                       st.builds(lambda v: v2.InferParameter(bool_param=v), st.booleans())),
                             max_size=3)
    contents = st.one_of(st.none(), st.builds(lambda f: v2.InferTensorContents(fp32_contents=f),
                                              st.lists(st.floats(width=32), max_size=10)),
                         st.builds(lambda i: v2.InferTensorContents(int64_contents=i),
                                   st.lists(st.integers(-2**63, 2**63 - 1), max_size=10)),
                         st.builds(lambda b: v2.InferTensorContents(bytes_contents=b),
                                   st.lists(st.binary(max_size=8), max_size=4)))

    @FUZZ
    @given(model=models, version=st.sampled_from(["", "", "1", "x"]),
           tensors=st.lists(st.tuples(names, st.sampled_from(DTYPES), shapes, params, contents), max_size=3),
           raw=st.lists(raws, max_size=4), outputs=st.lists(st.tuples(names, params), max_size=2))
    def run(model, version, tensors, raw, outputs):  # type: ignore[no-untyped-def]
        request = v2.ModelInferRequest(model_name=model, model_version=version, raw_input_contents=raw)
        for name, dtype, shape, p, c in tensors:
            t = request.inputs.add(name=name, datatype=dtype, shape=shape)
            for k, v in p.items():
                t.parameters[k].CopyFrom(v)
            if c is not None:
                t.contents.CopyFrom(c)
        for name, p in outputs:
            o = request.outputs.add(name=name)
            for k, v in p.items():
                o.parameters[k].CopyFrom(v)
        _check(lambda: stub.ModelInfer(request, timeout=30), seen)

    run()
    _still_serving(channel)
    figures(requests=sum(seen.values()), outcomes=dict(seen))


def test_fuzz_v2_shared_memory_registration(channel: grpc.Channel, figures) -> None:
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    seen: collections.Counter[str] = collections.Counter()

    @FUZZ
    @given(name=names, key=st.one_of(st.sampled_from(["/", "/..", "/../etc/passwd", "/nope", "//x", "", "a/b",
                                                      "/dev/shm/x", "/" + "k" * 300]), st.text(max_size=30)),
           offset=st.integers(0, 2**64 - 1), size=st.integers(0, 2**64 - 1))
    def run(name, key, offset, size):  # type: ignore[no-untyped-def]
        _check(lambda: stub.SystemSharedMemoryRegister(v2.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=offset, byte_size=size), timeout=30), seen)

    run()
    _check(lambda: stub.SystemSharedMemoryUnregister(v2.SystemSharedMemoryUnregisterRequest(), timeout=30))
    _still_serving(channel)
    figures(requests=sum(seen.values()), outcomes=dict(seen))


def test_oversized_message_is_refused_with_the_limit(channel: grpc.Channel) -> None:
    big = np.zeros((1, 2 << 20), np.uint8).tobytes()     # 2 MiB against a 1 MiB limit
    stub = warmd_pb2_grpc.WarmdStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(pb.InferRequest(model="affine", inputs=[pb.Tensor(name="x", dtype="UINT8", shape=[1, 2 << 20],
                                                                     raw=big)]), timeout=30)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    _still_serving(channel)


def test_hostile_spec_files_in_a_live_daemon(start_daemon, short_tmp: Path, figures) -> None:
    """The bad-spec corpus plus generated hostile files, dropped into a running daemon's folder next to a
    good spec: each is rejected with its own error, the good model keeps serving."""
    import shutil

    corpus = Path(__file__).resolve().parents[1] / "data" / "bad_specs"
    specs = affine_specs(short_tmp, 1.0)
    (specs / "good.yaml").write_text(affine_spec("w.safetensors"))
    daemon = start_daemon(specs)
    hostile = [p.name for p in corpus.glob("*.yaml")]
    for name in hostile:
        shutil.copy(corpus / name, specs / name)
    generated = {
        "bytes.yaml": b"provider: torch\nname: \xff\xfe\n",
        "huge.yaml": b"description: " + b"x" * (3 * 2**20) + b"\n",
        "deep.yaml": b"options: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "bomb.yaml": b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                     b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
        "wrongtypes.yaml": b"provider: 7\nsource: [1, 2]\ndevice: {a: b}\nkeep_alive: [x]\ninputs: yes\n",
    }
    for name, data in generated.items():
        (specs / name).write_bytes(data)
    (specs / "escape.yaml").symlink_to("/etc/passwd")
    expected = len(hostile) + len(generated) + 1
    with daemon.client() as c:
        wait_until(lambda: len(c.list().rejected) == expected, timeout=30)
        listing = c.list()
        assert [m.name for m in listing.models] == ["good"]
        assert all(r.message and r.code for r in listing.rejected)
        assert len({r.file for r in listing.rejected}) == expected           # one error per file
        assert np.array_equal(c.infer("good", {"x": np.ones((1, 4), np.float32)}).outputs["y"],
                              np.ones((1, 4), np.float32))
    figures(hostile_files=expected, rejected=expected, good_model_served=True)
