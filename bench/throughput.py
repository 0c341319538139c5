"""Throughput with 32 concurrent clients, tiny MLP, against two floors under the same load, all on Unix
sockets: a bare grpcio echo server (what the transport alone sustains) and a bare grpc.aio server that runs
the same tiny MLP and nothing else (forward_server.py: what any Python server of the model sustains).

    .venv/bin/python bench/throughput.py [--clients 32] [--seconds 5] [--rounds 2] [--baseline DIR] [--models M,...]

The load is bench/peers.py's (grpc.aio clients in 2 processes, a channel each, V2 ModelInfer [1,64] float32
back to back; the echo server gets the same request bytes); the daemon runs with its default settings, as
in bench/peers.py; the second floor gets the same V2 requests. Rows: the model's spec as a user writes it (max_in_flight 4: 28 of the 32 calls wait in
its admission queue), with max_in_flight 32, and with dynamic batching (max_batch 32, 1 ms). Each round
runs the floors, then row by row each daemon in turn (each round the other first); each figure is the median
of the rounds, and with `--baseline` each row's ratio is taken within each round, between the two measures
taken next to each other (the machine's pace drifts within a run: rows with the same code in both daemons
differed by up to 34 % as medians of 3 rounds). Two more rows run a model whose
forward is ten times the tiny MLP's (64-1024-1024-10: 0.1-0.3 ms for one row, 1.1-1.8 ms for 32 on one
core), and two a model whose forward is most of a call (64-2048-2048-10: 1.2 ms for one row, 5.2 ms for 32),
without and with dynamic batching: where batching can pay. Server CPU per call is the figure
a shared machine disturbs least. `--baseline DIR` adds the same rows for another checkout's daemon/ (e.g.
`git worktree add DIR main`), measured in the same rounds: before/after a change in one run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from common import process, spread, wait_for, workdir, write_report
from peers import Load, median_load, throughput

from models import write_mlp

ECHO = Path(__file__).resolve().parent / "echo_server.py"
FORWARD = Path(__file__).resolve().parent / "forward_server.py"
FLOOR, FORWARD_FLOOR = "bare grpcio echo (floor)", "grpc.aio + the tiny MLP's forward (floor with the model)"
ROWS = {"warmd, spec defaults (max_in_flight 4)": "mlp", "warmd, max_in_flight 32": "wide",
        "warmd, dynamic batching (max_batch 32, 1 ms)": "batched",
        "warmd, MLP 64-1024-1024-10, max_in_flight 32": "medium",
        "warmd, MLP 64-1024-1024-10, dynamic batching (max_batch 32, 1 ms)": "medium-batched",
        "warmd, MLP 64-2048-2048-10, max_in_flight 32": "large",
        "warmd, MLP 64-2048-2048-10, dynamic batching (max_batch 32, 1 ms)": "large-batched"}
SIZES = {"medium": (64, 1024, 1024, 10), "large": (64, 2048, 2048, 10)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="another checkout whose daemon/ to run beside this one")
    parser.add_argument("--models", help="only these rows' models, by name (e.g. large,large-batched)")
    args = parser.parse_args()
    rows = {name: model for name, model in ROWS.items() if not args.models or model in args.models.split(",")}
    from warm import Client

    daemons = {"": None, **({"baseline ": args.baseline.resolve() / "daemon"} if args.baseline else {})}
    runs: dict[str, list[Load]] = {FLOOR: [], FORWARD_FLOOR: []}
    with workdir() as root, contextlib.ExitStack() as stack:
        specs = root / "specs"
        specs.mkdir()
        wide = f"max_in_flight: {args.clients}\n"
        batched = wide + f"max_batch: {args.clients}\nmax_delay_ms: 1\n"
        for model in rows.values():     # "mlp" is the spec as a user writes it; the others widen or batch it
            write_mlp(specs, model, sizes=SIZES.get(model.split("-")[0], (64, 128, 10)))
            extra = "" if model == "mlp" else batched if model.endswith("batched") else wide
            (specs / f"{model}.yaml").write_text((specs / f"{model}.yaml").read_text() + extra)
        esock, fsock = root / "e.sock", root / "f.sock"
        echo = stack.enter_context(process([sys.executable, str(ECHO), str(esock)], root, "echo.log"))
        write_mlp(root, "floor")        # the tiny MLP's weights for the second floor
        bare = stack.enter_context(process([sys.executable, str(FORWARD), str(fsock), str(root / "floor.safetensors"),
                                            "64,128,10"], root, "forward.log"))
        started = {}
        for prefix, daemon_dir in daemons.items():     # each its own state folders; they share the specs
            home = root / (prefix.strip() or "warmd")
            home.mkdir()
            sock = home / "w.sock"
            proc = stack.enter_context(process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs),
                                                "--socket", str(sock)], home, "warmd.log",
                                               {"PYTHONPATH": str(daemon_dir)} if daemon_dir else None))
            with Client(sock, timeout=60) as c:
                wait_for(lambda: c.status(), timeout=60)
                for model in rows.values():
                    c.load(model)
            started[prefix] = (sock, proc)
        wait_for(lambda: esock.exists() and fsock.exists())
        for round_ in range(args.rounds):
            runs[FLOOR].append(throughput("echo", f"unix:{esock}", "", clients=args.clients, seconds=args.seconds,
                                          server_pid=echo.pid))
            runs[FORWARD_FLOOR].append(throughput("v2", f"unix:{fsock}", "floor", clients=args.clients,
                                                  seconds=args.seconds, server_pid=bare.pid))
            # Row by row, the daemons in turn (each round the other first): the machine's pace drifts within a
            # run, so the two measures of a row that are compared are taken next to each other.
            for name, model in rows.items():
                for prefix, (sock, proc) in list(started.items())[::1 if round_ % 2 == 0 else -1]:
                    runs.setdefault(prefix + name, []).append(throughput(
                        "v2", f"unix:{sock}", model, clients=args.clients, seconds=args.seconds, server_pid=proc.pid))
    results = {name: median_load(loads) for name, loads in runs.items()}
    floor, model_floor = results[FLOOR].rate, results[FORWARD_FLOOR].rate
    lines = [f"# Throughput, {args.clients} concurrent clients, tiny MLP 64-128-10, [1,64] float32", "",
             f"`.venv/bin/python bench/throughput.py --clients {args.clients} --seconds {args.seconds:g} --rounds "
             f"{args.rounds}{' --baseline ' + str(args.baseline) if args.baseline else ''}"
             f"{' --models ' + args.models if args.models else ''}` on {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; "
             "clients (grpc.aio, 2 processes) on the same machine, sharing its CPUs with the server", "",
             "| server | calls/s | ratio to the floor | ratio to the floor with the model | server CPU µs/call | "
             "clients' CPU µs/call |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r.rate:.0f} | {r.rate / floor:.2f}x | {r.rate / model_floor:.2f}x | {r.server_us or 0:.0f} "
              f"| {r.client_us:.0f} |" for name, r in results.items()]
    if args.baseline:
        lines += ["", "Against the baseline, per round (the two measured next to each other): median (min–max)", "",
                  "| row | calls/s | server CPU µs/call |", "|---|---|---|"]
        for name in rows:
            ours, theirs = runs[name], runs["baseline " + name]
            rates = [a.rate / b.rate for a, b in zip(ours, theirs)]
            cpus = [a.server_us / b.server_us for a, b in zip(ours, theirs)]  # type: ignore[operator]
            lines.append(f"| {name} | {spread(rates, lambda x: f'{x:.2f}x')} | {spread(cpus, lambda x: f'{x:.2f}x')} |")
    write_report("throughput-baseline" if args.baseline else "throughput", lines)
    print(json.dumps({name: r.rate for name, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
