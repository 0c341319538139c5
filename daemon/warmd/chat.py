"""The `chat` task: one request shape for every runtime, the chat template, and stop strings.

Request (InferRequest.parameters; `text`, when given, adds one user message per text after `messages`):
  messages         [{"role": "system" | "user" | "assistant" | "tool", "content": str}, ...]
  max_tokens       tokens to generate at most (default: until the end of the turn or of the context)
  temperature      0 = greedy; top_p, top_k, min_p, repeat_penalty, seed: the usual sampling controls
  stop             a string or a list: generation ends before it, and it is never sent
  response_format  {"type": "json_object"} (any JSON) or {"type": "json_object", "schema": {...}}
                   (providers with a grammar, llama-cpp)
Result JSON: {"message": {"role": "assistant", "content"}, "text", "stopped": "stop" | "length",
              "usage": {"prompt_tokens", "completion_tokens"}}.

Rules held here:
- templates are the model's own (GGUF `tokenizer.chat_template`, `tokenizer_config.json`), or the spec's
  `options.chat_template`; they render in jinja2's ImmutableSandboxedEnvironment (no attribute access to
  Python internals, no writes), compiled once per template;
- a template that refuses the conversation (`raise_exception`) is the caller's `invalid_argument`;
- a stop string is held back while it may still be forming, so no piece of it reaches a stream.
"""
from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass
from typing import Any, Mapping

from warmd.errors import Code, WarmdError

ROLES = ("system", "user", "assistant", "tool")
CHAT_KEYS = ("messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop",
             "response_format")


@dataclass(frozen=True)
class Sampling:
    """How to generate: limits, sampling controls, stop strings and an optional JSON constraint."""

    max_tokens: int | None = None        # None: until the end of the turn or of the context
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None              # None: a fresh random seed per request
    stop: tuple[str, ...] = ()
    response_format: Mapping[str, Any] | None = None


def sampling(params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
             max_name: str = "max_tokens") -> Sampling:
    """The request's sampling, over the model's defaults (spec options, an Ollama params layer).

    Args:
        params: the request's parameters.
        defaults: the model's defaults, same keys.
        max_name: the name of the length limit (`max_new_tokens` for text-generation).
    Raises:
        WarmdError: `invalid_argument` naming the first parameter out of its type or range.
    """
    merged = {**(defaults or {}), **params}
    if max_name != "max_tokens" and max_name in merged:
        merged["max_tokens"] = merged.pop(max_name)
    limit = merged.get("max_tokens")
    stop = merged.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise _bad("stop", "a string or a list of non-empty strings", stop)
    fmt = merged.get("response_format")
    if fmt is not None and (not isinstance(fmt, Mapping) or fmt.get("type") != "json_object"
                            or not isinstance(fmt.get("schema", {}), Mapping)):
        raise _bad("response_format", '{"type": "json_object"} or {"type": "json_object", "schema": {...}}', fmt)
    return Sampling(
        max_tokens=None if limit is None else _number(max_name, limit, int, 1, 1 << 20),
        temperature=_number("temperature", merged.get("temperature", Sampling.temperature), float, 0.0, 100.0),
        top_p=_number("top_p", merged.get("top_p", Sampling.top_p), float, 0.0, 1.0),
        top_k=_number("top_k", merged.get("top_k", Sampling.top_k), int, 0, 1 << 20),
        min_p=_number("min_p", merged.get("min_p", Sampling.min_p), float, 0.0, 1.0),
        repeat_penalty=_number("repeat_penalty", merged.get("repeat_penalty", Sampling.repeat_penalty), float,
                               0.0, 100.0),
        seed=None if merged.get("seed") is None else _number("seed", merged["seed"], int, 0, 2**32 - 1),
        stop=tuple(stop), response_format=fmt)


