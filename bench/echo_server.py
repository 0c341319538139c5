"""The floor: a bare grpcio server that echoes request bytes (no protobuf parsing, no model).
Run as `python bench/echo_server.py SOCKET` (a Unix socket) or `python bench/echo_server.py 127.0.0.1:PORT`;
ready when it answers."""
from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc

METHOD = "/bench.Echo/Echo"


def serve(where: str) -> None:
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(where if ":" in where else f"unix:{where}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=None)


if __name__ == "__main__":
    serve(sys.argv[1])
