"""Which grpcio server model costs least per call: the sync server with a thread pool (warmd's until this
wave) or grpc.aio (MLServer's; warmd's now, on uvloop), answering inline or handing each call to a thread (as
a daemon must for models that block).

    .venv/bin/python bench/grpc_servers.py [--seconds 3] [--rounds 2]

Echo servers (bench/echo_server.py's method) under bench/peers.py's 32-client load on Unix sockets; rounds
alternate between them. Server CPU per call is the figure a shared machine disturbs least.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time
from concurrent import futures

from common import process, wait_for, workdir, write_report
from echo_server import METHOD
from peers import Load, median_load, throughput

VARIANTS = {"sync, 32 threads": ("sync", 32), "sync, 4 threads": ("sync", 4), "grpc.aio, inline": ("aio", 0),
            "grpc.aio on uvloop, inline (warmd's)": ("uvloop", 0),
            "grpc.aio, each call on a thread (pool of 4)": ("handoff", 4)}


def serve(kind: str, where: str, threads: int) -> None:
    """Serve the echo method as `kind` until killed."""
    import grpc

    if kind == "sync":
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
        server.add_insecure_port(where)
        server.start()
        threading.Event().wait()
    pool = futures.ThreadPoolExecutor(max_workers=max(threads, 1))

    async def inline(request, context):  # type: ignore[no-untyped-def]
        return request

    async def handoff(request, context):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: request)

    async def main() -> None:
        handler = grpc.unary_unary_rpc_method_handler(handoff if kind == "handoff" else inline)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
        server.add_insecure_port(where)
        await server.start()
        await server.wait_for_termination()
    if kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    assert METHOD == "/bench.Echo/Echo"
    runs: dict[str, list[Load]] = {name: [] for name in VARIANTS}
    with workdir() as root:
        for _ in range(args.rounds):
            for name, (kind, threads) in VARIANTS.items():
                sock = root / f"{kind}{threads}.sock"
                with process([sys.executable, __file__, "--serve", kind, f"unix:{sock}", str(threads)], root,
                             f"{kind}.log") as server:
                    wait_for(lambda: sock.exists())
                    time.sleep(0.3)
                    runs[name].append(throughput("echo", f"unix:{sock}", "", seconds=args.seconds,
                                                 server_pid=server.pid))
    lines = ["# grpcio server models, echo under 32 clients", "",
             f"`.venv/bin/python bench/grpc_servers.py --seconds {args.seconds:g} --rounds {args.rounds}` on "
             f"{platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; "
             "median of the rounds", "", "| server | calls/s | server CPU µs/call |", "|---|---|---|"]
    for name, loads in runs.items():
        load = median_load(loads)
        lines.append(f"| {name} | {load.rate:.0f} | {load.server_us or 0:.0f} |")
    write_report("grpc_servers", lines)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(main())
