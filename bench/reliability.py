"""One table of what the daemon survived: faults injected, hostile inputs, stress, soak.

    .venv/bin/python bench/reliability.py

Runs the fault, fuzz and stress tests (they assert what must hold; a failing test fails this script) with
WARMD_FIGURES set, so each records its numbers, and prints them as one table.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_report

TESTS = ["tests/integration/test_downloads.py::test_sigkill_at_20_random_points_of_downloads",
         "tests/integration/test_downloads.py::test_full_disk_during_state_writes",
         "tests/integration/test_downloads.py::test_disk_filling_up_mid_download",
         "tests/integration/test_downloads.py::test_hub_file_names_cannot_write_outside_the_cache",
         "tests/integration/test_faults.py", "tests/integration/test_fuzz.py"]


def _outcomes(values: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(values.items(), key=lambda kv: -kv[1]))


ROWS = {
    "test_sigkill_at_20_random_points_of_downloads": lambda f: (
        "SIGKILL at random points of downloads",
        f"{f['kills']} kills ({f['mid_transfer']} mid-transfer)",
        "0 unverified files or dangling links in the cache after each; the next daemon finished the download"),
    "test_sigkill_during_load_and_during_inference_then_restart": lambda f: (
        "SIGKILL during a load and during inference",
        f"{f['kills']} in-flight calls",
        f"clients got {', '.join(f['client_errors'])} (no hang); restart served; no temp files"),
    "test_sigterm_with_a_load_a_download_and_streams_under_way": lambda f: (
        "SIGTERM with a load, a download and a watch stream under way",
        "1 shutdown", f"exit {f['exit_code']} in {f['stop_seconds']} s; load: {f['load']}, pull: {f['pull']}; "
                      "socket removed, no children, no temp files"),
    "test_full_disk_during_state_writes": lambda f: (
        "full disk under the daemon's state (tokens, manifests)", f"{f['state_writes_refused']} writes",
        "insufficient_disk, previous state intact, daemon serving; both succeeded once space was back"),
    "test_disk_filling_up_mid_download": lambda f: (
        "disk filled by another program mid-download", "1 transfer",
        f"insufficient_disk at once at {f['filled_at_mib']} MiB, part kept; resumed and verified once space was back"),
    "test_hub_file_names_cannot_write_outside_the_cache": lambda f: (
        "hub listing file names that climb out of the cache", f"{f['escapes_tried']} names",
        f"refused before any fetch; {f['written_outside']} files written outside"),
    "test_specs_folder_deleted_and_recreated": lambda f: (
        "specs folder deleted, then recreated", "1", "reported as a folder error; models back and serving"),
    "test_client_reconnects_after_a_restart": lambda f: (
        "daemon restarted under a live client", "1", "the same Client object reconnected"),
    "test_hostile_spec_files_in_a_live_daemon": lambda f: (
        "hostile spec files (bombs, huge, deep, non-UTF-8, escapes, wrong types)",
        f"{f['hostile_files']} files", f"{f['rejected']} rejected, each with its own error; good model served"),
    "test_fuzz_v1_infer": lambda f: (
        "fuzzed warmd.v1 Infer requests", f"{f['requests']}", _outcomes(f["outcomes"])),
    "test_fuzz_v2_model_infer": lambda f: (
        "fuzzed V2 ModelInfer requests", f"{f['requests']}", _outcomes(f["outcomes"])),
    "test_fuzz_v2_shared_memory_registration": lambda f: (
        "fuzzed shared-memory registrations", f"{f['requests']}", _outcomes(f["outcomes"])),
    "test_32_threads_churn_under_a_tight_budget": lambda f: (
        "32 threads x 25 load/unload/infer, 4 models, budget for 2",
        f"{f['requests']} calls in {f['seconds']} s",
        f"{_outcomes(f['outcomes'])}; budget exceeded in {f['budget_exceeded']} samples"),
    "test_soak_500_load_unload_cycles_rss_returns_to_baseline": lambda f: (
        "soak: load, infer, unload", f"{f['cycles']} cycles",
        f"RSS {f['baseline_mib']} -> {f['final_mib']} MiB ({f['drift_pct']:+.2f}%)"),
}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.jsonl"
        t0 = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                             cwd=REPO, env={**os.environ, "WARMD_FIGURES": str(figures)})
        elapsed = time.monotonic() - t0
        records = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    lines = ["# Reliability: faults, hostile input, stress, soak", "",
             f"`.venv/bin/python bench/reliability.py` on {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{time.strftime('%Y-%m-%d')}: {len(records)} scenarios in {elapsed:.0f} s, "
             f"pytest exit {run.returncode}. Every row is a test that asserts what must hold.", "",
             "| scenario | injected | outcome |", "|---|---|---|"]
    for record in records:
        row = ROWS.get(record["test"])
        if row is not None:
            lines.append("| {} | {} | {} |".format(*row(record)))
    write_report("reliability", lines)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
