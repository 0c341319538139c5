"""The Ollama dialect of the HTTP front with the official `ollama` client against the real daemon: listing,
chat and generate streamed and unary on a tiny GGUF (what `warm infer` gives for the same seed), embeddings,
keep_alive within max_keep_alive and never over a pin, load and unload by empty requests, a pull's NDJSON
progress from warmd's download job, delete, errors and scopes."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed (pip install 'warmd[llama-cpp]')")
ollama = pytest.importorskip("ollama")

from gguf_models import gguf_spec, write_tiny_llama  # noqa: E402
from httpfront import HttpDaemon, serve  # noqa: E402
from waiting import wait_until  # noqa: E402

TALK = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf")
    write_tiny_llama(root / "tiny.gguf")
    write_tiny_llama(root / "embed.gguf", embedding=True)
    return root


@pytest.fixture
def front(start_daemon, short_tmp: Path, ggufs: Path) -> HttpDaemon:  # type: ignore[no-untyped-def]
    tiny = ggufs / "tiny.gguf"
    return serve(start_daemon, short_tmp, {
        "chat": gguf_spec(tiny, options="n_ctx: 512"),
        "gen": gguf_spec(tiny, task="text-generation", options="n_ctx: 512"),
        "pinned": gguf_spec(tiny, options="n_ctx: 512", extra="pin: true\n"),
        "embed": gguf_spec(ggufs / "embed.gguf", task="feature-extraction"),
    }, config={"max_keep_alive": "60s"}, roots=(ggufs,))


def client(front: HttpDaemon, token: str | None = None) -> "ollama.Client":
    return ollama.Client(host=front.base, headers={"Authorization": f"Bearer {token or front.token}"}, timeout=60)


def test_listing_chat_generate_and_embeddings(front: HttpDaemon) -> None:
    c = client(front)
    assert c.list().models and {m.model for m in c.list().models} == {"chat:latest", "gen:latest", "pinned:latest",
                                                                      "embed:latest"}
    assert c.ps().models == []
    assert httpx.get(front.base + "/api/version", headers={"Authorization": f"Bearer {front.token}"}).json()["version"]
    options = {"num_predict": 10, "seed": 4}
    unary = c.chat(model="chat:latest", messages=TALK, options=options)
    assert unary.done and unary.done_reason == "length" and unary.eval_count == 10 and unary.message.role == "assistant"
    with front.daemon.client() as w:
        same = w.infer("chat", parameters={"messages": TALK, "max_tokens": 10, "seed": 4}).json
    assert unary.message.content == same["text"] and unary.prompt_eval_count == same["usage"]["prompt_tokens"]
    pieces = list(c.chat(model="chat", messages=TALK, options=options, stream=True))
    assert len(pieces) >= 4 and "".join(p.message.content for p in pieces) == same["text"]
    assert [p.done for p in pieces].count(True) == 1 and pieces[-1].done and pieces[-1].eval_count == 10

    generated = c.generate(model="gen", prompt="once upon", options={"num_predict": 6, "seed": 1})
    streamed = list(c.generate(model="gen", prompt="once upon", options={"num_predict": 6, "seed": 1}, stream=True))
    assert generated.eval_count == 6 and "".join(p.response for p in streamed) == generated.response
    ps = c.ps().models
    assert {m.model for m in ps} == {"chat:latest", "gen:latest"} and all(m.size > 0 for m in ps)
    shown = c.show("chat")
    assert shown.details.format == "gguf" and "completion" in shown.capabilities

    with front.daemon.client() as w:
        expected = w.infer("embed", text=["a cat", "a dog"]).outputs["embedding"]
    assert np.allclose(c.embed(model="embed", input=["a cat", "a dog"]).embeddings, expected, atol=1e-6)
    assert np.allclose(c.embeddings(model="embed", prompt="a cat").embedding, expected[0], atol=1e-6)
    # curl sends JSON as a form (-d), streaming by default: lines of JSON
    body = json.dumps({"model": "chat", "messages": TALK, "options": options})
    raw = httpx.post(front.base + "/api/chat", content=body, headers={
        "Authorization": f"Bearer {front.token}", "Content-Type": "application/x-www-form-urlencoded"})
    assert raw.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in raw.text.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == same["text"] and lines[-1]["done"]


def test_keep_alive_is_capped_and_never_overrides_a_pin(front: HttpDaemon) -> None:
    c = client(front)
    c.chat(model="chat", messages=TALK, options={"num_predict": 1}, keep_alive="1h")
    expires = next(m.expires_at for m in c.ps().models if m.model == "chat:latest").timestamp()
    assert time.time() < expires <= time.time() + 61                # max_keep_alive: 60s
    c.chat(model="pinned", messages=TALK, options={"num_predict": 1}, keep_alive=0)
    c.chat(model="chat", messages=TALK, options={"num_predict": 1}, keep_alive=0)
    wait_until(lambda: front.state("chat") == "AVAILABLE", timeout=20)    # 0: unloaded once idle
    assert front.state("pinned") == "READY"
    # an empty request loads; with keep_alive 0 it unloads, but never a pinned model
    assert c.generate(model="gen").done_reason == "load" and front.state("gen") == "READY"
    assert c.chat(model="pinned", messages=[], keep_alive=0).done_reason == "unload"
    assert c.generate(model="gen", keep_alive=0).done_reason == "unload"
    wait_until(lambda: front.state("gen") == "AVAILABLE", timeout=20)      # let go once idle...
    assert front.state("pinned") == "READY"                                 # ...but never a pinned model


def test_errors_and_scopes_in_ollama_shape(front: HttpDaemon) -> None:
    c = client(front)
    with pytest.raises(ollama.ResponseError) as info:
        c.chat(model="nope", messages=TALK)
    assert info.value.status_code == 404 and "no model named 'nope'" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        c.chat(model="chat", messages=TALK, options={"temperature": -3})
    assert info.value.status_code == 400 and "'temperature' must be" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        c.chat(model="chat", messages=TALK, keep_alive="soon")
    assert info.value.status_code == 400 and "keep_alive" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client(front, "wrong").list()
    assert info.value.status_code == 401
    infer = client(front, front.scoped("infer"))
    assert infer.chat(model="chat", messages=TALK, options={"num_predict": 2}).eval_count == 2
    for call in (lambda: infer.pull("chat"), lambda: infer.delete("chat")):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 403 and "needs 'admin'" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client(front, front.scoped("read", "r")).chat(model="chat", messages=TALK)
    assert info.value.status_code == 403


def test_pull_streams_the_download_job_and_delete_removes_the_files(start_daemon, short_tmp: Path, hub) -> None:
    payload = os.urandom(6 * 2**20)
    hub.add_repo("org/big", {"model.safetensors": payload, "config.json": b'{"a": 1}'})
    hub.rate["model.safetensors"] = 8 * 2**20
    front = serve(start_daemon, short_tmp, {"big": "provider: sentence-transformers\ndevice: cpu\n"
                                                   "source: {hf: org/big}\n"},
                  env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": None})
    c = client(front)
    progress = list(c.pull("big:latest", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    done = [p.completed for p in progress if p.completed is not None]
    assert len(done) >= 2 and done == sorted(done) and done[-1] == progress[-2].total >= len(payload)
    assert c.pull("big").status == "success"           # already on disk
    with front.daemon.client() as w:
        assert w.get("big").files.state in ("complete", "verified")
    c.delete("big")
    with front.daemon.client() as w:
        assert w.get("big").files.state == "missing"
    with pytest.raises(ollama.ResponseError) as info:
        c.delete("nope")
    assert info.value.status_code == 404
