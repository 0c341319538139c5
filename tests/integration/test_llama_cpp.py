"""GGUF models through the real daemon and llama.cpp: tiny llama-architecture files built by the tests
(tests/gguf_models.py), chat streamed and unary, cancel, stop strings, the context limit, JSON-schema
output, embeddings, the memory estimate against the measurement, eviction, and Ollama's store read in place."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed (pip install 'warmd[llama-cpp]')")

from gguf_models import TinyLlama, gguf_spec, write_ollama_store, write_tiny_llama  # noqa: E402
from waiting import succeeds, wait_until  # noqa: E402
from warm import Code, WarmdError  # noqa: E402

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "mood": {"enum": ["good", "bad"]}},
          "required": ["ok", "n", "mood"]}


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf")
    write_tiny_llama(root / "tiny.gguf")
    write_tiny_llama(root / "other.gguf", TinyLlama(seed=1))
    write_tiny_llama(root / "embed.gguf", embedding=True)
    write_tiny_llama(root / "wide.gguf", TinyLlama(layers=4, hidden=256, ff=512, seed=2))
    return root


def _daemon(start_daemon, short_tmp: Path, ggufs: Path, specs: dict[str, str], config: dict | None = None,
            env: dict | None = None):  # type: ignore[no-untyped-def]
    folder = short_tmp / "specs"
    folder.mkdir(exist_ok=True)
    for name, text in specs.items():
        (folder / f"{name}.yaml").write_text(text)
    return start_daemon(folder, config={"path_roots": [str(ggufs), str(short_tmp)], **(config or {})}, env=env)


def test_chat_streams_what_the_unary_call_returns_for_the_same_seed(start_daemon, short_tmp: Path,
                                                                    ggufs: Path) -> None:
    daemon = _daemon(start_daemon, short_tmp, ggufs, {"chat": gguf_spec(ggufs / "tiny.gguf", options="n_ctx: 512")})
    talk = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
            "max_tokens": 24, "seed": 11}
    with daemon.client() as c:
        chunks = list(c.infer_stream("chat", parameters=talk))
        texts = [ch.text for ch in chunks if ch.text]
        final = chunks[-1].result.json
        assert len(texts) >= 8 and final["text"] == "".join(texts) == final["message"]["content"]
        assert final["message"]["role"] == "assistant" and final["stopped"] == "length"
        assert final["usage"]["completion_tokens"] == 24 and final["usage"]["prompt_tokens"] > 5
        unary = c.infer("chat", parameters=talk).json
        assert unary == final
        other_seed = c.infer("chat", parameters={**talk, "seed": 12}).json
        assert other_seed["text"] != final["text"]
        # `text` is one more user message: the same conversation given the other way
        as_text = c.infer("chat", text=["hello there"], parameters={
            "messages": talk["messages"][:1], "max_tokens": 24, "seed": 11}).json
        assert as_text["text"] == final["text"]
        # a stop string ends generation before it, and is never sent
        words = final["text"].split()
        stop = next(w for w in words[2:] if len(w) > 2)
        streamed = list(c.infer_stream("chat", parameters={**talk, "stop": [stop]}))
        cut = streamed[-1].result.json
        sent = "".join(ch.text for ch in streamed if ch.text)
        assert cut["stopped"] == "stop" and stop not in sent and sent == cut["text"]
        assert final["text"].startswith(cut["text"])
    cli = daemon.warm("infer", "chat", "--text", "hello there", "--param", f"messages={json.dumps(talk['messages'][:1])}",
                      "--param", "max_tokens=24", "--param", "seed=11", "--stream")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.rstrip("\n") == final["text"]


def test_text_generation_and_the_context_limit_name_n_ctx(start_daemon, short_tmp: Path, ggufs: Path) -> None:
    daemon = _daemon(start_daemon, short_tmp, ggufs, {
        "gen": gguf_spec(ggufs / "tiny.gguf", task="text-generation", options="n_ctx: 256")})
    with daemon.client() as c:
        out = c.infer("gen", text=["once upon a time"], parameters={"max_new_tokens": 10, "seed": 1}).json
        assert out["tokens"] == 10 and out["usage"] == {"prompt_tokens": out["usage"]["prompt_tokens"],
                                                        "completion_tokens": 10}
        for params in ({"max_new_tokens": 5}, {"max_new_tokens": 250}):
            text = "hello " * (300 if params["max_new_tokens"] == 5 else 10)
            with pytest.raises(WarmdError) as info:
                c.infer("gen", text=[text], parameters=params)
            assert info.value.code is Code.INVALID_ARGUMENT and "n_ctx" in info.value.message
        assert c.infer("gen", text=["again"], parameters={"max_new_tokens": 2}).json["tokens"] == 2   # still serving


def test_cancel_mid_stream_frees_the_slot_between_two_tokens(start_daemon, short_tmp: Path, ggufs: Path) -> None:
    # threads: 1 - on a 2-CPU machine shared with other work, llama.cpp's 2-thread OpenMP team for the
    # prompt waits at its barriers for a descheduled partner (200-400 ms with two CPU hogs, 10 ms with one thread)
    daemon = _daemon(start_daemon, short_tmp, ggufs, {"chat": gguf_spec(
        ggufs / "tiny.gguf", options="n_ctx: 4096, threads: 1", extra="max_in_flight: 1\nmax_queue: 0\n")})
    with daemon.client() as c:
        c.load("chat")
        stream = c.infer_stream("chat", text=["go on"], parameters={"max_tokens": 4000})
        for i, _ in enumerate(stream):
            if i == 5:
                break
        with pytest.raises(WarmdError) as info:
            c.infer("chat", text=["x"], parameters={"max_tokens": 1})
        assert info.value.code is Code.BUSY
        stream.close()
        t0 = time.monotonic()
        wait_until(lambda: succeeds(lambda: c.infer("chat", text=["x"], parameters={"max_tokens": 1})),
                   timeout=10, interval=0.005)
        assert time.monotonic() - t0 < 0.5


def test_json_schema_output_parses_and_bad_schemas_are_refused(start_daemon, short_tmp: Path, ggufs: Path) -> None:
    daemon = _daemon(start_daemon, short_tmp, ggufs, {"chat": gguf_spec(ggufs / "tiny.gguf", options="n_ctx: 512")})
    with daemon.client() as c:
        for seed in range(3):
            out = c.infer("chat", text=["answer in JSON"], parameters={
                "max_tokens": 200, "seed": seed, "response_format": {"type": "json_object", "schema": SCHEMA}}).json
            value = json.loads(out["text"])
            assert set(value) == {"ok", "n", "mood"} and isinstance(value["ok"], bool)
            assert 0 <= value["n"] <= 99 and value["mood"] in ("good", "bad") and out["stopped"] == "stop"
        free = c.infer("chat", text=["json"], parameters={"max_tokens": 8, "response_format": {"type": "json_object"}})
        assert free.json["text"].lstrip()[:1] == "{"          # any JSON: an object opens (random weights ramble on)
        with pytest.raises(WarmdError) as info:
            c.infer("chat", text=["x"], parameters={"response_format": {"type": "json_object",
                                                                         "schema": {"type": "nonsense"}}})
        assert info.value.code is Code.INVALID_ARGUMENT and "response_format" in info.value.message


def test_embeddings_from_a_gguf(start_daemon, short_tmp: Path, ggufs: Path) -> None:
    import numpy as np

    daemon = _daemon(start_daemon, short_tmp, ggufs, {
        "emb": gguf_spec(ggufs / "embed.gguf", task="feature-extraction", options="n_ctx: 512, normalize: true")})
    with daemon.client() as c:
        vectors = c.infer("emb", text=["hello world", "good day", "hello world"]).outputs["embedding"]
        assert vectors.shape == (3, 64) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
        assert np.allclose(vectors[0], vectors[2], atol=1e-5) and not np.allclose(vectors[0], vectors[1])
        with pytest.raises(WarmdError) as info:
            c.infer("emb", text=["hello " * 2000])
        assert info.value.code is Code.INVALID_ARGUMENT


def test_memory_estimate_is_within_one_percent_of_the_measurement(start_daemon, short_tmp: Path, ggufs: Path,
                                                                   figures) -> None:  # type: ignore[no-untyped-def]
    daemon = _daemon(start_daemon, short_tmp, ggufs, {
        "wide": gguf_spec(ggufs / "wide.gguf", options="n_ctx: 2048"),
        "long": gguf_spec(ggufs / "wide.gguf", options="n_ctx: 8192"),
        "quant": gguf_spec(ggufs / "wide.gguf", options="n_ctx: 8192, cache_type: q8_0, flash_attn: true")})
    with daemon.client() as c:
        for name in ("wide", "long", "quant"):
            r = c.load(name).residency
            error = (r.estimated_bytes - r.measured_bytes) / r.measured_bytes
            figures(model=name, estimated=r.estimated_bytes, measured=r.measured_bytes, error=error)
            print(f"{name}: estimated {r.estimated_bytes} measured {r.measured_bytes} error {error:+.4%}")
            assert abs(error) < 0.01, (name, r.estimated_bytes, r.measured_bytes)
        sizes = {m.name: m.residency.measured_bytes for m in c.status().resident}
        kv_growth = 4 * (8192 - 2048) * 2 * 128 * 2 * 2     # layers x tokens x kv heads x (K+V dims) x f16
        assert sizes["long"] - sizes["wide"] >= kv_growth
    ps = daemon.warm("ps")
    assert ps.returncode == 0 and "wide" in ps.stdout


def test_a_gguf_model_is_evicted_like_any_other(start_daemon, short_tmp: Path, ggufs: Path) -> None:
    daemon = _daemon(start_daemon, short_tmp, ggufs, {
        "first": gguf_spec(ggufs / "tiny.gguf", options="n_ctx: 512"),
        "second": gguf_spec(ggufs / "other.gguf", options="n_ctx: 512")}, config={"cpu_budget": "12MiB"})
    with daemon.client() as c:
        events = c.watch(kinds=["model.unloaded"])
        c.infer("first", text=["hi"], parameters={"max_tokens": 2})
        c.infer("second", text=["hi"], parameters={"max_tokens": 2})     # 2 x ~7.4 MiB > 12 MiB: first goes
        event = next(events)
        assert (event.model, event.reason) == ("first", "evicted")
        assert [m.name for m in c.status().resident] == ["second"]
        assert c.infer("first", text=["hi"], parameters={"max_tokens": 2}).json["usage"]["completion_tokens"] == 2


def test_the_dry_run_shows_the_layers_a_load_then_puts_on_a_gpu(start_daemon, short_tmp: Path, ggufs: Path) -> None:
    from warmd.providers.llama_cpp import LlamaCppProvider
    from warmd.spec import ModelSpec, Source

    path = ggufs / "wide.gguf"
    spec = ModelSpec(name="wide", file=path, source=Source("path", str(path)), provider="llama-cpp", task="chat",
                     options={"n_ctx": 512})
    total, split = LlamaCppProvider.estimate(spec, path), LlamaCppProvider.layers(spec, path)
    layers = len(split.sizes)
    gpu = total - split.host_bytes(layers - 2) + split.sizes[layers - 2] // 2    # all but the two lowest blocks
    text = gguf_spec(path, options="n_ctx: 512").replace("device: cpu", "device: cuda:0")
    daemon = _daemon(start_daemon, short_tmp, ggufs, {"wide": text},
                     config={"simulated_gpus": [gpu], "gpu_budget": 1.0, "gpu_reserve": 0})
    shown = daemon.warm("load", "wide", "--dry-run")
    assert shown.returncode == 0 and "loads it onto cuda:0" in shown.stdout, shown.stdout
    assert f"{layers - 2} of {layers} layers on a GPU" in shown.stdout
    plan = json.loads(daemon.warm("load", "wide", "--dry-run", "--json").stdout)
    assert (plan["action"], plan["device"], plan["gpu_layers"], plan["total_layers"]) == (
        "load", "cuda:0", layers - 2, layers)
    assert plan["host_bytes"] == split.host_bytes(layers - 2) and plan["bytes"] == total - plan["host_bytes"]
    loaded = daemon.warm("load", "wide")
    assert loaded.returncode == 0 and f"{layers - 2} of {layers} layers on a GPU" in loaded.stderr, loaded.stderr
    [model] = json.loads(daemon.warm("ps", "--json").stdout)
    assert (model["residency"]["gpu_layers"], model["residency"]["total_layers"]) == (layers - 2, layers)
    assert f"{layers - 2}/{layers} on GPU" in daemon.warm("ps").stdout


def test_ollama_models_are_discovered_served_in_place_and_verified(start_daemon, short_tmp: Path,
                                                                   ggufs: Path) -> None:
    store = short_tmp / "ollama"
    template = "{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}{{ range .Messages }}<|{{ .Role }}|>" \
               "{{ .Content }}<|end|>{{ end }}<|assistant|>"
    blob = write_ollama_store(store, ggufs / "tiny.gguf", name="tiny", tag="1b", template=template,
                              params={"num_predict": 7, "num_ctx": 512, "temperature": 0.5})
    (store / "blobs").chmod(0o555)            # warmd never writes into Ollama's store
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    daemon = _daemon(start_daemon, short_tmp, ggufs, {"plain": gguf_spec(ggufs / "tiny.gguf", options="n_ctx: 512")},
                     env={"OLLAMA_MODELS": str(store)})
    try:
        listing = daemon.warm("ls")
        assert listing.returncode == 0 and "tiny:1b" in listing.stdout and "Ollama" in listing.stdout
        added = daemon.warm("add", "ollama://tiny:1b")
        assert added.returncode == 0 and "tiny-1b" in added.stdout, added.stderr
        with daemon.client() as c:
            assert "tiny:1b" not in [d.repo_id for d in c.list(discovered=True).discovered]   # a spec names it now
            wait_until(lambda: c.list().models and "tiny-1b" in [m.name for m in c.list().models])
            talk = {"messages": [{"role": "user", "content": "hello there"}], "seed": 3}
            out = c.infer("tiny-1b", parameters=talk).json
            assert out["usage"]["completion_tokens"] == 7          # num_predict from the params layer
            plain = c.infer("plain", parameters={**talk, "max_tokens": 7}).json
            assert out["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
            with_system = c.infer("tiny-1b", parameters={**talk, "messages": [
                {"role": "system", "content": "be brief"}, *talk["messages"]]}).json
            assert with_system["usage"]["prompt_tokens"] > out["usage"]["prompt_tokens"]   # Ollama's template
            streamed = "".join(ch.text for ch in c.infer_stream("tiny-1b", parameters=talk) if ch.text)
            assert streamed == out["text"]
            model = c.get("tiny-1b")
            assert model.source == "ollama:tiny:1b" and model.files.state == "verified"
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        inode = os.stat(blob).st_ino
        assert any(line.split()[4] == str(inode) and line.endswith(blob.name) for line in maps.splitlines())
        assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before
        cli = daemon.warm("infer", "tiny-1b", "--text", "hello there", "--param", "seed=3", "--stream")
        assert cli.returncode == 0 and cli.stdout.rstrip("\n") == out["text"]
    finally:
        (store / "blobs").chmod(0o755)


def test_a_corrupted_ollama_blob_is_refused(start_daemon, short_tmp: Path, ggufs: Path) -> None:
    store = short_tmp / "ollama"
    blob = write_ollama_store(store, ggufs / "tiny.gguf", name="bad")
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF                       # one flipped byte in the weights
    blob.write_bytes(bytes(data))
    daemon = _daemon(start_daemon, short_tmp, ggufs, {"bad": "provider: llama-cpp\ntask: chat\ndevice: cpu\n"
                                                             "source: {ollama: bad}\n"},
                     env={"OLLAMA_MODELS": str(store)})
    with daemon.client() as c:
        with pytest.raises(WarmdError) as info:
            c.infer("bad", text=["hi"], parameters={"max_tokens": 1})
        assert info.value.code is Code.WEIGHTS_DIGEST_MISMATCH and blob.name in info.value.message
        with pytest.raises(WarmdError) as info:
            c.infer("nothere", text=["hi"])
        assert info.value.code is Code.MODEL_NOT_FOUND
    missing = daemon.warm("add", "ollama://nothere:7b")
    assert missing.returncode == 1 and "weights_missing" in missing.stderr


def test_gguf_from_the_hub_by_pattern_and_from_a_url(start_daemon, short_tmp: Path, ggufs: Path, hub) -> None:
    import hashlib

    q4, q8 = (ggufs / "tiny.gguf").read_bytes(), (ggufs / "other.gguf").read_bytes()
    hub.add_repo("org/tiny-GGUF", {"tiny.Q4_K_M.gguf": q4, "tiny.Q8_0.gguf": q8, "README.md": b"# tiny\n"})
    sha = hashlib.sha256(q8).hexdigest()
    daemon = _daemon(start_daemon, short_tmp, ggufs, {
        "hubbed": "provider: llama-cpp\ntask: chat\ndevice: cpu\noptions: {n_ctx: 512}\n"
                  "source: {hf: org/tiny-GGUF, allow_patterns: ['*Q4_K_M.gguf']}\n",
        "fetched": f"provider: llama-cpp\ntask: chat\ndevice: cpu\noptions: {{n_ctx: 512}}\n"
                   f"source: {{url: '{hub.lfs_endpoint}/lfs/{sha}', sha256: {sha}}}\n",
        "local": gguf_spec(ggufs / "tiny.gguf", options="n_ctx: 512")},
        env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": None})
    talk = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12, "seed": 5}
    with daemon.client() as c:
        from_hub = c.infer("hubbed", parameters=talk).json         # first use downloads only the Q4_K_M file
        assert from_hub == c.infer("local", parameters=talk).json   # the same bytes as the local file
        assert hub.served_bytes("tiny.Q8_0.gguf") == 0
        assert c.get("hubbed").files.bytes_on_disk == len(q4)
        streamed = "".join(ch.text for ch in c.infer_stream("fetched", parameters=talk) if ch.text)
        assert streamed == c.infer("fetched", parameters=talk).json["text"]
        assert c.get("fetched").files.state == "verified"
    for name, text in (("hubbed", from_hub["text"]), ("fetched", streamed)):
        cli = daemon.warm("infer", name, "--text", "hello there", "--param", "max_tokens=12", "--param", "seed=5",
                          "--stream")
        assert cli.returncode == 0 and cli.stdout.rstrip("\n") == text, cli.stderr
