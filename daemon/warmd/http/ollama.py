"""Ollama's dialect: `GET /api/tags`, `/api/ps`, `/api/version`; `POST /api/chat`, `/api/generate`,
`/api/embed`, `/api/embeddings`, `/api/show`, `/api/pull`; `DELETE /api/delete`.

Rules held here:
- models are listed as `NAME:latest` and found with or without the tag (warmd's names have none);
- chat and generate stream by default, as Ollama does: one JSON object per line, `done: true` on the last,
  with the token counts; `stream: false` answers once;
- `options` are the chat task's sampling (num_predict is max_tokens; -1 and -2 mean "until the turn
  ends"); `format` "json" or a JSON schema constrains the output;
- `keep_alive` (a duration, seconds, negative for forever) is the model's idle time from this request on,
  capped by the daemon's `max_keep_alive`; a pinned model stays whatever a client asks (the scheduler's
  rule). An empty chat or prompt loads the model; with keep_alive 0 it lets it go (the same rule);
- a pull streams warmd's download job as Ollama's progress lines, ending with `{"status": "success"}`;
- errors are `{"error": message}` with the code's status; after a stream started, a last line saying it.
"""
from __future__ import annotations

import datetime
import json
import time
from typing import Any, AsyncIterator, Iterator

from fastapi import APIRouter, Depends
from fastapi.concurrency import iterate_in_threadpool
from starlette.responses import Response

from warmd import __version__
from warmd.app import App, ChatRequest, ModelInfo, Target
from warmd.errors import Code, WarmdError
from warmd.http.common import Body, Caller, Pump, Stream, needs, started, strip_latest
from warmd.providers import CallContext
from warmd.units import parse_duration

NDJSON = "application/x-ndjson"
FOREVER = "9999-12-31T23:59:59Z"   # expires_at of a pinned model, or one kept forever (a date, as clients parse it)
_UNTIL_THE_END = (-1, -2)      # num_predict: unlimited, or until the context is full


def error_body(err: WarmdError) -> dict[str, Any]:
    return {"error": err.message}


class Options(Body):
    num_predict: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None


class Sampled(Body):
    model: str
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: float | str | None = None

    def target_name(self) -> str:
        return strip_latest(self.model)

    def keep_alive_s(self) -> float | None:
        return _keep_alive(self.keep_alive)

    def sampling(self) -> dict[str, Any]:
        o = self.options or Options()
        given = {"max_tokens": None if o.num_predict in _UNTIL_THE_END else o.num_predict,
                 "temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k, "min_p": o.min_p,
                 "repeat_penalty": o.repeat_penalty, "seed": o.seed, "stop": o.stop or None}
        sampling = {k: v for k, v in given.items() if v is not None}
        if self.format == "json":
            sampling["response_format"] = {"type": "json_object"}
        elif isinstance(self.format, dict):
            sampling["response_format"] = {"type": "json_object", "schema": self.format}
        elif self.format:
            raise WarmdError(Code.INVALID_ARGUMENT, f"format {self.format!r}: use \"json\" or a JSON schema")
        return sampling


def _keep_alive(value: float | str | None) -> float | None:
    """Seconds, -1 forever, None when not given.

    Raises:
        WarmdError: `invalid_argument` for what is not a duration.
    """
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise WarmdError(Code.INVALID_ARGUMENT, f"keep_alive: {exc}") from None
    return -1.0 if seconds < 0 else seconds


class Message(Body):
    role: str
    content: str = ""


class ChatBody(Sampled):
    messages: list[Message] = []
    tools: list[dict[str, Any]] | None = None


class GenerateBody(Sampled):
    prompt: str = ""
    system: str = ""


class EmbedBody(Body):
    model: str
    input: str | list[str]
    keep_alive: float | str | None = None


class EmbeddingsBody(Body):
    model: str
    prompt: str


class NameBody(Body):
    model: str = ""
    name: str = ""         # older clients name it `name`
    stream: bool = True

    def target_name(self) -> str:
        if not (self.model or self.name):
            raise WarmdError(Code.INVALID_ARGUMENT, "give the model's name as `model`")
        return strip_latest(self.model or self.name)


