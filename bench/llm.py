"""A GGUF model through warmd against llama-cpp-python in-process: tokens/s, time to first token, load time.

    .venv/bin/python bench/llm.py [--trials 10] [--tokens 64] [--device cpu|cuda:0] [--threads N]

Model: a llama-architecture GGUF written by tests/gguf_models.py (8 layers, hidden 512, F32, ~100 MB),
the same file, seed, thread count and sampling on every side, and prompts of the same length. Each trial
and each side has its own prompt (so none answers from a cached prefix: llama-cpp-python reuses the KV
cache of a matching prefix), and the sides run alternately, in one run:
- warmd: `warm.Client.infer_stream` (InferStream over the Unix socket), task text-generation; time to first
  token = first text chunk; tokens from the result's usage;
- in-process: `Llama.create_completion(stream=True)`, what a program embedding llama-cpp-python does;
- the floor: `Llama.generate()`, llama-cpp-python's bare token loop (no detokenizing, no stop strings).
Both sides' OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE), so the idle one does not spin on the
CPUs the other is measured on. Tokens/s is the decode rate after the first token ((tokens - 1) / (last - first)); its ratio is the
median of the per-trial ratios (the sides of a trial run back to back). Goal: warmd >= 0.95x the
in-process tokens/s, time-to-first-token overhead <= 5 ms p50. Load: `warm load` (estimate from the header,
dry run, load) against `Llama(...)`, each of a file already in the page cache. Cancel: close a stream
after 3 tokens and time a 1-token call queued behind it (max_in_flight 1), less that call's own time
(goal: well under 100 ms). On a GPU (`--device cuda:0`,
a CUDA build of llama-cpp-python) both sides offload every layer.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from common import percentile, process, wait_for, workdir, write_report

from gguf_models import TinyLlama, write_tiny_llama

SHAPE = TinyLlama(layers=8, hidden=512, ff=1536, heads=8, kv_heads=4, seed=5)
# llama.cpp's OpenMP workers spin after each step by default: the idle side would steal the CPUs of the
# side being measured. Both sides wait passively (set before llama_cpp is imported, and given to the daemon).
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="llama.cpp threads, the same on every side (default: half the cores, llama-cpp-python's "
                        "n_threads, leaving the client and the RPC a core)")
    args = parser.parse_args()
    import llama_cpp
    from warm import Client

    gpu = args.device.startswith("cuda")
    ours: dict[str, list[float]] = {"ttft": [], "tps": [], "load": []}
    theirs: dict[str, list[float]] = {"ttft": [], "tps": [], "load": []}
    floor: dict[str, list[float]] = {"ttft": [], "tps": []}
    cancel: dict[str, list[float]] = {"cancel": [], "call": []}
    with workdir() as root:
        model = write_tiny_llama(root / "bench.gguf", SHAPE)
        specs = root / "specs"
        specs.mkdir()
        (specs / "llm.yaml").write_text(
            f"provider: llama-cpp\ntask: text-generation\ndevice: {args.device}\nsource: {{path: {model}}}\n"
            f"options: {{n_ctx: 2048, threads: {args.threads}, n_gpu_layers: {-1 if gpu else 0}}}\nkeep_alive: -1\n"
            "max_in_flight: 1\n")
        (root / "config.yaml").write_text(f"path_roots: [{root}]\n")
        sock = root / "w.sock"
        kwargs = dict(n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, n_gpu_layers=-1 if gpu else 0,
                      verbose=False)
        with process([sys.executable, "-m", "warmd", "serve", "--specs", str(specs), "--socket", str(sock),
                      "--config", str(root / "config.yaml")], root, "warmd.log"):
            with Client(sock, timeout=120) as c:
                wait_for(lambda: c.status())
                for trial in range(6):           # loads: each side, a file in the page cache; the first warms up
                    t0 = time.perf_counter()
                    c.load("llm")
                    loaded = time.perf_counter() - t0
                    c.unload("llm")
                    t0 = time.perf_counter()
                    llama_cpp.Llama(model_path=str(model), **kwargs).close()
                    if trial:
                        ours["load"].append(loaded)
                        theirs["load"].append(time.perf_counter() - t0)
                c.load("llm")
                llm = llama_cpp.Llama(model_path=str(model), **kwargs)
                params = {"max_new_tokens": args.tokens, "temperature": 0.0, "seed": 1}
                for trial in range(args.trials + 1):
                    # each side its own prompt of the same length: no side reuses another's cached prefix
                    prompt = "{} trial " + str(trial) + " once upon a time there was a good word"
                    sides = [("warmd", lambda: _warmd(c, prompt.format("good"), params)),
                             ("in-process", lambda: _in_process(llm, prompt.format("bad"), args.tokens)),
                             ("generate", lambda: _generate(llm, prompt.format("one"), args.tokens))]
                    for side, run in sides if trial % 2 else reversed(sides):
                        ttft, tps, n = run()
                        if trial == 0:
                            continue            # warm-up
                        if n != args.tokens:
                            raise AssertionError(f"{side} generated {n} tokens, expected {args.tokens}")
                        target = {"warmd": ours, "in-process": theirs, "generate": floor}[side]
                        target["ttft"].append(ttft)
                        target["tps"].append(tps)
                llm.close()
                for trial in range(args.trials):    # cancel: the slot (max_in_flight 1) serves again
                    one = {"max_new_tokens": 1, "temperature": 0.0}
                    t0 = time.perf_counter()
                    c.infer("llm", text=[f"call {trial}"], parameters=one)
                    cancel["call"].append(time.perf_counter() - t0)
                    stream = c.infer_stream("llm", text=[f"long {trial}"], parameters={"max_new_tokens": 1500})
                    for i, _ in enumerate(stream):
                        if i == 2:
                            break
                    t0 = time.perf_counter()
                    stream.close()
                    c.infer("llm", text=[f"next {trial}"], parameters=one)    # queued until the slot frees
                    cancel["cancel"].append(time.perf_counter() - t0 - cancel["call"][-1])

    def p50(values: list[float]) -> float:
        return statistics.median(values)

    # paired: each trial's sides ran back to back, so a slow stretch of a shared machine hits both
    ratio = p50([a / b for a, b in zip(ours["tps"], theirs["tps"])])
    overhead = (p50(ours["ttft"]) - p50(theirs["ttft"])) * 1e3
    vs_floor = p50([a / b for a, b in zip(ours["tps"], floor["tps"])])
    lines = ["# GGUF generation: warmd against llama-cpp-python in-process", "",
             f"`.venv/bin/python bench/llm.py --trials {args.trials} --tokens {args.tokens} --device {args.device} "
             f"--threads {args.threads}` on "
             f"{platform.machine()}, {os.cpu_count()} CPUs, llama-cpp-python {llama_cpp.__version__}, "
             f"{time.strftime('%Y-%m-%d')}; model {SHAPE.layers} layers x {SHAPE.hidden} (F32, "
             f"{model_mib(SHAPE):.0f} MiB), {args.threads} threads, greedy, {args.tokens} tokens per call", "",
             "| what | in-process p50 | warmd p50 | warmd p99 | ratio (p50 of per-trial ratios) |",
             "|---|---|---|---|---|",
             f"| decode tokens/s | {p50(theirs['tps']):.1f} | {p50(ours['tps']):.1f} | "
             f"{percentile(ours['tps'], 1):.1f} (p1) | {ratio:.3f}x |",
             f"| time to first token, ms | {p50(theirs['ttft']) * 1e3:.2f} | {p50(ours['ttft']) * 1e3:.2f} | "
             f"{percentile(ours['ttft'], 99) * 1e3:.2f} | {overhead:+.2f} ms |",
             f"| floor: `Llama.generate()` token loop, tokens/s | {p50(floor['tps']):.1f} | {p50(ours['tps']):.1f} | | "
             f"{vs_floor:.3f}x |",
             f"| floor: `Llama.generate()` first token, ms | {p50(floor['ttft']) * 1e3:.2f} | "
             f"{p50(ours['ttft']) * 1e3:.2f} | | {(p50(ours['ttft']) - p50(floor['ttft'])) * 1e3:+.2f} ms |",
             f"| cancel mid-stream until the slot serves again, ms (a 1-token call's time taken off) | | "
             f"{p50(cancel['cancel']) * 1e3:.1f} | {percentile(cancel['cancel'], 99) * 1e3:.1f} | "
             f"{p50(cancel['cancel']) / p50([1 / t for t in ours['tps']]):.1f}x a decode step |",
             f"| load, ms (`warm load` / `Llama()`) | {p50(theirs['load']) * 1e3:.1f} | {p50(ours['load']) * 1e3:.1f} "
             f"| {max(ours['load']) * 1e3:.1f} (max) | {p50(ours['load']) / p50(theirs['load']):.2f}x |", "",
             f"Goals: tokens/s >= 0.95x ({'met' if ratio >= 0.95 else 'missed'}: {ratio:.3f}x); time-to-first-token "
             f"overhead <= 5 ms p50 ({'met' if overhead <= 5 else 'missed'}: {overhead:+.2f} ms). The load through "
             "warmd includes reading the GGUF header and llama.cpp's no-alloc dry run for the memory estimate, the "
             "scheduler's admission and the RPC."]
    write_report("llm" if not gpu else "llm-cuda", lines)
    return 0


def _warmd(c, prompt: str, params: dict) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in c.infer_stream("llm", text=[prompt], parameters=params):
        if chunk.text:
            last = time.perf_counter()
            first = first or last
        elif chunk.result is not None:
            tokens = chunk.result.json["usage"]["completion_tokens"]
    return first - t0, (tokens - 1) / (last - first), tokens


def _in_process(llm, prompt: str, max_tokens: int) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, seed=1, stream=True):
        if chunk["choices"][0]["finish_reason"] is None:     # one chunk per token (ASCII vocabulary)
            last = time.perf_counter()
            first = first or last
            tokens += 1
    return first - t0, (tokens - 1) / (last - first), tokens


def _generate(llm, prompt: str, max_tokens: int) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """The lowest in-process loop: llama-cpp-python's token generator, no text, no stop checks."""
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for _ in llm.generate(llm.tokenize(prompt.encode()), temp=0.0):
        last = time.perf_counter()
        first = first or last
        tokens += 1
        if tokens == max_tokens:
            break
    return first - t0, (tokens - 1) / (last - first), tokens


def model_mib(shape: TinyLlama) -> float:
    d, ff, kv = shape.hidden, shape.ff, shape.kv_heads * shape.hidden // shape.heads
    return shape.layers * (2 * d * d + 2 * kv * d + 3 * ff * d) * 4 / 2**20


if __name__ == "__main__":
    sys.exit(main())
