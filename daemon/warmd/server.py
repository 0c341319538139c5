"""Wiring and lifecycle: lock, listen, announce readiness, serve until a signal, drain, clean up.

The daemon's parts and every call of the fronts are the application layer's (warmd.app); this module puts
its fronts (warmd.v1, V2, health, reflection) on the Unix socket and the TCP port, and runs the parts'
lifecycle in order. The HTTP front (warmd.http) joins them when `http:` is set; its libraries are imported
only then."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Any, Coroutine, TypeVar

import filelock
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from warmd import __version__, paths
from warmd.api import aio
from warmd.api.auth import OPEN_METHODS, TokenAuth
from warmd.api.drain import Drain
from warmd.api.serialized import passing_through
from warmd.api.service import WarmdService
from warmd.api.v2 import InferenceService
from warmd.app import App
from warmd.config import Settings
from warmd.errors import Code, WarmdError
from warmd.v1 import warmd_pb2, warmd_pb2_grpc
from warmd.v2 import inference_pb2, inference_pb2_grpc

if TYPE_CHECKING:
    from warmd.metrics import Metrics     # prometheus_client: imported only when metrics are on

log = logging.getLogger("warmd")
T = TypeVar("T")
STOP_WAIT_S = 2.0     # after the drain: the grace for answers in transit, and for cancelling what is left


class Daemon:
    """One running warmd. `run()` blocks until SIGTERM/SIGINT and returns the exit status."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = App(settings)
        self.metrics: Metrics | None = None
        self.http: Any = None       # warmd.http.server.HttpFront, when `http:` is set
        self.health = health.HealthServicer()
        # Calls that may wait (loads, streams, slow models) run here; the rest on the event loop (api/aio.py).
        self.pool = futures.ThreadPoolExecutor(max_workers=settings.rpc_threads, thread_name_prefix="rpc")
        self.drain = Drain()
        self.loop = new_event_loop()
        self.servers: list[grpc.aio.Server] = []
        self._stop = threading.Event()
        self._lock: filelock.BaseFileLock | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def run(self) -> int:
        self._check_specs_folder()
        self._take_lock()
        limit_cpu_threads(self.settings.threads_per_call())
        try:
            self.app.plugins.start()
            self.app.catalog.start()
            self._listen()
            self._notify_ready()
            self.app.scheduler.start()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
            while not self._stop.wait(1.0):
                pass
            self._shutdown()
            return 0
        finally:
            self._cleanup()

    def stop(self) -> None:
        self._stop.set()

    def _check_specs_folder(self) -> None:
        """The default folder is made on first start (a fresh install starts empty); a folder the user
        named must exist: a mistyped --specs is said at once, not served as an empty catalog."""
        folder = self.settings.specs_dir
        if folder == paths.default_specs_dir():
            folder.mkdir(parents=True, exist_ok=True)
        try:
            os.listdir(folder)
        except FileNotFoundError:
            raise WarmdError(Code.INVALID_ARGUMENT, f"the specs folder {folder} does not exist; create it "
                             f"(mkdir -p {folder}) or pass --specs with the folder that holds your spec files") from None
        except OSError as exc:
            raise WarmdError(Code.INVALID_ARGUMENT, f"the specs folder {folder} cannot be read: {exc.strerror}; "
                             "pass --specs with a readable folder") from None

    def _take_lock(self) -> None:
        """Refuse to start while another daemon holds this socket: grpc would silently steal it."""
        sock = self.settings.socket
        sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(sock.parent, 0o700)
        self._lock = filelock.FileLock(str(sock) + ".lock")
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            pid = paths.read_or_empty(self._pid_file())
            raise WarmdError(Code.UNAVAILABLE, f"another warmd (pid {pid or 'unknown'}) is serving {sock}; "
                             f"stop it first (kill {pid or '<pid>'}) or pass --socket") from None
        self._pid_file().write_text(f"{os.getpid()}\n")
        if sock.exists() or sock.is_symlink():
            sock.unlink()   # a stale socket from a daemon that died; we hold the lock, so it is ours

    def _listen(self) -> None:
        s = self.settings
        threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True).start()
        methods = self._methods()
        unix = self._on_loop(self._serve(f"unix:{s.socket}", methods, auth=None))[0]
        os.chmod(s.socket, 0o600)
        self.servers.append(unix)
        log.info("warmd %s listening on %s (pid %d)", __version__, s.socket, os.getpid())
        if s.tcp:
            host = check_tcp(s.tcp, s.tcp_allow_remote)
            self.app.tokens.ensure_owner(s.token_file)
            tcp, port = self._on_loop(self._serve(s.tcp, methods, auth=TokenAuth(self.app.tokens)))
            self.servers.append(tcp)
            log.info("also listening on %s:%d (bearer token in %s)", host, port, s.token_file)
        if s.http:
            self.http = self._http_front()
        if s.metrics:
            host = check_tcp(s.metrics, allow_remote=False, remedy="metrics have no token and stay on this machine")
            from warmd.metrics import Metrics

            app = self.app
            self.metrics = Metrics(app.catalog, app.scheduler, app.inference, app.bus)
            app.inference.observer = self.metrics.observe
            port = self.metrics.serve(host, int(s.metrics.rpartition(":")[2]))
            log.info("metrics on http://%s:%d/metrics", host, port)

    def _http_front(self) -> Any:
        """The OpenAI/Ollama/Anthropic HTTP front, listening (its libraries are imported only here)."""
        s = self.settings
        try:
            from warmd.http.server import HttpFront
        except ImportError as exc:
            raise WarmdError(Code.INVALID_ARGUMENT, f"http: is set, but the HTTP front's libraries are missing "
                             f"({exc.name}); pip install 'warmd[http]', or unset http") from None
        self.app.tokens.ensure_owner(s.token_file)
        front = HttpFront(self.app, self.drain, s.http, s.http_allow_remote, s.http_anonymous)
        front.start()
        log.info("HTTP (OpenAI, Ollama, Anthropic) on %s (bearer token in %s%s)", front.url, s.token_file,
                 f"; anonymous loopback callers get {s.http_anonymous!r}" if s.http_anonymous else "")
        return front

    def _on_loop(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the servers' event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def _methods(self) -> aio.Methods:
        """Every service's handlers, collected once for both servers."""
        methods = aio.Methods()
        warmd_pb2_grpc.add_WarmdServicer_to_server(WarmdService(self.app), methods)
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(self.app), methods)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, methods)
        names = (warmd_pb2.DESCRIPTOR.services_by_name["Warmd"].full_name,
                 inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names), methods)
        return methods

    async def _serve(self, address: str, methods: aio.Methods, auth: TokenAuth | None) -> tuple[grpc.aio.Server, int]:
        """A started server on `address` and its port (made on the loop, which grpc.aio binds it to). Every
        call but health and reflection passes the drain, and on TCP the token check first."""
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            migration_thread_pool=self.pool,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 0)])
        drain = self.drain

        def enter(method: str) -> aio.Enter | None:
            if method.startswith(OPEN_METHODS):
                return None        # health answers NOT_SERVING by itself while the daemon drains
            if auth is None:
                return lambda _method, _context: drain.admit()

            def checked(method: str, context: grpc.aio.ServicerContext) -> None:
                auth.check(method, context)
                drain.admit()
            return checked

        aio.serve(server, methods, self.pool, enter, drain.leave, passing_through)
        port = server.add_insecure_port(address)
        await server.start()
        return server, port

    def _notify_ready(self) -> None:
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for service in ("warmd.v1.Warmd", "inference.GRPCInferenceService"):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        sd_notify(b"READY=1")
        log.info("ready: %d model(s), %d rejected spec file(s) in %s", len(self.app.catalog.specs()),
                 len(self.app.catalog.rejected()), self.settings.specs_dir)

    def _shutdown(self) -> None:
        """Refuse new calls ("warmd is shutting down"), let those under way finish within drain_timeout,
        cancel what is left, unload everything."""
        drain = self.settings.drain_timeout
        deadline = time.monotonic() + drain
        log.info("stopping: draining requests for up to %.0fs", drain)
        sd_notify(b"STOPPING=1")
        self.health.enter_graceful_shutdown()
        self.drain.close(drain)
        self.app.bus.close_all()    # ends watch streams, which would otherwise hold the drain open
        # A call whose servicer returned may still be sending its answer: when the drain ended idle, the
        # servers get a grace period for those; calls still running after drain_timeout are cancelled now.
        grace: float | None = STOP_WAIT_S
        if not self.drain.wait_idle(drain):
            log.warning("%d call(s) still running after drain_timeout (%gs); cancelling them",
                        self.drain.running(), drain)
            grace = None
        self._stop_servers(grace)
        if self.http is not None:
            self.http.stop(STOP_WAIT_S)
        self.app.catalog.stop()
        self.app.plugins.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.app.scheduler.shutdown(timeout_s=max(1.0, deadline - time.monotonic()))
        log.info("stopped")

    def _stop_servers(self, grace: float | None) -> None:
        """Stop the servers (answers in transit get `grace` seconds; then what is left is cancelled)."""
        if not self.servers:
            return
        try:
            self._on_loop(_stop_all(self.servers, grace), STOP_WAIT_S * 2)
        except (TimeoutError, futures.TimeoutError):
            log.warning("the gRPC servers did not stop within %gs", STOP_WAIT_S * 2)
        self.servers.clear()

    def _cleanup(self) -> None:
        if self.loop.is_running():
            self._stop_servers(grace=None)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.http is not None:
            self.http.stop(STOP_WAIT_S)
        self.app.regions.close()
        if self._lock is not None and self._lock.is_locked:
            # The lock file goes too, while held: filelock (>= 4.3.1) retries a lock on an unlinked file.
            for path in (self.settings.socket, self._pid_file(), Path(self._lock.lock_file)):
                path.unlink(missing_ok=True)
            self._lock.release()

    def _pid_file(self) -> Path:
        return self.settings.socket.with_name(self.settings.socket.name + ".pid")