def messages(params: Mapping[str, Any], texts: list[str]) -> list[dict[str, Any]]:
    """The conversation: `messages`, then each text as a user message.

    Raises:
        WarmdError: `invalid_argument` for a missing or malformed conversation, or a parameter a chat
            request does not have (a misspelt `max_token` would otherwise be ignored).
    """
    unknown = sorted(set(params) - set(CHAT_KEYS))
    if unknown:
        raise WarmdError(Code.INVALID_ARGUMENT, f"unknown chat parameter(s) {', '.join(unknown)}; a chat request "
                         f"takes {', '.join(CHAT_KEYS)}")
    given = params.get("messages", [])
    if not isinstance(given, list):
        raise _bad("messages", "a list of {role, content} objects", given)
    conversation = []
    for i, m in enumerate(given):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise WarmdError(Code.INVALID_ARGUMENT, f"messages[{i}] must be {{\"role\": one of {', '.join(ROLES)}, "
                             f"\"content\": a string}}, got {str(m)[:200]}")
        conversation.append(dict(m))
    conversation += [{"role": "user", "content": t} for t in texts]
    if not conversation:
        raise WarmdError(Code.INVALID_ARGUMENT, "a chat request needs `messages` (parameters) or a `text`")
    return conversation


def compile_template(template: str) -> Any:
    """The sandboxed, compiled template (cached per text).

    Raises:
        WarmdError: `spec_invalid` when the template does not parse.
    """
    try:
        return _compiled(template)
    except Exception as exc:  # noqa: BLE001 - jinja2's TemplateSyntaxError and friends
        raise WarmdError(Code.SPEC_INVALID, f"the chat template does not parse: {exc}; fix options.chat_template "
                         "or the model's template") from None


def render(template: str, conversation: list[dict[str, Any]], *, bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True) -> str:
    """The prompt for `conversation` (ending with the assistant's turn opened).

    Raises:
        WarmdError: `invalid_argument` when the template refuses the conversation (roles out of order,
            an unsupported role), `provider_failed` when the template itself breaks.
    """
    import jinja2

    compiled = compile_template(template)
    try:
        return compiled.render(messages=conversation, bos_token=bos_token, eos_token=eos_token,
                               add_generation_prompt=add_generation_prompt)
    except _Refused as exc:
        raise WarmdError(Code.INVALID_ARGUMENT, f"the model's chat template refuses this conversation: {exc}") from None
    except jinja2.TemplateError as exc:
        raise WarmdError(Code.PROVIDER_FAILED, f"the chat template failed: {type(exc).__name__}: {exc}") from None


class StopFilter:
    """Streamed text minus stop strings: `feed` returns what is safe to send now, holding back a tail that
    could still become a stop string; once one appears, `hit` is set and nothing after it is sent."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hit = False
        self.text = ""          # everything sent so far
        self._held = ""

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        pending = self._held + piece
        cut = min((i for i in (pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            return self._send(pending[:cut])
        keep = max((k for s in self.stops for k in range(min(len(s) - 1, len(pending)), 0, -1)
                    if s.startswith(pending[-k:])), default=0)
        self._held = pending[len(pending) - keep:]
        return self._send(pending[:len(pending) - keep])

    def flush(self) -> str:
        """At the end of generation: the held-back tail (it never became a stop string)."""
        held, self._held = ("" if self.hit else self._held), ""
        return self._send(held)

    def _send(self, text: str) -> str:
        self.text += text
        return text


def result(text: str, stopped: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The chat result JSON."""
    return {"message": {"role": "assistant", "content": text}, "text": text, "stopped": stopped,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}


class _Refused(Exception):
    """raise_exception() called by a template."""


def _raise(message: str) -> None:
    raise _Refused(message)


@functools.lru_cache(maxsize=64)
def _compiled(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


def _number(name: str, value: Any, kind: type, low: float, high: float) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or float(value).is_integer())
    if not ok or not low <= value <= high:
        raise _bad(name, f"{'an integer' if kind is int else 'a number'} from {low:g} to {high:g}", value)
    return kind(value)


def _bad(name: str, expected: str, value: Any) -> WarmdError:
    return WarmdError(Code.INVALID_ARGUMENT, f"parameter {name!r} must be {expected}, got {str(value)[:200]}")
