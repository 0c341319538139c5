"""Coders for the draft tests: a scripted OpenAI-compatible endpoint on 127.0.0.1 (the chat completions
shape of OpenAI's API, no streaming) that answers each request with the next of its scripted answers and
keeps the requests it got."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedEndpoint:
    """`with ScriptedEndpoint(answers, token) as e:` serves POST {e.url}/chat/completions; a request without
    `Authorization: Bearer <token>` gets 401, one past the script 500."""

    def __init__(self, answers: list[str], token: str = "") -> None:
        self.answers, self.token = list(answers), token
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if endpoint.token and self.headers.get("Authorization") != f"Bearer {endpoint.token}":
                    return self._send(401, {"error": {"message": "bad token"}})
                endpoint.requests.append(body)
                if not endpoint.answers:
                    return self._send(500, {"error": {"message": "the script is over"}})
                answer = endpoint.answers.pop(0)
                self._send(200, {"id": f"chatcmpl-{len(endpoint.requests)}", "object": "chat.completion",
                                 "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status: int, data: dict) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedEndpoint":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