def routes(app: App) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/version")
    def version(caller: Caller = Depends(needs("read"))) -> dict[str, Any]:
        return {"version": __version__}

    @router.get("/tags")
    def tags(caller: Caller = Depends(needs("read"))) -> dict[str, Any]:
        return {"models": [_listed(m) for m in app.models()]}

    @router.get("/ps")
    def ps(caller: Caller = Depends(needs("read"))) -> dict[str, Any]:
        return {"models": [_running(m) for m in app.status().resident]}

    @router.post("/show")
    def show(body: NameBody, caller: Caller = Depends(needs("read"))) -> dict[str, Any]:
        info = app.show(body.target_name())
        spec = info.spec
        return {"modelfile": "", "parameters": "", "template": str(spec.options.get("chat_template", "")),
                "details": _details(info), "model_info": {"general.source": info.source, "warmd.task": spec.task,
                                                          "warmd.provider": spec.provider},
                "capabilities": ["embedding"] if spec.task == "feature-extraction" else ["completion"],
                "modified_at": _modified(info)}

    @router.post("/chat", response_model=None)
    async def chat(body: ChatBody, caller: Caller = Depends(needs("infer"))) -> Any:
        target = app.target(body.target_name())
        if not body.messages:
            return await _load_or_unload(app, target, body.keep_alive_s(), "message")
        sampling = body.sampling()
        if body.tools:
            sampling["tools"] = body.tools
        context = CallContext()
        request = ChatRequest([{"role": m.role, "content": m.content} for m in body.messages], sampling)
        pump = Pump(app.chat(target, request, context, keep_alive=body.keep_alive_s()))
        return await _answer(pump, context, Lines(target.name, "message"), body.stream)

    @router.post("/generate", response_model=None)
    async def generate(body: GenerateBody, caller: Caller = Depends(needs("infer"))) -> Any:
        target = app.target(body.target_name())
        if not body.prompt:
            return await _load_or_unload(app, target, body.keep_alive_s(), "response")
        context = CallContext()
        if body.system and target.spec.task == "chat":       # a chat model: the system prompt is its first turn
            chunks = app.chat(target, ChatRequest([{"role": "system", "content": body.system},
                                                   {"role": "user", "content": body.prompt}], body.sampling()),
                              context, keep_alive=body.keep_alive_s())
        else:
            chunks = app.generate(target, body.prompt, body.sampling(), context, keep_alive=body.keep_alive_s())
        return await _answer(Pump(chunks), context, Lines(target.name, "response"), body.stream)

    @router.post("/embed")
    def embed(body: EmbedBody, caller: Caller = Depends(needs("infer"))) -> dict[str, Any]:
        started_ns = time.perf_counter_ns()
        texts = [body.input] if isinstance(body.input, str) else body.input
        target = app.target(strip_latest(body.model))
        vectors = app.embed(target, texts, keep_alive=_keep_alive(body.keep_alive))
        return {"model": target.name, "embeddings": vectors.tolist(),
                "total_duration": time.perf_counter_ns() - started_ns}

    @router.post("/embeddings")
    def embeddings(body: EmbeddingsBody, caller: Caller = Depends(needs("infer"))) -> dict[str, Any]:
        return {"embedding": app.embed(app.target(strip_latest(body.model)), [body.prompt])[0].tolist()}

    @router.post("/pull", response_model=None)
    def pull(body: NameBody, caller: Caller = Depends(needs("admin"))) -> Any:
        operation = app.pull(body.target_name())
        lines = _pull_lines(operation)
        if not body.stream:
            for line in lines:
                last = line
            return last
        # a client that goes stops following (the download stops once nobody follows it, Store.pull)
        return Stream(iterate_in_threadpool(_ndjson(lines)), lambda: None, NDJSON)

    @router.delete("/delete")
    def delete(body: NameBody, caller: Caller = Depends(needs("admin"))) -> Response:
        app.remove(body.target_name())
        return Response(status_code=200)

    return router


