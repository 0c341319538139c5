"""Helpers for tests (and the benchmark) of the HTTP front: a daemon serving spec texts with `http:` on a free
loopback port, its owner token, scoped tokens, and what a model holds now."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waiting import free_port, wait_until


@dataclass
class HttpDaemon:
    daemon: Any          # conftest.DaemonProcess
    base: str            # http://127.0.0.1:PORT
    token: str           # the owner token (admin)

    def scoped(self, scope: str, name: str = "") -> str:
        """A new token with `scope`, made with `warm token create`."""
        made = self.daemon.warm("token", "create", "--name", name or f"t-{scope}", "--scope", scope)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    def in_flight(self, model: str) -> int:
        """Requests running on `model` now (0 when it is not resident)."""
        with self.daemon.client() as c:
            model_ = c.get(model)
            return model_.residency.in_flight if model_.HasField("residency") else 0

    def state(self, model: str) -> str:
        """The model's state name: AVAILABLE, LOADING, READY..."""
        from warmd.v1 import warmd_pb2 as pb

        with self.daemon.client() as c:
            return pb.ModelState.Name(c.get(model).state)


def serve(start_daemon, root: Path, specs: dict[str, str], config: dict | None = None,
          roots: tuple[Path, ...] = (), env: dict | None = None) -> HttpDaemon:  # type: ignore[no-untyped-def]
    """A daemon with spec files `specs` (name -> text) and the HTTP front on 127.0.0.1."""
    folder = root / "specs"
    folder.mkdir(exist_ok=True)
    for name, text in specs.items():
        (folder / f"{name}.yaml").write_text(text)
    port = free_port()
    config = {"path_roots": [str(p) for p in (*roots, root)], "http": f"127.0.0.1:{port}", **(config or {})}
    daemon = start_daemon(folder, root=root, config=config, env=env)
    wait_until(lambda: "HTTP (OpenAI, Ollama, Anthropic) on" in daemon.log(), timeout=30)   # after the socket
    token = (Path(daemon.env["XDG_CONFIG_HOME"]) / "warmd" / "token").read_text().strip()
    return HttpDaemon(daemon, f"http://127.0.0.1:{port}", token)
