"""The model that drafts adapters: the `coder` role of the active profile — a chat model warmd serves, or,
when none of the role's models qualifies, the role's OpenAI-compatible `endpoint` (roles.py).

Rules:
- one call: `Coder.ask(messages)` returns the answer's text; the sampling is fixed here (a low
  temperature, a bound on the tokens), so that a draft depends on the repository and the gate's output;
- a local coder is asked through the application layer's chat, as any request (admission, loading it first,
  statistics), and a cancelled job stops its generation;
- a remote one is `POST {url}/chat/completions` in OpenAI's request and response shape (httpx, the `draft`
  extra, imported only then), with `Authorization: Bearer $token_env` when the role names the variable;
  an offline daemon talks only to a loopback endpoint (`network_forbidden` otherwise); a cancelled job
  stops once the answer is in (the request is not interrupted). Its failures name
  the endpoint: `unavailable` (unreachable, 5xx, no answer in time), `unauthenticated` (401/403),
  `invalid_argument` (another 4xx: the model name, the request), `provider_failed` (an answer that is not
  OpenAI's shape).
"""
from __future__ import annotations

import ipaddress
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from warmd.errors import Code, WarmdError
from warmd.providers import CallContext
from warmd.roles import Endpoint

MAX_TOKENS = 2048            # per answer: an adapter and a manifest fit well within it
TEMPERATURE = 0.2
REMOTE_TIMEOUT_S = 600.0     # a slow remote model writing 2048 tokens
Messages = list[Mapping[str, str]]


@dataclass(frozen=True)
class Coder:
    """Who drafts: `name` for people ("model qwen-coder", "endpoint http://…/v1 (qwen)"), and `ask`:
    (messages, the job's context: cancelled when the job is) -> the answer's text."""

    name: str
    ask: Callable[[Messages, CallContext], str]


def local(model: str, chat: Callable[[Messages, Mapping[str, Any], CallContext], Iterator[Any]]) -> Coder:
    """A coder served by this daemon.

    Args:
        model: the chat model's name.
        chat: the application layer's chat on that model: (messages, sampling, the call's context) -> its
            chunks, the result last (closing the iterator stops the generation).
    """
    def ask(messages: Messages, job: CallContext) -> str:
        call = CallContext()           # its own: a stream cancels its context when it ends
        job.on_cancel(call.cancel)
        chunks = chat(messages, {"max_tokens": MAX_TOKENS, "temperature": TEMPERATURE}, call)
        try:
            result = None
            for chunk in chunks:
                result = chunk.result if chunk.result is not None else result
        finally:
            chunks.close()  # type: ignore[attr-defined]
        return result.chat.text if result is not None else ""
    return Coder(f"model {model}", ask)


def remote(endpoint: Endpoint, offline: bool) -> Coder:
    """A coder behind an OpenAI-compatible server.

    Raises:
        WarmdError: `network_forbidden` for a non-loopback endpoint of an offline daemon; `invalid_argument`
            when its `token_env` is not set.
    """
    host = urllib.parse.urlsplit(endpoint.url).hostname or ""
    if offline and not _loopback(host):
        raise WarmdError(Code.NETWORK_FORBIDDEN, f"the daemon is offline; the coder endpoint {endpoint.url} is "
                         "not on this machine (a loopback endpoint works offline)")
    headers = {}
    if endpoint.token_env:
        token = os.environ.get(endpoint.token_env, "")
        if not token:
            raise WarmdError(Code.INVALID_ARGUMENT, f"the coder endpoint's token variable {endpoint.token_env} is "
                             "not set in the daemon's environment")
        headers["Authorization"] = f"Bearer {token}"

    def ask(messages: Messages, job: CallContext) -> str:
        return _complete(endpoint, headers, messages)
    return Coder(f"endpoint {endpoint.url} ({endpoint.model})", ask)


def _complete(endpoint: Endpoint, headers: dict[str, str], messages: Messages) -> str:
    try:
        import httpx
    except ImportError:
        raise WarmdError(Code.UNAVAILABLE, "a coder endpoint needs httpx: pip install 'warmd[draft]'") from None
    body = {"model": endpoint.model, "messages": list(messages), "max_tokens": MAX_TOKENS,
            "temperature": TEMPERATURE, "stream": False}
    where = f"the coder endpoint {endpoint.url}"
    try:
        reply = httpx.post(f"{endpoint.url}/chat/completions", json=body, headers=headers, timeout=REMOTE_TIMEOUT_S)
    except httpx.TimeoutException:
        raise WarmdError(Code.UNAVAILABLE, f"{where} did not answer within {REMOTE_TIMEOUT_S:.0f} s") from None
    except httpx.HTTPError as exc:
        raise WarmdError(Code.UNAVAILABLE, f"cannot reach {where}: {exc}") from None
    if reply.status_code != 200:
        code = (Code.UNAUTHENTICATED if reply.status_code in (401, 403) else
                Code.INVALID_ARGUMENT if 400 <= reply.status_code < 500 else Code.UNAVAILABLE)
        raise WarmdError(code, f"{where} answered {reply.status_code}: {' '.join(reply.text.split())[:300]}")
    try:
        content = reply.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise WarmdError(Code.PROVIDER_FAILED, f"{where} answered without choices[0].message.content (not an "
                         "OpenAI chat completion)")
    return content


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
