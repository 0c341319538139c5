"""OpenAI's dialect: `GET /v1/models`, `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.

Rules held here:
- `model` is a spec name or `role:NAME`; the answer names the model that ran;
- streams are server-sent events, one `chat.completion.chunk` per piece, the finish reason in the last one,
  then (with `stream_options.include_usage`) a chunk with no choices and the usage, then `data: [DONE]`;
- `max_completion_tokens` wins over `max_tokens`; `response_format` json_object and json_schema become the
  chat task's JSON constraint; `tools` go to the model's chat template, and a template that takes none is
  `invalid_argument` (400); more than one choice (`n`) is refused, never silently one;
- embeddings come as floats, or as base64 of little-endian float32 (`encoding_format: base64`);
- errors are `{"error": {"message", "type", "param", "code"}}`, `code` being warmd's stable code.
"""
from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, AsyncIterator, Literal

from fastapi import APIRouter, Depends
from pydantic import Field

from warmd.app import App, ChatRequest, Chunk, Inferred
from warmd.app.calls import ChatResult
from warmd.errors import Code, WarmdError
from warmd.http.common import Body, Caller, Pump, Stream, needs, started
from warmd.providers import CallContext

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 429: "rate_limit_error"}


def error_body(err: WarmdError) -> dict[str, Any]:
    status = err.code.http_status
    return {"error": {"message": err.message, "type": _TYPES.get(status, "server_error"), "param": None,
                      "code": err.code.value}}


class Part(Body):
    type: str
    text: str = ""


class Message(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = None


class StreamOptions(Body):
    include_usage: bool = False


class JsonSchema(Body):
    name: str = ""
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class Sampled(Body):
    """What chat and completions share."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1

    def sampling(self) -> dict[str, Any]:
        """The chat task's sampling keys that the request sets.

        Raises:
            WarmdError: `invalid_argument` for n > 1.
        """
        if self.n != 1:
            raise WarmdError(Code.INVALID_ARGUMENT, f"n={self.n}: warmd returns one choice per request; send n "
                             "requests (or leave n out)")
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        given = {"max_tokens": limit, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                 "stop": self.stop}
        return {k: v for k, v in given.items() if v is not None}


class ChatBody(Sampled):
    messages: list[Message]
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None

    def request(self) -> ChatRequest:
        sampling = self.sampling()
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            sampling["response_format"] = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
            sampling["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
        if self.tools:
            sampling["tools"] = self.tools
        return ChatRequest([{"role": "system" if m.role == "developer" else m.role, "content": _text(m, i)}
                            for i, m in enumerate(self.messages)], sampling)


class CompletionBody(Sampled):
    prompt: str | list[str]
    max_tokens: int | None = 16          # OpenAI's default for completions

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise WarmdError(Code.INVALID_ARGUMENT, f"prompt has {len(self.prompt)} prompts; send one per request")
        return self.prompt[0]


class EmbeddingBody(Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


def _text(message: Message, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    other = [p.type for p in message.content if p.type != "text"]
    if other:
        raise WarmdError(Code.INVALID_ARGUMENT, f"messages[{index}] has {', '.join(other)} content; warmd's chat "
                         "models take text parts only")
    return "".join(p.text for p in message.content)


def routes(app: App) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    def list_models(caller: Caller = Depends(needs("read"))) -> dict[str, Any]:
        return {"object": "list", "data": [_model(m.name, app.started_at) for m in app.models()]}

    @router.get("/v1/models/{name}")
    def get_model(name: str, caller: Caller = Depends(needs("read"))) -> dict[str, Any]:
        return _model(app.model(name).name, app.started_at)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatBody, caller: Caller = Depends(needs("infer"))) -> Any:
        target = app.target(body.model)
        context = CallContext()
        pump = Pump(app.chat(target, body.request(), context))
        return await answer(pump, context, body, Reply("chatcmpl", "chat.completion", target.name), chat=True)

    @router.post("/v1/completions", response_model=None)
    async def completions(body: CompletionBody, caller: Caller = Depends(needs("infer"))) -> Any:
        target = app.target(body.model)
        context = CallContext()
        pump = Pump(app.generate(target, body.text(), body.sampling(), context))
        return await answer(pump, context, body, Reply("cmpl", "text_completion", target.name), chat=False)

    @router.post("/v1/embeddings")
    def embeddings(body: EmbeddingBody, caller: Caller = Depends(needs("infer"))) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        target = app.target(body.model)
        vectors = app.embed(target, texts)
        data = [{"object": "embedding", "index": i,
                 "embedding": _base64(v) if body.encoding_format == "base64" else v.tolist()}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": target.name,
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    return router


async def answer(pump: Pump, context: CallContext, body: Sampled, reply: "Reply", chat: bool) -> Any:
    """A completion's answer: the whole result, or with `stream` its server-sent events (closing them
    cancels the call)."""
    if not body.stream:
        done = await pump.result()
        return reply.chat(done) if chat else reply.completion(done)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    events = reply.events(await started(pump), include_usage, chat=chat)
    return Stream(events, context.cancel, "text/event-stream")


def _model(name: str, created: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "warmd"}


def _base64(vector: Any) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


class Reply:
    """The answers of one call: its id, its object names and the model that ran it."""

    def __init__(self, prefix: str, kind: str, model: str) -> None:
        self.id, self.kind, self.model = f"{prefix}-{uuid.uuid4().hex}", kind, model
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chat(self, inferred: Inferred) -> dict[str, Any]:
        done = inferred.chat
        return {**self._head(self.kind), "choices": [{
            "index": 0, "message": {"role": "assistant", "content": done.text}, "logprobs": None,
            "finish_reason": done.stopped}], "usage": _usage(done)}

    def completion(self, inferred: Inferred) -> dict[str, Any]:
        done = inferred.chat
        return {**self._head(self.kind), "choices": [{"index": 0, "text": done.text, "logprobs": None,
                                                      "finish_reason": done.stopped}], "usage": _usage(done)}

    def _piece(self, chat: bool, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", **delta}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        return {**self._head(self.kind), "choices": [{"index": 0, "text": text or "", "logprobs": None,
                                                      "finish_reason": finish}]}

    async def events(self, batches: AsyncIterator[list[Chunk]], include_usage: bool,
                     chat: bool) -> AsyncIterator[bytes]:
        """Server-sent events: the pieces (the first one says the role), the finish, the usage, [DONE]; an
        error after the start is one event `{"error": ...}` (what OpenAI's clients raise)."""
        first = True
        try:
            async for batch in batches:
                out = []
                for chunk in batch:
                    if chunk.text:
                        out.append(_event(self._piece(chat, chunk.text, None, first)))
                        first = False
                    elif chunk.result is not None:
                        done = chunk.result.chat
                        if first and chat:
                            out.append(_event(self._piece(chat, "", None, True)))
                        out.append(_event(self._piece(chat, None, done.stopped)))
                        if include_usage:
                            out.append(_event({**self._head("chat.completion.chunk" if chat else self.kind),
                                               "choices": [], "usage": _usage(done)}))
                if out:
                    yield b"".join(out)
        except WarmdError as err:
            yield _event(error_body(err))
        yield b"data: [DONE]\n\n"


def _event(value: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


def _usage(done: ChatResult) -> dict[str, int]:
    u = done.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}
