"""The Anthropic dialect of the HTTP front with the official `anthropic` client against the real daemon:
messages unary and streamed (its events, in order) on a tiny GGUF and what `warm infer` gives for the same
conversation, system prompts and text blocks, count_tokens, errors in Anthropic's shape, x-api-key auth."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed (pip install 'warmd[llama-cpp]')")
anthropic = pytest.importorskip("anthropic")

from gguf_models import gguf_spec, write_tiny_llama  # noqa: E402
from httpfront import HttpDaemon, serve  # noqa: E402

TALK = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def front(start_daemon, short_tmp: Path) -> HttpDaemon:  # type: ignore[no-untyped-def]
    tiny = write_tiny_llama(short_tmp / "tiny.gguf")
    return serve(start_daemon, short_tmp, {"chat": gguf_spec(tiny, options="n_ctx: 512"),
                                           "huge": gguf_spec(tiny, extra="memory: 100TiB\n")})


def client(front: HttpDaemon, key: str | None = None) -> "anthropic.Anthropic":
    return anthropic.Anthropic(base_url=front.base, api_key=key or front.token, max_retries=0, timeout=60)


def test_messages_unary_and_streamed(front: HttpDaemon) -> None:
    c = client(front)
    # greedy (temperature 0): the same text every time. This SDK has no sampling arguments any more; older
    # clients send them in the body, as extra_body does
    unary = c.messages.create(model="chat", system="be brief", messages=TALK, max_tokens=10,
                              extra_body={"temperature": 0})
    assert unary.role == "assistant" and unary.stop_reason == "max_tokens" and unary.usage.output_tokens == 10
    text = unary.content[0].text
    with front.daemon.client() as w:
        same = w.infer("chat", parameters={"messages": [{"role": "system", "content": "be brief"}, *TALK],
                                           "max_tokens": 10, "temperature": 0}).json
    assert text == same["text"] and unary.usage.input_tokens == same["usage"]["prompt_tokens"]
    blocks = c.messages.create(model="chat", system=[{"type": "text", "text": "be brief"}], max_tokens=10,
                               extra_body={"temperature": 0},
                               messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}])
    assert blocks.content[0].text == text

    with c.messages.stream(model="chat", system="be brief", messages=TALK, max_tokens=10,
                           extra_body={"temperature": 0}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.content[0].text == text and final.stop_reason == "max_tokens" and final.usage.output_tokens == 10
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_delta") >= 4 and "content_block_stop" in kinds

    stop = next(w for w in text.split()[2:] if len(w) > 2)
    cut = c.messages.create(model="chat", system="be brief", messages=TALK, max_tokens=10,
                            extra_body={"temperature": 0},
                            stop_sequences=[stop])
    assert cut.stop_reason == "end_turn" and stop not in cut.content[0].text and text.startswith(cut.content[0].text)
    counted = c.messages.count_tokens(model="chat", system="be brief", messages=TALK)
    assert counted.input_tokens == unary.usage.input_tokens


def test_raw_event_stream_and_errors_in_anthropic_shape(front: HttpDaemon) -> None:
    body = json.dumps({"model": "chat", "messages": TALK, "max_tokens": 3, "stream": True})
    done = subprocess.run(["curl", "-sN", "-H", f"x-api-key: {front.token}", f"{front.base}/v1/messages", "-d", body],
                          capture_output=True, text=True, timeout=60)
    events = [e.split("\n") for e in done.stdout.strip().split("\n\n")]
    assert all(e[0].startswith("event: ") and e[1].startswith("data: ") for e in events)
    assert all(json.loads(e[1][6:])["type"] == e[0][7:] for e in events)
    assert events[0][0] == "event: message_start" and events[-1][0] == "event: message_stop"

    c = client(front)
    with pytest.raises(anthropic.NotFoundError) as info:
        c.messages.create(model="nope", messages=TALK, max_tokens=5)
    assert info.value.body["error"]["type"] == "not_found_error" and info.value.body["type"] == "error"
    with pytest.raises(anthropic.BadRequestError) as info:
        c.messages.create(model="chat", messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}], max_tokens=5)
    assert "image content" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as info:           # max_tokens is required, as Anthropic's
        c.post("/v1/messages", body={"model": "chat", "messages": TALK}, cast_to=object)
    assert "max_tokens" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError):
        client(front, "nope").messages.create(model="chat", messages=TALK, max_tokens=5)
    with pytest.raises(anthropic.PermissionDeniedError):
        client(front, front.scoped("read")).messages.create(model="chat", messages=TALK, max_tokens=5)
    with pytest.raises(anthropic.APIStatusError) as info:
        c.messages.create(model="huge", messages=TALK, max_tokens=5)
    assert info.value.status_code == 507 and "budget" in info.value.body["error"]["message"]