async def _load_or_unload(app: App, target: Target, keep_alive: float | None, field: str) -> dict[str, Any]:
    """An empty request: load the model (done_reason "load"), or with keep_alive 0 let it go ("unload"):
    its idle time becomes 0, so the scheduler unloads it once idle — never a pinned one (its rule)."""
    from starlette.concurrency import run_in_threadpool

    name = target.name
    unload = keep_alive == 0

    def load() -> None:
        if unload and app.view(target.spec).resident is None:
            return                                   # not resident: nothing to let go
        with app.load(name, keep_alive=keep_alive) as operation:
            operation.result()

    await run_in_threadpool(load)
    empty: Any = {"role": "assistant", "content": ""} if field == "message" else ""
    return {"model": name, "created_at": _iso(time.time()), field: empty, "done": True,
            "done_reason": "unload" if unload else "load"}


async def _answer(pump: Pump, context: CallContext, lines: "Lines", stream: bool) -> Any:
    if not stream:
        inferred = await pump.result()
        return lines.final(inferred, inferred.chat.text)
    return Stream(lines.stream(await started(pump)), context.cancel, NDJSON)


class Lines:
    """One generation's answers: `field` is "message" (chat) or "response" (generate)."""

    def __init__(self, model: str, field: str) -> None:
        self.model, self.field = model, field
        self.started_ns = time.perf_counter_ns()

    def _piece(self, text: str) -> dict[str, Any]:
        value: Any = {"role": "assistant", "content": text} if self.field == "message" else text
        return {"model": self.model, "created_at": _iso(time.time()), self.field: value, "done": False}

    def final(self, inferred: Any, text: str) -> dict[str, Any]:
        """The last line, with `text` (the whole answer when unary, "" after a stream of pieces)."""
        done = inferred.chat
        return {**self._piece(text), "done": True, "done_reason": done.stopped,
                "total_duration": time.perf_counter_ns() - self.started_ns,
                "prompt_eval_count": done.usage.prompt_tokens, "eval_count": done.usage.completion_tokens}

    async def stream(self, batches: AsyncIterator[list[Any]]) -> AsyncIterator[bytes]:
        try:
            async for batch in batches:
                out = [_line(self._piece(c.text)) for c in batch if c.text]
                out += [_line(self.final(c.result, "")) for c in batch if c.result is not None]
                if out:
                    yield b"".join(out)
        except WarmdError as err:
            yield _line(error_body(err))


def _pull_lines(operation: Any) -> Iterator[dict[str, Any]]:
    """warmd's download events as Ollama's pull progress."""
    with operation:
        yield {"status": "pulling manifest"}
        try:
            for event in operation.events():
                if event.kind == "job.progress" and event.progress.unit == "bytes":
                    yield {"status": f"pulling {operation.model}", "digest": operation.model,
                           "total": event.progress.total, "completed": event.progress.done}
        except WarmdError as err:
            yield error_body(err)
            return
        yield {"status": "success"}


def _ndjson(lines: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for line in lines:
        yield _line(line)


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _details(info: ModelInfo) -> dict[str, Any]:
    fmt = "gguf" if info.spec.provider == "llama-cpp" else info.spec.provider
    return {"format": fmt, "family": info.spec.task, "families": [info.spec.task], "parameter_size": "",
            "quantization_level": info.spec.precision or ""}


def _listed(info: ModelInfo) -> dict[str, Any]:
    name = f"{info.name}:latest"
    return {"name": name, "model": name, "modified_at": _modified(info), "size": info.files.bytes_on_disk,
            "digest": info.spec.signature, "details": _details(info)}


def _running(info: ModelInfo) -> dict[str, Any]:
    r = info.resident
    assert r is not None
    gpu = r.bytes if r.shown_tier == "gpu" else 0
    return {**_listed(info), "size": r.bytes, "size_vram": gpu,
            "expires_at": _iso(r.expires_at) if r.expires_at else FOREVER, "pinned": info.pinned}


def _modified(info: ModelInfo) -> str:
    """When its spec file last changed."""
    try:
        return _iso(info.spec.file.stat().st_mtime)
    except OSError:                        # the spec file was just removed
        return _iso(0)
