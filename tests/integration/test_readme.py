"""The README's examples run as written: the Python client section's code blocks, each in its own process,
and the first-run `warm infer` console example, against a daemon serving the bundled specs folder."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README's text from the `## title` heading to the next `## ` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.fixture
def bundled(start_daemon, short_tmp: Path):  # type: ignore[no-untyped-def]
    specs = short_tmp / "specs"
    shutil.copytree(REPO / "specs", specs)
    return start_daemon(specs)


def _run(daemon, code: str) -> str:  # type: ignore[no-untyped-def]
    """Run `code` as a script of its own with the daemon as the default socket; its stdout."""
    done = subprocess.run([sys.executable, "-c", code], env={**daemon.env, "WARMD_SOCKET": str(daemon.socket)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{code}\n--- stderr:\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_python_client_examples_run_as_written(bundled) -> None:  # type: ignore[no-untyped-def]
    examples = blocks(section("The Python client"), "python")
    assert len(examples) == 2
    client, shared = (_run(bundled, code) for code in examples)

    lines = client.splitlines()
    assert lines[0] == "['affine', 'minilm']"
    assert lines[1:3] == ["[[3. 3. 3. 3.]", " [3. 3. 3. 3.]]"]
    assert "(1, 384)" in lines
    assert "model_not_found - no model named 'nope'; `warm ls` lists them" in lines    # the code as its string
    assert lines[-2:] == ["model.unloading affine", "model.unloaded affine"]

    assert shared.splitlines() == ["{'y': ('FP32', [2, 4])}", "[ 1.  3.  5.  7.  9. 11. 13. 15.]"]


@pytest.mark.slow
def test_first_run_console_example_matches(bundled) -> None:  # type: ignore[no-untyped-def]
    example = next(b for b in blocks(section("Two commands"), "console") if "warm infer minilm" in b)
    command, *shown = example.strip().splitlines()
    assert command == '$ .venv/bin/warm infer minilm --text "hello"'
    run = bundled.warm("infer", "minilm", "--text", "hello")
    assert run.returncode == 0, run.stderr
    progress = [line for line in shown if line.startswith("minilm: ")]       # the load, on stderr
    assert progress and [line.split(" (~")[0] for line in run.stderr.splitlines()] == \
        [line.split(" (~")[0] for line in progress]                          # the size may differ a little
    shown = shown[len(progress):]
    printed = run.stdout.splitlines()
    assert printed[0] == shown[0] == "embedding float32 [1, 384]" and len(printed) == len(shown) == 2
    # The same summary (numpy's: 3 values, ..., 3 values), the same numbers up to float rounding.
    numbers = [re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", line) for line in (printed[1], shown[1])]
    assert " ... " in printed[1] and " ... " in shown[1] and len(numbers[0]) == len(numbers[1]) == 6
    np.testing.assert_allclose(np.array(numbers[0], float), np.array(numbers[1], float), atol=2e-6)


def test_the_affine_console_example_prints_what_the_readme_says(bundled) -> None:  # type: ignore[no-untyped-def]
    assert "`.venv/bin/warm infer affine --input x='[[1,2,3,4]]'` prints\n`[[3. 5. 7. 9.]]`" in section("Two commands")
    run = bundled.warm("infer", "affine", "--input", "x=[[1,2,3,4]]")
    assert run.returncode == 0 and run.stdout.splitlines()[1] == "[[3. 5. 7. 9.]]", run.stderr


def test_the_v2_example_runs_in_tritonclients_environment(bundled, short_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    from tritonclient_run import PYTHON

    (code,) = blocks(section("The API"), "python")
    runtime = short_tmp / "xdg"                      # the default socket's place, linked to this daemon's socket
    (runtime / "warmd").mkdir(parents=True)
    (runtime / "warmd" / "warmd.sock").symlink_to(bundled.socket)
    done = subprocess.run([str(PYTHON), "-c", code], env={**bundled.env, "XDG_RUNTIME_DIR": str(runtime)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[[3.", "3.", "3.", "3.]]"]