async def _stop_all(servers: list[grpc.aio.Server], grace: float | None) -> None:
    await asyncio.gather(*[server.stop(grace) for server in servers])


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The gRPC front's event loop: uvloop's where it exists (not on Windows); measured on 2 CPUs, grpc.aio
    answering on it cost 392 µs of server CPU a call against 470 on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def check_tcp(address: str, allow_remote: bool,
               remedy: str = "set tcp_allow_remote: true in the config to listen beyond this machine") -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise WarmdError(Code.INVALID_ARGUMENT, f"{address!r} must be HOST:PORT, e.g. 127.0.0.1:7071")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise WarmdError(Code.INVALID_ARGUMENT, f"{address!r} is not a loopback address; {remedy}")
    return host


def limit_cpu_threads(threads: int) -> None:
    """Size the runtimes' thread pools (read when torch is first imported, after this) to `threads` per call,
    unless the environment sizes them already. Measured on 2 CPUs: a tiny MLP's forward took 0.03-0.08 ms with
    one OpenMP thread and 1.5-1.8 ms with two while the CPUs were busy, its second thread waiting to be
    scheduled; concurrent calls are the daemon's parallelism."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))


def sd_notify(message: bytes) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message, address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", target, exc)


def setup_logging(settings: Settings) -> None:
    """Log to stderr (the service manager's journal) and to a rotated file that `warm status` names."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("warmd")
    root.setLevel(settings.log_level.upper())
    root.handlers.clear()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    root.addHandler(stderr)
    try:
        settings.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        rotating = logging.handlers.RotatingFileHandler(settings.log_file, maxBytes=10 * 2**20, backupCount=3)
        rotating.setFormatter(fmt)
        root.addHandler(rotating)
    except OSError as exc:
        root.warning("cannot write the log file %s (%s); logging to stderr only", settings.log_file, exc)
