"""Calling models through the real daemon: streamed generation (transformers, a tiny random GPT-2 with a
real tokenizer), cancel and deadlines that free the slot, `busy` under overload, progress of long jobs,
and the transformers encoder tasks."""
from __future__ import annotations

import os
import threading
import time
from typing import Any
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from models import affine_spec, affine_specs, write_factory, write_tiny_transformer
from waiting import succeeds, wait_until
from warm import Client, Code, WarmdError


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per module (importing transformers takes seconds): gpt2/, bert/, bert-classifier/."""
    root = tmp_path_factory.mktemp("tiny")
    for kind in ("gpt2", "bert", "bert-classifier"):
        write_tiny_transformer(root / kind, kind)
    return root


def _spec(specs: Path, name: str, folder: Path, task: str, extra: str = "") -> None:
    (specs / f"{name}.yaml").write_text(f"provider: transformers\ntask: {task}\ndevice: cpu\n"
                                        f"source: {{path: {folder}}}\n{extra}")


def _daemon(start_daemon, short_tmp: Path, tiny_models: Path, extra: str = ""):  # type: ignore[no-untyped-def]
    specs = short_tmp / "specs"
    specs.mkdir()
    _spec(specs, "gpt", tiny_models / "gpt2", "text-generation", extra)
    return start_daemon(specs, config={"path_roots": [str(tiny_models)]})


def test_generation_streams_tokens_and_matches_the_unary_result(start_daemon, short_tmp: Path,
                                                                tiny_models: Path) -> None:
    daemon = _daemon(start_daemon, short_tmp, tiny_models)
    with daemon.client() as c:
        chunks = list(c.infer_stream("gpt", text=["hello there"], parameters={"max_new_tokens": 12}))
        texts = [ch.text for ch in chunks if ch.text]
        final = chunks[-1].result
        assert final is not None and len(texts) >= 6          # token by token, not one block at the end
        assert final.json["text"] == "".join(texts) and final.json["tokens"] == 12
        assert final.json["stopped"] == "length"
        unary = c.infer("gpt", text=["hello there"], parameters={"max_new_tokens": 12}).json
        assert unary["text"] == final.json["text"]              # greedy: the same text both ways
        stop = texts[2] if texts[2].strip() else texts[3]
        cut = c.infer("gpt", text=["hello there"], parameters={"max_new_tokens": 12, "stop": stop}).json
        assert cut["stopped"] == "stop" and stop not in cut["text"] and final.json["text"].startswith(cut["text"])
        for bad in ({"max_new_tokens": -1}, {"max_new_tokens": "lots"}, {"temperature": "hot"}, {"top_p": 2},
                    {"stop": [1]}):
            with pytest.raises(WarmdError) as info:               # temperature, top_p, stop were internal
                c.infer("gpt", text=["x"], parameters=bad)
            assert info.value.code is Code.INVALID_ARGUMENT and next(iter(bad)) in info.value.message, info.value
    cli = daemon.warm("infer", "gpt", "--text", "hello there", "--param", "max_new_tokens=12", "--stream")
    assert cli.returncode == 0 and cli.stdout.strip() == final.json["text"].strip()


def test_generation_past_the_context_is_refused_before_generating(start_daemon, short_tmp: Path,
                                                                 tiny_models: Path) -> None:
    import transformers

    from models import CONTEXT

    prompt = len(transformers.AutoTokenizer.from_pretrained(str(tiny_models / "gpt2"))("hello there")["input_ids"])
    daemon = _daemon(start_daemon, short_tmp, tiny_models)
    with daemon.client() as c:
        c.load("gpt")
        t0 = time.monotonic()
        with pytest.raises(WarmdError) as info:       # it was `internal: IndexError` once past the positions
            c.infer("gpt", text=["hello there"], parameters={"max_new_tokens": CONTEXT})
        assert time.monotonic() - t0 < 2                # refused before generating 32768 tokens
        assert info.value.code is Code.INVALID_ARGUMENT, info.value
        assert f"context length of model 'gpt' ({CONTEXT} tokens" in info.value.message
        assert f"at most {CONTEXT - prompt} new tokens" in info.value.message
        assert c.infer("gpt", text=["hello there"], parameters={"max_new_tokens": 3}).json["tokens"] == 3


def test_cancel_mid_stream_stops_the_model_and_frees_its_slot(start_daemon, short_tmp: Path,
                                                              tiny_models: Path) -> None:
    daemon = _daemon(start_daemon, short_tmp, tiny_models, "max_in_flight: 1\nmax_queue: 0\n")
    with daemon.client() as c:
        c.load("gpt")
        stream = c.infer_stream("gpt", text=["go on"], parameters={"max_new_tokens": 20000})
        for i, chunk in enumerate(stream):
            if i == 5:
                break
        with pytest.raises(WarmdError) as info:         # still generating a moment ago: the slot was taken
            c.infer("gpt", text=["x"], parameters={"max_new_tokens": 1})
        assert info.value.code is Code.BUSY
        stream.close()                                  # leaving the loop cancels the call
        t0 = time.monotonic()
        wait_until(lambda: succeeds(lambda: c.infer("gpt", text=["x"], parameters={"max_new_tokens": 1})),
                   timeout=10, interval=0.005)
        freed_s = time.monotonic() - t0
    assert freed_s < 0.5, freed_s                       # bench/calls.py measures it; the goal is 100 ms


def test_deadline_stops_generation_with_deadline_exceeded(start_daemon, short_tmp: Path,
                                                         tiny_models: Path) -> None:
    daemon = _daemon(start_daemon, short_tmp, tiny_models, "max_in_flight: 1\nmax_queue: 0\n")
    with daemon.client() as c:
        c.load("gpt")
    with Client(daemon.socket, timeout=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(WarmdError) as info:
            c.infer("gpt", text=["go on"], parameters={"max_new_tokens": 20000})
        assert info.value.code is Code.DEADLINE_EXCEEDED and time.monotonic() - t0 < 2
    with daemon.client() as c:                           # the model stopped: its only slot is free again
        wait_until(lambda: succeeds(lambda: c.infer("gpt", text=["x"], parameters={"max_new_tokens": 1})), timeout=5)


def test_overload_is_busy_at_once_never_a_hang(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "slow.yaml").write_text(affine_spec("w.safetensors", delay=0.6, extra="max_in_flight: 1\nmax_queue: 1\n"))
    daemon = start_daemon(specs)
    x = np.ones((1, 4), np.float32)
    outcomes: list[tuple[str, float]] = []
    with daemon.client() as c:
        c.load("slow")

        def call() -> None:
            t0 = time.monotonic()
            try:
                c.infer("slow", {"x": x})
                outcomes.append(("ok", time.monotonic() - t0))
            except WarmdError as err:
                outcomes.append((err.code.value, time.monotonic() - t0))

        threads = [threading.Thread(target=call) for _ in range(5)]
        for t in threads:
            t.start()
            time.sleep(0.05)                              # in order: one runs, one queues, three are turned away
        for t in threads:
            t.join(timeout=30)
    assert sorted(o for o, _ in outcomes) == ["busy", "busy", "busy", "ok", "ok"]
    assert all(s < 0.3 for o, s in outcomes if o == "busy"), outcomes
    out = daemon.warm("infer", "slow", "--input", "x=[[1,2,3,4]]")
    assert out.returncode == 0


def test_quick_calls_that_find_the_slot_taken_wait_their_turn_and_all_answer(start_daemon, short_tmp: Path) -> None:
    """A quick model's calls run on the event loop; a big request runs on a worker thread and holds the one
    slot meanwhile, so the quick calls arriving then queue on the loop (api/aio.py) and run once granted."""
    specs = affine_specs(short_tmp, 2.0)
    (specs / "one.yaml").write_text(affine_spec("w.safetensors", extra="max_in_flight: 1\nmax_queue: 64\n"))
    daemon = start_daemon(specs)
    small, big = np.arange(4, dtype=np.float32)[None], np.ones((16384, 4), np.float32)     # big: 256 KiB
    with daemon.client() as c:
        want_small, want_big = c.infer("one", {"x": small}).outputs["y"], c.infer("one", {"x": big}).outputs["y"]
        for _ in range(5):
            c.infer("one", {"x": small})           # measured quick: from now on its small calls run on the loop
        wrong: list[object] = []

        def calls(x: np.ndarray, want: np.ndarray, count: int) -> None:
            with daemon.client(timeout=60) as own:
                for _ in range(count):
                    try:
                        if not np.array_equal(own.infer("one", {"x": x}).outputs["y"], want):
                            wrong.append("a wrong answer")
                    except WarmdError as err:
                        wrong.append(err)

        threads = [threading.Thread(target=calls, args=(big, want_big, 10)) for _ in range(2)]
        threads += [threading.Thread(target=calls, args=(small, want_small, 30)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert wrong == [] and not any(t.is_alive() for t in threads)
        residency = c.get("one").residency
        assert residency.in_flight == 0
    stats = _v2_statistics(daemon, "one")
    assert stats.inference_stats.success.count == 7 + 2 * 10 + 6 * 30 and stats.inference_stats.fail.count == 0


def _v2_statistics(daemon, model: str):  # type: ignore[no-untyped-def]
    import grpc

    from warmd.v2 import inference_pb2 as v2
    from warmd.v2 import inference_pb2_grpc

    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        [stats] = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
            v2.ModelStatisticsRequest(name=model)).model_stats
    return stats


def test_progress_of_a_long_job_streams_and_cancel_stops_it(start_daemon, short_tmp: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    write_factory(specs)
    from safetensors.numpy import save_file

    save_file({}, str(specs / "none.safetensors"))
    (specs / "frames.yaml").write_text("provider: torch\ndevice: cpu\nsource: {path: none.safetensors}\n"
                                       "options: {factory: 'testmodels.py:Frames'}\nmax_in_flight: 1\n"
                                       "max_queue: 0\n")
    daemon = start_daemon(specs)
    video = np.ones((10, 3), np.float32)
    with daemon.client() as c:
        chunks = list(c.infer_stream("frames", {"x": video}))
        assert [ch.progress for ch in chunks[:-1]] == [(i, 10, "frames") for i in range(1, 11)]
        assert np.array_equal(chunks[-1].result.outputs["output"], 2 * video)
        stream = c.infer_stream("frames", {"x": np.ones((100000, 3), np.float32)})
        next(stream)
        stream.close()
        t0 = time.monotonic()
        wait_until(lambda: succeeds(lambda: c.infer("frames", {"x": video[:1]})), timeout=10, interval=0.005)
        assert time.monotonic() - t0 < 0.5


def test_encoder_tasks(start_daemon, short_tmp: Path, tiny_models: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    _spec(specs, "enc", tiny_models / "bert", "feature-extraction")
    _spec(specs, "cls", tiny_models / "bert-classifier", "text-classification")
    _spec(specs, "tok", tiny_models / "bert-classifier", "token-classification")
    _spec(specs, "wrong", tiny_models / "bert", "summarization")
    daemon = start_daemon(specs, config={"path_roots": [str(tiny_models)]})
    with daemon.client() as c:
        emb = c.infer("enc", text=["a b", "a longer text here"]).outputs["embedding"]
        assert emb.shape == (2, 32) and np.isfinite(emb).all()
        again = c.infer("enc", text=["a b"]).outputs["embedding"]
        assert np.allclose(again[0], emb[0], atol=1e-5)           # padding does not change a text's vector
        labels = c.infer("cls", text=["good", "bad"])
        assert labels.outputs["logits"].shape == (2, 3)
        assert [x["label"] for x in labels.json] == [["neg", "neu", "pos"][i] for i in
                                                     labels.outputs["logits"].argmax(-1)]
        tokens = c.infer("tok", text=["hello world"]).json[0]
        assert [t["token"] for t in tokens] == ["[CLS]", "hello", "world", "[SEP]"]
        [rejected] = c.list().rejected                            # a task the spec format does not know
        assert rejected.file.endswith("wrong.yaml") and rejected.field == "task"



def test_dynamic_batching_gives_the_unbatched_results_in_fewer_calls(start_daemon, short_tmp: Path) -> None:
    import grpc

    from models import write_mlp
    from warmd.v2 import inference_pb2 as v2
    from warmd.v2 import inference_pb2_grpc

    specs = short_tmp / "specs"
    specs.mkdir()
    write_mlp(specs, "plain")
    write_mlp(specs, "batched")
    text = (specs / "batched.yaml").read_text()
    (specs / "batched.yaml").write_text(text + "max_batch: 8\nmax_delay_ms: 200\nmax_in_flight: 8\n")
    daemon = start_daemon(specs)
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((rows, 64), dtype=np.float32) for rows in (1, 2, 1, 3, 1, 1, 2, 1)]
    def statistics() -> Any:
        with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
            [stats] = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
                v2.ModelStatisticsRequest(name="batched"), timeout=10).model_stats
        return stats

    with daemon.client() as c:
        c.load("batched")
        expected = [c.infer("plain", {"x": x}).outputs["y"] for x in inputs]
        # The first wave batches on worker threads, which measures the batch's forward quick; the second
        # batches on the event loop (batching.py's `join`).
        executed = 0
        for wave in (1, 2):
            got: dict[int, np.ndarray] = {}

            def call(k: int) -> None:
                got[k] = c.infer("batched", {"x": inputs[k]}).outputs["y"]

            threads = [threading.Thread(target=call, args=(k,)) for k in range(len(inputs))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            assert all(np.allclose(got[k], expected[k], atol=1e-6) for k in range(len(inputs)))
            stats = statistics()
            assert stats.inference_count == wave * sum(len(x) for x in inputs)     # rows
            assert stats.inference_stats.success.count == wave * len(inputs)       # requests
            assert stats.execution_count - executed < len(inputs)                   # fewer provider calls
            executed = stats.execution_count


THREADS_SPEC = ("task: custom\nprovider: torch\ndevice: cpu\nsource: {path: none.safetensors}\n"
                "options: {factory: testmodels.py:Threads}\n")


@pytest.mark.parametrize(("config", "env", "expected"), [
    ({}, {}, max(1, (os.cpu_count() or 1) // 4)),                # the default: the CPUs / 4, at least 1
    ({"cpu_threads": 2}, {}, 2),                                  # (torch caps it at the CPUs there are)
    ({"cpu_threads": 1}, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, 2),   # the environment wins
])
def test_a_call_on_the_cpu_runs_with_cpu_threads_intra_op_threads(start_daemon, short_tmp: Path, config: dict,
                                                                   env: dict, expected: int) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    write_factory(specs)
    save_file({}, str(specs / "none.safetensors"))     # the module has no weights
    (specs / "threads.yaml").write_text(THREADS_SPEC)
    daemon = start_daemon(specs, config=config, env={"OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None, **env})
    with daemon.client() as c:
        assert c.infer("threads", {"x": np.zeros((1, 1), np.float32)}).outputs["output"].tolist() == [[expected]]
