"""The HTTP front against InferStream and against llama-cpp-python's own OpenAI-compatible server, in one run.

    .venv/bin/pip install "sse-starlette>=3.7" "starlette-context>=0.5" "pydantic-settings>=2.16"   # once
    .venv/bin/python bench/http_front.py [--trials 10] [--tokens 64] [--seconds 5] [--switches 20]

(Not bench/http.py: a script's folder comes first on sys.path, and that name would hide the standard
library's `http` from every import.) The pip line installs llama-cpp-python's server extras for
`llama_cpp.server` (FastAPI and uvicorn come with warmd's `http` extra) into the venv, for this benchmark
only: warmd does not need them.

Models: llama-architecture GGUFs written by tests/gguf_models.py — a chat model of bench/llm.py's shape
(8 layers, hidden 512, F32, ~100 MB), two larger chat models for the switching (8 layers, hidden 1024,
~370 MB each) and a small embedding model (mean pooling). warmd serves them from one daemon (keep_alive
-1); `llama_cpp.server` from one config file listing them all (it holds one model at a time and reloads on
a switch). The same llama.cpp threads on both, waiting passively (OMP_WAIT_POLICY=PASSIVE, so the idle
side does not spin on the CPUs).

1. Streamed chat, tokens/s (decode rate after the first token, greedy, --tokens per call): warmd's
   `/v1/chat/completions` through the official `openai` client, the same model through `InferStream`
   (`warm.Client.infer_stream`, the chat task over the Unix socket), and `llama_cpp.server`'s
   `/v1/chat/completions` through the same client. Each trial runs the three back to back, each with a
   prompt of its own (no side answers from a cached prefix); ratios are medians of per-trial ratios.
   Goal: the OpenAI endpoint >= 0.95x InferStream.
2. Embeddings, requests/s: 32 client threads (one keep-alive connection each) posting one short text per
   `/v1/embeddings` request for --seconds, to warmd and to llama_cpp.server.
3. Switching between the two larger chat models in alternation (A, B, A, B... --switches requests of one
   token each, so the switch and not the decode is measured, each with a new prompt): requests/s and p50
   latency, warmd (both stay resident within its budget) against llama_cpp.server (which reloads the
   model at each switch); then the same with both servers reading the files instead of mapping them
   (use_mmap false), as a load onto a GPU copies the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from common import process, wait_for, workdir, write_report
from llm import SHAPE, model_mib

from gguf_models import TinyLlama, write_tiny_llama
from waiting import free_port

os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
CLIENTS = 32
SWITCH_TOKENS = 1      # the switch itself, not the decode, is what differs
READ = ("ra", "rb")     # served with use_mmap false
SWITCH_SHAPE = TinyLlama(layers=8, hidden=1024, ff=2816, heads=16, kv_heads=8, seed=7)    # ~370 MiB F32


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args()
    import httpx
    import llama_cpp
    import openai
    from warm import Client

    with workdir() as root:
        paths = {"a": write_tiny_llama(root / "a.gguf", SHAPE),
                 "sa": write_tiny_llama(root / "sa.gguf", SWITCH_SHAPE),
                 "sb": write_tiny_llama(root / "sb.gguf", TinyLlama(**{**SWITCH_SHAPE.__dict__, "seed": 8})),
                 "emb": write_tiny_llama(root / "emb.gguf", embedding=True)}
        specs = root / "specs"
        specs.mkdir()
        # the switching pair again, read instead of mapped (use_mmap false): a load then copies the weights,
        # as it does onto a GPU, rather than mapping what the page cache holds
        served = {**paths, "ra": paths["sa"], "rb": paths["sb"]}
        for name, path in served.items():
            task = "feature-extraction" if name == "emb" else "chat"
            (specs / f"{name}.yaml").write_text(
                f"provider: llama-cpp\ntask: {task}\ndevice: cpu\nsource: {{path: {path}}}\n"
                f"options: {{n_ctx: 2048, threads: {args.threads}, use_mmap: {str(name not in READ).lower()}}}\n"
                "keep_alive: -1\nmax_queue: 256\n")
        ours, theirs = free_port(), free_port()
        (root / "config.yaml").write_text(f"path_roots: [{root}]\nhttp: 127.0.0.1:{ours}\n")
        (root / "llama.json").write_text(json.dumps({"host": "127.0.0.1", "port": theirs, "models": [
            {"model": str(path), "model_alias": name, "n_ctx": 2048, "n_threads": args.threads,
             "n_threads_batch": args.threads, "embedding": name == "emb", "use_mmap": name not in READ,
             "verbose": False}
            for name, path in served.items()]}))
        sock = root / "w.sock"
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock),
                      "--config", str(root / "config.yaml")], root, "warmd.log"), \
                process([sys.executable, "-m", "llama_cpp.server", "--config_file", str(root / "llama.json")],
                        root, "llama.log"):
            token = _wait_token(root)
            warm = openai.OpenAI(base_url=f"http://127.0.0.1:{ours}/v1", api_key=token, max_retries=0, timeout=600)
            peer = openai.OpenAI(base_url=f"http://127.0.0.1:{theirs}/v1", api_key="-", max_retries=0, timeout=600)
            wait_for(lambda: (warm.models.list(), peer.models.list()), timeout=120)
            with Client(sock, timeout=600) as grpc_client:
                streamed = _streams(args, warm, peer, grpc_client)
            embeds = {side: _embeddings(httpx, base, key, args.seconds)
                      for side, base, key in (("warmd", f"http://127.0.0.1:{ours}", token),
                                              ("llama_cpp.server", f"http://127.0.0.1:{theirs}", "-"))}
            switching = {(side, pair): _switching(client, pair, args.switches)
                         for pair in (("sa", "sb"), READ)
                         for side, client in (("warmd", warm), ("llama_cpp.server", peer))}
    p50 = statistics.median
    http_vs_grpc = p50([a / b for a, b in zip(streamed["openai"], streamed["grpc"])])
    http_vs_peer = p50([a / b for a, b in zip(streamed["openai"], streamed["peer"])])
    emb_ratio = embeds["warmd"] / embeds["llama_cpp.server"]
    sw = {key: (args.switches / sum(times), p50(times)) for key, times in switching.items()}
    lines = [
        "# The HTTP front: OpenAI endpoint against InferStream and llama_cpp.server", "",
        f"`.venv/bin/python bench/http_front.py --trials {args.trials} --tokens {args.tokens} "
        f"--seconds {args.seconds:g} "
        f"--switches {args.switches} --threads {args.threads}` on {platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f} at the start), llama-cpp-python {llama_cpp.__version__}, {time.strftime('%Y-%m-%d %H:%M')}; chat models "
        f"{SHAPE.layers} layers x {SHAPE.hidden} (F32, {model_mib(SHAPE):.0f} MiB), greedy, "
        f"{args.threads} llama.cpp threads on both servers", "",
        "| what | warmd `/v1/chat/completions` | warmd InferStream | llama_cpp.server | OpenAI endpoint vs |",
        "|---|---|---|---|---|",
        f"| streamed chat, decode tokens/s (p50 of {args.trials}) | {p50(streamed['openai']):.1f} | "
        f"{p50(streamed['grpc']):.1f} | {p50(streamed['peer']):.1f} | {http_vs_grpc:.3f}x InferStream, "
        f"{http_vs_peer:.3f}x llama_cpp.server |", "",
        "| what | warmd | llama_cpp.server | ratio |", "|---|---|---|---|",
        f"| embeddings, requests/s, {CLIENTS} clients, {args.seconds:g} s | {embeds['warmd']:.0f} | "
        f"{embeds['llama_cpp.server']:.0f} | {emb_ratio:.2f}x |",
        *(row for pair, how in ((("sa", "sb"), "mapped"), (READ, "read, use_mmap false")) for row in (
            f"| A, B, A, B... chat ({SWITCH_TOKENS} token, {model_mib(SWITCH_SHAPE):.0f} MiB models {how}), "
            f"requests/s | {sw['warmd', pair][0]:.2f} | {sw['llama_cpp.server', pair][0]:.2f} | "
            f"{sw['warmd', pair][0] / sw['llama_cpp.server', pair][0]:.2f}x |",
            f"| the same, p50 latency ms | {sw['warmd', pair][1] * 1e3:.0f} | "
            f"{sw['llama_cpp.server', pair][1] * 1e3:.0f} | "
            f"{sw['llama_cpp.server', pair][1] / sw['warmd', pair][1]:.2f}x "
            "less |")), "",
        f"Goal: the OpenAI endpoint >= 0.95x InferStream's tokens/s ({'met' if http_vs_grpc >= 0.95 else 'missed'}: "
        f"{http_vs_grpc:.3f}x). llama_cpp.server holds one model and reloads at every switch; warmd keeps both "
        "resident within its memory budget."]
    write_report("http", lines)
    return 0


def _wait_token(root: Path) -> str:
    token_file = root / "config" / "warmd" / "token"
    wait_for(lambda: "HTTP (OpenAI" in (root / "warmd.log").read_text(), timeout=60)
    return token_file.read_text().strip()


def _streams(args: argparse.Namespace, warm: Any, peer: Any, grpc_client: Any) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"openai": [], "grpc": [], "peer": []}
    for trial in range(args.trials + 1):                    # trial 0 warms up (and loads)
        def talk(word: str) -> list[dict[str, str]]:
            return [{"role": "user", "content": f"{word} trial {trial} once upon a time there was a good word"}]

        sides: list[tuple[str, Callable[[], tuple[float, int]]]] = [
            ("openai", lambda: _openai_stream(warm, "a", talk("good"), args.tokens)),
            ("grpc", lambda: _grpc_stream(grpc_client, talk("bad"), args.tokens)),
            ("peer", lambda: _openai_stream(peer, "a", talk("one"), args.tokens))]
        for side, run in sides if trial % 2 else list(reversed(sides)):
            rate, tokens = run()
            if tokens != args.tokens:
                raise AssertionError(f"{side} generated {tokens} tokens, expected {args.tokens}")
            if trial:
                rates[side].append(rate)
    return rates


def _openai_stream(client: Any, model: str, messages: list[dict[str, str]], tokens: int) -> tuple[float, int]:
    first = last = 0.0
    count = 0
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=tokens, temperature=0,
                                                stream=True):
        if chunk.choices and chunk.choices[0].delta.content:     # one piece per token (an ASCII vocabulary)
            last = time.perf_counter()
            first = first or last
            count += 1
    return (count - 1) / (last - first), count


def _grpc_stream(client: Any, messages: list[dict[str, str]], tokens: int) -> tuple[float, int]:
    first = last = 0.0
    count = 0
    for chunk in client.infer_stream("a", parameters={"messages": messages, "max_tokens": tokens, "temperature": 0}):
        if chunk.text:
            last = time.perf_counter()
            first = first or last
            count += 1
    return (count - 1) / (last - first), count


def _embeddings(httpx: Any, base: str, key: str, seconds: float) -> float:
    """Requests/s of CLIENTS threads, each posting one text per request until the time is up."""
    done = [0] * CLIENTS
    start = threading.Barrier(CLIENTS + 1)
    stop_at: list[float] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as h:
            h.post("/v1/embeddings", json={"model": "emb", "input": "warm up"}).raise_for_status()
            start.wait()
            n = 0
            while time.perf_counter() < stop_at[0]:
                h.post("/v1/embeddings", json={"model": "emb", "input": f"client {i} text {n}"}).raise_for_status()
                n += 1
            done[i] = n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    stop_at.append(time.perf_counter() + 1e9)
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def _switching(client: Any, pair: tuple[str, str], switches: int) -> list[float]:
    """Latencies of chat requests alternating between the two models of `pair` (after one warm-up of each)."""
    times = []
    for i in range(switches + 2):
        model = pair[i % 2]
        t0 = time.perf_counter()
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"switch {i} to {model}"}],
                                       max_tokens=SWITCH_TOKENS, temperature=0)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


if __name__ == "__main__":
    sys.exit(main())
