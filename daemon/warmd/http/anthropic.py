"""Anthropic's dialect: `POST /v1/messages` (unary, or streamed as its events) and
`POST /v1/messages/count_tokens`. The key comes as `x-api-key` (the SDK's way) or as a bearer token.

Rules held here:
- `system` (a string or text blocks) is the conversation's first turn; message content is a string or text
  blocks; other blocks (images, tool use) are `invalid_argument`, never dropped;
- `max_tokens` is required, as Anthropic's API has it; `stop_sequences`, `temperature`, `top_p`, `top_k`
  are the chat task's sampling;
- a stream is `message_start`, `content_block_start`, `ping`, one `content_block_delta` per piece,
  `content_block_stop`, `message_delta` (the stop reason and the usage), `message_stop`; an error after
  the start is an `error` event;
- stop reasons: `max_tokens` when the limit ended it, else `end_turn` (warmd's result does not tell a stop
  sequence from the end of the turn, so `stop_sequence` is never named);
- count_tokens renders the conversation with the model's template and counts its tokens by evaluating it
  (one token is generated and thrown away: the runtimes count a prompt only by running it);
- errors are `{"type": "error", "error": {"type", "message"}}`.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, AsyncIterator, Literal

from fastapi import APIRouter, Depends

from warmd.app import App, ChatRequest, Inferred
from warmd.errors import Code, WarmdError
from warmd.http.common import Body, Caller, Pump, Stream, needs, started
from warmd.providers import CallContext

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 429: "rate_limit_error", 503: "overloaded_error"}


def error_body(err: WarmdError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _TYPES.get(err.code.http_status, "api_error"), "message": err.message}}


class Block(Body):
    type: str
    text: str = ""


class Message(Body):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Conversation(Body):
    model: str
    messages: list[Message]
    system: str | list[Block] | None = None

    def turns(self) -> list[dict[str, str]]:
        """The chat task's messages.

        Raises:
            WarmdError: `invalid_argument` for content other than text.
        """
        system = [{"role": "system", "content": _text(self.system, "system")}] if self.system else []
        return system + [{"role": m.role, "content": _text(m.content, f"messages[{i}]")}
                         for i, m in enumerate(self.messages)]


class MessagesBody(Conversation):
    max_tokens: int
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False

    def request(self) -> ChatRequest:
        given = {"max_tokens": self.max_tokens, "stop": self.stop_sequences or None, "temperature": self.temperature,
                 "top_p": self.top_p, "top_k": self.top_k}
        return ChatRequest(self.turns(), {k: v for k, v in given.items() if v is not None})


def _text(content: str | list[Block], where: str) -> str:
    if isinstance(content, str):
        return content
    other = [b.type for b in content if b.type != "text"]
    if other:
        raise WarmdError(Code.INVALID_ARGUMENT, f"{where} has {', '.join(other)} content; warmd's chat models take "
                         "text blocks only")
    return "".join(b.text for b in content)


def routes(app: App) -> APIRouter:
    router = APIRouter(prefix="/v1/messages")

    @router.post("", response_model=None)
    async def messages(body: MessagesBody, caller: Caller = Depends(needs("infer"))) -> Any:
        target = app.target(body.model)
        context = CallContext()
        pump = Pump(app.chat(target, body.request(), context))
        reply = Reply(target.name)
        if not body.stream:
            return reply.message(await pump.result())
        return Stream(reply.events(await started(pump)), context.cancel, "text/event-stream")

    @router.post("/count_tokens")
    async def count_tokens(body: Conversation, caller: Caller = Depends(needs("infer"))) -> dict[str, int]:
        context = CallContext()
        request = ChatRequest(body.turns(), {"max_tokens": 1, "temperature": 0})
        inferred = await Pump(app.chat(app.target(body.model), request, context)).result()
        return {"input_tokens": inferred.chat.usage.prompt_tokens}

    return router


def _stop_reason(stopped: str) -> str:
    return "max_tokens" if stopped == "length" else "end_turn"


class Reply:
    """The answers of one call of /v1/messages."""

    def __init__(self, model: str) -> None:
        self.id, self.model = f"msg_{uuid.uuid4().hex}", model

    def _message(self, content: list[dict[str, Any]], stop_reason: str | None, usage: dict[str, int]) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}

    def message(self, inferred: Inferred) -> dict[str, Any]:
        done = inferred.chat
        return self._message([{"type": "text", "text": done.text}], _stop_reason(done.stopped),
                             {"input_tokens": done.usage.prompt_tokens, "output_tokens": done.usage.completion_tokens})

    async def events(self, batches: AsyncIterator[list[Any]]) -> AsyncIterator[bytes]:
        yield (_event("message_start", {"message": self._message([], None, {"input_tokens": 0, "output_tokens": 0})})
               + _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
               + _event("ping", {}))
        try:
            async for batch in batches:
                out = [_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": c.text}})
                       for c in batch if c.text]
                for chunk in batch:
                    if chunk.result is not None:
                        done = chunk.result.chat
                        out.append(_event("content_block_stop", {"index": 0}))
                        out.append(_event("message_delta", {
                            "delta": {"stop_reason": _stop_reason(done.stopped), "stop_sequence": None},
                            "usage": {"input_tokens": done.usage.prompt_tokens,
                                      "output_tokens": done.usage.completion_tokens}}))
                        out.append(_event("message_stop", {}))
                if out:
                    yield b"".join(out)
        except WarmdError as err:
            yield _event("error", {"error": error_body(err)["error"]})


def _event(kind: str, value: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **value}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()
