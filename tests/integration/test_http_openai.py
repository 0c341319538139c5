"""The OpenAI dialect of the HTTP front with the official `openai` client against the real daemon over
loopback: chat unary and streamed on a tiny GGUF (the same text `warm infer` gives for the same seed),
completions, JSON schema output, every error status, scopes, a request that loads its model, closing a
stream frees the slot, raw SSE framing through `curl -N`, the drain on SIGTERM, where it may listen."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed (pip install 'warmd[llama-cpp]')")
openai = pytest.importorskip("openai")

from gguf_models import gguf_spec, write_tiny_llama  # noqa: E402
from httpfront import HttpDaemon, serve  # noqa: E402
from waiting import free_port, wait_until  # noqa: E402

TALK = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                          "maximum": 9}},
          "required": ["ok", "n"]}


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf")
    write_tiny_llama(root / "tiny.gguf")
    return root


@pytest.fixture
def front(start_daemon, short_tmp: Path, ggufs: Path) -> HttpDaemon:  # type: ignore[no-untyped-def]
    tiny = ggufs / "tiny.gguf"
    return serve(start_daemon, short_tmp, {
        "chat": gguf_spec(tiny, options="n_ctx: 4096"),
        "gen": gguf_spec(tiny, task="text-generation", options="n_ctx: 512"),
        "one": gguf_spec(tiny, options="n_ctx: 4096", extra="max_in_flight: 1\nmax_queue: 0\n"),
        "huge": gguf_spec(tiny, extra="memory: 100TiB\n"),
    }, config={"metrics": f"127.0.0.1:{free_port()}", "drain_timeout": "60s"}, roots=(ggufs,))


def metric(front: HttpDaemon, line: str) -> bool:
    """Whether the daemon's metrics have `line` (the statistics every front's requests go through)."""
    port = front.daemon.log().split("metrics on http://127.0.0.1:")[1].split("/")[0]
    return line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines()


def client(front: HttpDaemon, token: str | None = None) -> "openai.OpenAI":
    return openai.OpenAI(base_url=front.base + "/v1", api_key=token or front.token, max_retries=0, timeout=60)


def test_chat_unary_and_streamed_give_what_warm_infer_gives(front: HttpDaemon) -> None:
    c = client(front)
    assert {m.id for m in c.models.list()} == {"chat", "gen", "one", "huge"}
    assert c.models.retrieve("chat").owned_by == "warmd"
    assert front.state("chat") == "AVAILABLE"             # the first request loads it, and waits
    unary = c.chat.completions.create(model="chat", messages=TALK, max_tokens=12, seed=7)
    assert front.state("chat") == "READY"
    text = unary.choices[0].message.content
    assert unary.model == "chat" and unary.choices[0].finish_reason == "length"
    assert unary.choices[0].message.role == "assistant"
    assert unary.usage.completion_tokens == 12 and unary.usage.total_tokens == unary.usage.prompt_tokens + 12
    with front.daemon.client() as w:
        same = w.infer("chat", parameters={"messages": TALK, "max_tokens": 12, "seed": 7}).json
    assert same["text"] == text and same["usage"]["prompt_tokens"] == unary.usage.prompt_tokens

    chunks = list(c.chat.completions.create(model="chat", messages=TALK, max_tokens=12, seed=7, stream=True,
                                            stream_options={"include_usage": True}))
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) >= 4 and "".join(pieces) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    # max_completion_tokens wins over max_tokens; a stop string ends it and is never sent
    short = c.chat.completions.create(model="chat", messages=TALK, max_tokens=12, max_completion_tokens=3, seed=7)
    assert short.usage.completion_tokens == 3
    stop = next(w for w in text.split()[2:] if len(w) > 2)
    cut = c.chat.completions.create(model="chat", messages=TALK, max_tokens=12, seed=7, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content
    assert text.startswith(cut.choices[0].message.content)
    # a role of the active profile names its model
    profiles = Path(front.daemon.env["XDG_CONFIG_HOME"]) / "warmd" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "default.yaml").write_text("roles:\n  talker: {prefer: [chat]}\n")
    by_role = c.chat.completions.create(model="role:talker", messages=TALK, max_tokens=12, seed=7)
    assert by_role.model == "chat" and by_role.choices[0].message.content == text


def test_completions_and_json_schema_output(front: HttpDaemon) -> None:
    c = client(front)
    done = c.completions.create(model="gen", prompt="once upon", max_tokens=6, seed=3)
    assert done.object == "text_completion" and done.usage.completion_tokens == 6 and done.choices[0].text
    streamed = list(c.completions.create(model="gen", prompt="once upon", max_tokens=6, seed=3, stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == done.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
    answer = c.chat.completions.create(model="chat", messages=TALK, max_tokens=40, seed=1, response_format=fmt)
    value = json.loads(answer.choices[0].message.content)
    assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and 0 <= value["n"] <= 9
    # json_object: any JSON (random weights never close it within a few tokens, but it opens one)
    anything = c.chat.completions.create(model="chat", messages=TALK, max_tokens=8, seed=1,
                                         response_format={"type": "json_object"})
    free = c.chat.completions.create(model="chat", messages=TALK, max_tokens=8, seed=1)
    assert anything.choices[0].message.content.startswith("{") and not free.choices[0].message.content.startswith("{")


def test_every_error_status_in_openai_shape(front: HttpDaemon) -> None:
    c = client(front)
    with pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="nope", messages=TALK)
    assert info.value.body["code"] == "model_not_found" and "no model named 'nope'" in info.value.body["message"]
    for bad, says in (({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
                       "chat template takes no tools"),
                      ({"n": 2}, "one choice per request"),
                      ({"temperature": -1}, "'temperature' must be"),
                      ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                       "image_url content")):
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(**{"model": "chat", "messages": TALK, "max_tokens": 2, **bad})
        assert info.value.body["code"] == "invalid_argument" and says in info.value.body["message"], info.value.body
        assert info.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as info:               # a malformed body is 400, not 422
        c.post("/chat/completions", body={"model": "chat"}, cast_to=httpx.Response)
    assert "messages" in info.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        client(front, "not-a-token").models.list()
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(front, front.scoped("read")).chat.completions.create(model="chat", messages=TALK)
    assert "needs 'infer'" in info.value.body["message"]
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model="huge", messages=TALK, max_tokens=2)
    assert info.value.status_code == 507 and info.value.body["code"] == "insufficient_memory"

    # busy: `one` runs one request and queues none
    stream = c.chat.completions.create(model="one", messages=TALK, max_tokens=4000, stream=True)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="one", messages=TALK, max_tokens=2)
    assert info.value.response.headers["retry-after"] == "1" and info.value.body["code"] == "busy"
    stream.close()


def test_closing_a_stream_cancels_it_and_frees_the_slot(front: HttpDaemon) -> None:
    c = client(front)
    c.chat.completions.create(model="one", messages=TALK, max_tokens=1)      # loaded
    assert metric(front, 'warmd_requests_total{model="one",outcome="success"} 1.0')
    with c.chat.completions.create(model="one", messages=TALK, max_tokens=4000, stream=True) as stream:
        for _ in zip(range(3), stream):
            pass
        assert front.in_flight("one") == 1
    wait_until(lambda: front.in_flight("one") == 0, timeout=20)
    # cancelled, not finished (that would count a success), in the statistics every front's calls go through
    wait_until(lambda: metric(front, 'warmd_request_errors_total{code="cancelled",model="one"} 1.0'), timeout=10)
    # the slot (max_in_flight 1, no queue) takes the next request at once
    assert c.chat.completions.create(model="one", messages=TALK, max_tokens=2).usage.completion_tokens == 2


def test_curl_sees_server_sent_events_ending_with_done(front: HttpDaemon) -> None:
    body = json.dumps({"model": "chat", "messages": TALK, "max_tokens": 5, "stream": True, "seed": 2})
    done = subprocess.run(["curl", "-sN", "--fail-with-body", "-H", f"Authorization: Bearer {front.token}",
                           f"{front.base}/v1/chat/completions", "-d", body], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    events = done.stdout.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2]) and len(chunks) >= 3
    assert all(ch["object"] == "chat.completion.chunk" and ch["id"] == chunks[0]["id"] for ch in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    head = subprocess.run(["curl", "-sN", "-D", "-", "-o", "/dev/null", "-H", f"Authorization: Bearer {front.token}",
                           f"{front.base}/v1/chat/completions", "-d", body], capture_output=True, text=True, timeout=60)
    assert "content-type: text/event-stream" in head.stdout.lower()


def test_sigterm_refuses_new_requests_and_lets_a_stream_finish(front: HttpDaemon) -> None:
    c = client(front)
    c.chat.completions.create(model="chat", messages=TALK, max_tokens=1)
    pieces: list[str] = []
    stream = c.chat.completions.create(model="chat", messages=TALK, max_tokens=4000, stream=True, seed=5)
    pieces.append(next(iter(stream)).choices[0].delta.content or "")
    reader = threading.Thread(target=lambda: pieces.extend(ch.choices[0].delta.content or "" for ch in stream
                                                           if ch.choices))
    reader.start()
    front.daemon.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            c.models.list()
        except openai.APIStatusError as err:
            return err.status_code == 503 and "shutting down" in err.body["message"]
        return False

    wait_until(refused, timeout=20)
    reader.join(60)
    assert not reader.is_alive() and len(pieces) > 100      # the stream went on to its end
    assert front.daemon.proc.wait(30) == 0


def test_where_the_front_may_listen(start_daemon, short_tmp: Path, ggufs: Path) -> None:
    port = free_port()
    refused = start_daemon(args=("--http", f"0.0.0.0:{port}"), ready=False)
    assert refused.proc.wait(30) != 0 and "http_allow_remote" in refused.log()
    sock = short_tmp / "h.sock"
    (short_tmp / "u").mkdir()
    local = start_daemon(root=short_tmp / "u", config={"http": f"unix:{sock}"})
    wait_until(sock.exists)
    assert sock.stat().st_mode & 0o777 == 0o600
    # the user-only socket needs no token, as gRPC's does not
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://warmd") as h:
        assert h.get("/v1/models").json() == {"object": "list", "data": []}
    local.terminate()
    assert not sock.exists()


def test_anonymous_loopback_scope_is_opt_in_and_refuses_web_pages(start_daemon, short_tmp: Path, ggufs: Path) -> None:
    front = serve(start_daemon, short_tmp, {"chat": gguf_spec(ggufs / "tiny.gguf", options="n_ctx: 512")},
                  config={"http_anonymous": "read"}, roots=(ggufs,))
    with httpx.Client(base_url=front.base) as h:
        assert [m["id"] for m in h.get("/v1/models").json()["data"]] == ["chat"]
        denied = h.post("/v1/chat/completions", json={"model": "chat", "messages": TALK})
        assert denied.status_code == 403 and "anonymous" in denied.json()["error"]["message"]
        page = h.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert page.status_code == 401
        rebound = h.get("/v1/models", headers={"Host": "evil.example"})
        assert rebound.status_code == 401
    (short_tmp / "off").mkdir()
    off = serve(start_daemon, short_tmp / "off", {})
    assert httpx.get(off.base + "/v1/models").status_code == 401


def test_transformers_chat_and_minilm_embeddings_equal_warm_infer(start_daemon, short_tmp: Path) -> None:
    import base64

    import numpy as np

    from conftest import REPO
    from models import write_tiny_transformer

    gpt = short_tmp / "gpt2"
    write_tiny_transformer(gpt, "gpt2")
    config = json.loads((gpt / "tokenizer_config.json").read_text())
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}assistant:"
    (gpt / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    front = serve(start_daemon, short_tmp, {
        "talk": f"provider: transformers\ntask: chat\ndevice: cpu\nsource: {{path: {gpt}}}\n",
        "minilm": (REPO / "specs" / "minilm.yaml").read_text()})
    c = client(front)
    unary = c.chat.completions.create(model="talk", messages=TALK, max_tokens=6)
    streamed = list(c.chat.completions.create(model="talk", messages=TALK, max_tokens=6, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == unary.choices[0].message.content
    assert unary.usage.completion_tokens == 6 and streamed[-1].choices[0].finish_reason == "length"

    texts = ["a cat sat on the mat", "warm models answer fast"]
    floats = c.embeddings.create(model="minilm", input=texts)
    packed = c.embeddings.create(model="minilm", input=texts, encoding_format="base64")
    with front.daemon.client() as w:
        expected = w.infer("minilm", text=texts).outputs["embedding"]
        alone = w.infer("minilm", text=texts[:1]).outputs["embedding"]       # a batch of one pads nothing
    assert np.array_equal(np.array([d.embedding for d in floats.data], dtype=np.float32), expected)
    # base64: little-endian float32
    raw = httpx.post(front.base + "/v1/embeddings", headers={"Authorization": f"Bearer {front.token}"},
                     json={"model": "minilm", "input": texts[0], "encoding_format": "base64"}).json()
    assert np.array_equal(np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4"), alone[0])
    # asked for base64, the client hands the strings over as they came
    assert np.array_equal(np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in packed.data]),
                          expected)
    assert floats.model == "minilm" and [d.index for d in floats.data] == [0, 1]
