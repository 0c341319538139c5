"""Running models, as every front asks: a target looked up once, a request of plain data (numpy arrays,
texts, parameters, a CallContext), its result with provenance; streamed as chunks; and the chat, completion
and embedding shapes the HTTP dialects (OpenAI, Ollama, Anthropic) speak.

Rules held here:
- one lookup per call: `Target` is the spec and its provider class, found once; admission, batching,
  statistics and the provider's error boundary are inference.py's, whatever front the call came in by;
- a stream (`stream`) hands over generated text and progress as the provider reports them, then the
  result; a caller that stops reading (closes the iterator: an HTTP client went away) cancels the call, and
  the provider stops at its next step;
- outputs asked for by name must exist: `invalid_argument` naming what the model gives;
- chat requests are the chat task's parameters (chat.py): `messages` and the sampling keys; results carry
  the text, why generation stopped and the token usage.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from warmd.chat import CHAT_KEYS
from warmd.errors import Code, WarmdError
from warmd.providers import InferRequest, InferResult, Provider
from warmd.scheduler import Resident
from warmd.spec import ModelSpec

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Target:
    """The model a call runs on, looked up once: its spec and its provider's class (None while the plugin
    that provides it is gone)."""

    spec: ModelSpec
    provider: type[Provider] | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device_tensors(self) -> bool:
        """Whether its provider takes GPU tensors in place (CUDA shared memory)."""
        return self.provider is not None and self.provider.device_tensors

    @property
    def batchable(self) -> bool:
        return self.provider is not None and self.provider.batchable


@dataclass(frozen=True)
class Inferred:
    """A finished call: the provider's result and the resident version that ran it."""

    result: InferResult
    resident: Resident

    @property
    def chat(self) -> "ChatResult":
        return ChatResult.of(self.result.json)


@dataclass(frozen=True)
class Chunk:
    """One piece of a streamed call: exactly one field is set, the result last."""

    text: str = ""                                   # the next piece of generated text
    progress: tuple[int, int, str] | None = None     # (done, total, unit) of a long job
    result: Inferred | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatResult:
    """A generation's outcome (chat and text-generation): the text, `stop` (the turn or a stop string
    ended it) or `length` (max_tokens), and the tokens it took."""

    text: str
    stopped: str
    usage: Usage

    @classmethod
    def of(cls, value: Any) -> "ChatResult":
        """From a provider's JSON result (chat.result, or text-generation's {text, tokens, stopped, usage}).

        Raises:
            WarmdError: `invalid_argument` when the model's result is not a generation (another task).
        """
        if not isinstance(value, Mapping) or not isinstance(value.get("text"), str):
            raise WarmdError(Code.INVALID_ARGUMENT, "the model does not generate text (its task is not chat or "
                             "text-generation)")
        usage = value.get("usage") or {}
        return cls(value["text"], str(value.get("stopped", "stop")),
                   Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))))


@dataclass(frozen=True)
class ChatRequest:
    """A conversation and how to continue it, as every chat dialect says it (chat.py's request shape).

    `messages`: [{"role": "system" | "user" | "assistant" | "tool", "content": str}]; `sampling`: any of
    max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop, response_format.
    """

    messages: list[Mapping[str, Any]]
    sampling: Mapping[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        """The chat task's parameters.

        Raises:
            WarmdError: `invalid_argument` naming a sampling key the chat task does not take.
        """
        unknown = sorted(set(self.sampling) - set(CHAT_KEYS))
        if unknown:
            raise WarmdError(Code.INVALID_ARGUMENT, f"unknown sampling parameter(s) {', '.join(unknown)}; chat takes "
                             f"{', '.join(k for k in CHAT_KEYS if k != 'messages')}")
        return {**self.sampling, "messages": list(self.messages)}


def stream(run: Callable[[InferRequest], Inferred], request: InferRequest, name: str) -> Iterator[Chunk]:
    """Run `run(request)` on a thread of its own and yield what the provider reports as it comes, then the
    result. Closing the iterator early cancels the call."""
    chunks: queue.Queue = queue.Queue()
    request.context.stream_to(lambda kind, value: chunks.put((kind, value)))

    def work() -> None:
        try:
            chunks.put(("result", run(request)))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader's thread, which raises it
            chunks.put(("error", exc))

    threading.Thread(target=work, name=f"stream-{name}", daemon=True).start()
    try:
        while True:
            kind, value = chunks.get()
            if kind == "text":
                yield Chunk(text=value)
            elif kind == "progress":
                yield Chunk(progress=value)
            elif kind == "error":
                raise value
            else:
                yield Chunk(result=value)
                return
    finally:
        request.context.cancel()    # a reader that left early (a client gone): the provider stops at its next step


def select_outputs(model: str, result: InferResult, wanted: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The outputs to send, in order, each once: those `wanted` (every output when none is), then `extra`
    (outputs asked for elsewhere, e.g. into shared memory).

    Raises:
        WarmdError: `invalid_argument` naming outputs the model does not give.
    """
    names = [*(list(wanted) or result.tensors), *extra]
    unknown = [n for n in names if n not in result.tensors]
    if unknown:
        raise WarmdError(Code.INVALID_ARGUMENT, f"unknown output(s) {', '.join(unknown)}; {model!r} gives "
                         f"{', '.join(result.tensors)}")
    return list(dict.fromkeys(names))


def embeddings(inferred: Inferred) -> "np.ndarray":
    """The vectors of an embedding model's result ([texts, dim] float32).

    Raises:
        WarmdError: `invalid_argument` when the model gives no `embedding` (not an embedding model).
    """
    vectors = inferred.result.tensors.get("embedding")
    if vectors is None:
        raise WarmdError(Code.INVALID_ARGUMENT, f"model {inferred.resident.spec.name!r} gives no embedding (its "
                         f"outputs: {', '.join(inferred.result.tensors) or 'none'}); use a feature-extraction model")
    return vectors
