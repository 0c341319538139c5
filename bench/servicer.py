"""warmd's own Python per call: V2 ModelInfer's servicer in process, as api/aio.py runs a call on the event
loop from its SyncContext inward (no transport, no client, not grpc.aio's coroutine around it), against a
minimal servicer doing the same work in the same process and round.

    .venv/bin/python bench/servicer.py [--calls 3000] [--rounds 9] [--runs 3] [--baseline DIR]

Both parse the same serialized request ([1,64] float32 for the tiny MLP), run the same torch module and
serialize a response. warmd's path is the one a call takes: a SyncContext on the loop, the error mapping,
the V2 translation, the application layer (admission, scheduler hold, statistics), the torch provider. The
minimal one is `np.frombuffer`, one copy into torch, the forward, `tobytes`. The figure is warmd's time per
call over the minimal one's: the two are interleaved call by call, each round's figure is its calls' median
(this VM's pace drifts by 30 % within minutes, and other processes take the CPU in bursts), and a ratio is
taken within a round, reported as median / min / max over rounds. A call the application layer sends off
the loop (a forward that was slow lately) runs again as a worker thread would run it, and is counted. Each
run is a fresh process; `--baseline DIR` runs another checkout's daemon/ in processes alternating with this
one's, for a before/after in one sitting.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from common import REPO, spread, workdir, write_report


def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    """In this process: µs per call of warmd's servicer and of the minimal one, per round."""
    import numpy as np
    import torch

    from models import write_mlp
    from warmd import server
    from warmd.api import aio
    from warmd.api.v2 import InferenceService
    from warmd.app import App
    from warmd.config import load_settings
    from warmd.errors import WouldWait
    from warmd.v2 import inference_pb2 as v2

    with workdir() as root:
        os.environ.update(XDG_CONFIG_HOME=str(root / "config"), XDG_STATE_HOME=str(root / "state"),
                          XDG_DATA_HOME=str(root / "data"), XDG_CACHE_HOME=str(root / "cache"),
                          XDG_RUNTIME_DIR=str(root / "runtime"), HF_HUB_OFFLINE="1")
        specs = root / "specs"
        specs.mkdir()
        write_mlp(specs)
        server.limit_cpu_threads(1)     # the daemon's default on 2 CPUs (cpu_threads: CPUs / 4, at least 1)
        app = App(load_settings(None, env={}, specs_dir=str(specs), path_roots=[str(root)]))
        app.catalog.start()
        try:
            with app.load("mlp") as load:
                load.result()
            service = InferenceService(app)
            request = v2.ModelInferRequest(model_name="mlp")
            request.inputs.add(name="x", datatype="FP32", shape=[1, 64])
            request.raw_input_contents.append(np.random.default_rng(0).random((1, 64), dtype=np.float32).tobytes())
            raw = request.SerializeToString()
            off_loop = [0]
            loop_call = _servicer_call(service, raw, aio, v2, WouldWait, off_loop)
            _warm_up(loop_call, off_loop)
            resident = app.scheduler.hold("mlp", wait=False)
            app.scheduler.release(resident)
            module = resident.provider.module

            def minimal() -> bytes:
                r = v2.ModelInferRequest.FromString(raw)
                x = np.frombuffer(r.raw_input_contents[0], dtype=np.float32).reshape(1, 64)
                with torch.inference_mode():
                    y = module(torch.from_numpy(x.copy())).numpy()
                response = v2.ModelInferResponse(model_name=r.model_name, id=r.id)
                response.outputs.add(name="y", datatype="FP32", shape=y.shape)
                response.raw_output_contents.append(y.tobytes())
                return response.SerializeToString()

            assert v2.ModelInferResponse.FromString(loop_call()).raw_output_contents == \
                v2.ModelInferResponse.FromString(minimal()).raw_output_contents
            times = _rounds({"warmd": loop_call, "minimal": minimal}, calls, rounds)
            return {**times, "off loop": [float(off_loop[0])]}
        finally:
            app.catalog.stop()


