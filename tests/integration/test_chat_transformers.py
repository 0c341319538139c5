"""The chat task on the transformers provider: the tokenizer's own chat template (tokenizer_config.json),
the request and result shape of the llama-cpp provider, streamed and unary, stop strings never sent."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import CONTEXT, write_tiny_transformer
from warm import Code, WarmdError

TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}assistant:"


@pytest.fixture(scope="module")
def gpt_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chat") / "gpt2"
    write_tiny_transformer(folder, "gpt2")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return folder


def test_transformers_chat_answers_the_chat_request_shape(start_daemon, short_tmp: Path, gpt_chat: Path) -> None:
    specs = short_tmp / "specs"
    specs.mkdir()
    (specs / "chat.yaml").write_text(f"provider: transformers\ntask: chat\ndevice: cpu\nsource: {{path: {gpt_chat}}}\n")
    (specs / "bare.yaml").write_text(f"provider: transformers\ntask: chat\ndevice: cpu\nsource: {{path: {gpt_chat}}}\n"
                                     "options: {chat_template: 'user says {{ messages[-1].content }} then'}\n"
                                     "max_input_chars: 50\n")
    daemon = start_daemon(specs, config={"path_roots": [str(gpt_chat.parent)]})
    talk = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
            "max_tokens": 10}
    with daemon.client() as c:
        chunks = list(c.infer_stream("chat", parameters=talk))
        final = chunks[-1].result.json
        assert final["text"] == "".join(ch.text for ch in chunks if ch.text) == final["message"]["content"]
        assert final["usage"]["completion_tokens"] == 10 and final["stopped"] == "length"
        assert c.infer("chat", parameters=talk).json == final                  # greedy by default
        override = c.infer("bare", parameters=talk).json
        assert override["usage"]["prompt_tokens"] < final["usage"]["prompt_tokens"]   # the spec's template
        stop = final["text"].strip()[3:6]
        streamed = list(c.infer_stream("chat", parameters={**talk, "stop": stop}))
        cut = streamed[-1].result.json
        assert cut["stopped"] == "stop" and stop not in "".join(ch.text for ch in streamed if ch.text)
        with pytest.raises(WarmdError) as info:
            c.infer("chat", parameters={**talk, "response_format": {"type": "json_object"}})
        assert info.value.code is Code.INVALID_ARGUMENT and "llama-cpp" in info.value.message
        with pytest.raises(WarmdError) as info:          # a message's content is bounded like a text
            c.infer("bare", parameters={"messages": [{"role": "user", "content": "x" * 51}]})
        assert info.value.code is Code.INVALID_ARGUMENT and "messages[0] content is 51 characters" in \
            info.value.message and "max_input_chars" in info.value.message
        with pytest.raises(WarmdError) as info:
            c.infer("chat", parameters={"messages": [{"role": "user", "content": "x"}], "max_tokens": CONTEXT})
        assert info.value.code is Code.INVALID_ARGUMENT and f"context length of model 'chat' ({CONTEXT} tokens" \
            in info.value.message and "max_tokens" in info.value.message