def _servicer_call(service, raw: bytes, aio, v2, would_wait: type,  # type: ignore[no-untyped-def]
                   off_loop: list[int]) -> Callable[[], bytes]:
    """One call as the front makes it: on the loop first; where the application layer says it would wait
    (the model's forwards were not quick lately), again as a worker thread would run it, counted in
    `off_loop`."""
    class Context:      # the part of grpc.aio's ServicerContext a unary call touches
        def invocation_metadata(self) -> tuple:
            return ()

        def time_remaining(self) -> None:
            return None

        def add_done_callback(self, callback: Callable) -> None:
            pass

    context = Context()

    def attempt(on_loop: bool) -> bytes:
        request = v2.ModelInferRequest.FromString(raw)
        return aio._outcome(service.ModelInfer, request, aio.SyncContext(context, on_loop=on_loop)).SerializeToString()

    def call() -> bytes:
        try:
            return attempt(on_loop=True)
        except would_wait:
            off_loop[0] += 1
            return attempt(on_loop=False)
    return call


def _warm_up(call: Callable[[], bytes], off_loop: list[int]) -> None:
    """Until 200 calls in a row ran on the loop: the model is quick there (a busy machine can make the first
    calls' forwards slow enough that the loop sends them to a thread, as it should)."""
    in_a_row = 0
    while in_a_row < 200:
        before = off_loop[0]
        call()
        in_a_row = in_a_row + 1 if off_loop[0] == before else 0
    off_loop[0] = 0


def _rounds(paths: dict[str, Callable[[], bytes]], calls: int, rounds: int) -> dict[str, list[float]]:
    """Each round's median µs per call of every path, the paths interleaved call by call: a median of single
    calls shrugs off the moments another process takes the CPU, which a round's mean would carry."""
    clock = time.perf_counter_ns
    medians: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        order = list(paths.items()) if r % 2 else list(paths.items())[::-1]
        samples: dict[str, list[int]] = {name: [] for name in paths}
        for _ in range(calls):
            for name, fn in order:
                t0 = clock()
                fn()
                samples[name].append(clock() - t0)
        for name, values in samples.items():
            medians[name].append(statistics.median(values) / 1000)
    return medians


def run_child(checkout: Path, calls: int, rounds: int) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=f"{checkout / 'daemon'}{os.pathsep}{checkout / 'clients'}")
    out = subprocess.run([sys.executable, __file__, "--child", "--calls", str(calls), "--rounds", str(rounds)],
                         env=env, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000, help="calls per path per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per checkout")
    parser.add_argument("--baseline", type=Path, help="another checkout whose daemon/ to measure alternately")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.calls, args.rounds)))
        return 0
    checkouts = {"this checkout": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    found: dict[str, dict[str, list[float]]] = {name: {"warmd": [], "minimal": [], "off loop": []}
                                                for name in checkouts}
    for run in range(args.runs):
        for name in (list(checkouts) if run % 2 == 0 else list(checkouts)[::-1]):
            for path, values in run_child(checkouts[name], args.calls, args.rounds).items():
                found[name][path] += values
    lines = ["# warmd's servicer per call, in process (V2 ModelInfer, tiny MLP)", "",
             f"`.venv/bin/python bench/servicer.py --calls {args.calls} --rounds {args.rounds} --runs {args.runs}"
             f"{' --baseline ' + str(args.baseline) if args.baseline else ''}` on {platform.machine()}, "
             f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; median (min-max) over "
             f"{args.runs * args.rounds} rounds", "",
             "| code | warmd µs/call (p50) | minimal µs/call (p50) | warmd / minimal (per round) "
             "| warmd − minimal µs | warmd's calls run off the loop |", "|---|---|---|---|---|---|"]
    us, ratio = (lambda v: f"{v:.1f}"), (lambda v: f"{v:.2f}x")
    for name, times in found.items():
        ratios = [w / m for w, m in zip(times["warmd"], times["minimal"])]
        extra = [w - m for w, m in zip(times["warmd"], times["minimal"])]
        lines.append(f"| {name} | {spread(times['warmd'], us)} | {spread(times['minimal'], us)} | "
                     f"{spread(ratios, ratio)} | {spread(extra, us)} | {sum(times['off loop']):.0f} |")
    write_report("servicer-baseline" if args.baseline else "servicer", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
