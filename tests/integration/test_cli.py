"""The `warm` CLI as a person meets it, run as a real process against a real daemon: messages are one line
whatever the terminal, a cold model shows its load, tensors print summarized, a closed pipe ends quietly,
conflicting options are refused, --json has numbers, download history is a table, watch says when the daemon
went away, --stream prints what a model gives even when it does not generate."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from hubserver import Hub
from models import affine_spec, affine_specs, write_affine_weights, write_factory
from waiting import free_port, wait_until

LONG = "a-model-name-long-enough-to-cross-eighty-columns-" + "x" * 60     # the message names it in full
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _affine_daemon(start_daemon, root: Path, extra: str = ""):  # type: ignore[no-untyped-def]
    specs = affine_specs(root, 2.0)                                        # y = 2x
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors") + extra)
    return start_daemon(specs)


def _url_daemon(start_daemon, hub: Hub, root: Path, scale: float):  # type: ignore[no-untyped-def]
    """A daemon with spec `affine` (y = scale * x) whose weights are a url source on the test hub."""
    import hashlib

    weights = root / "w.safetensors"
    write_affine_weights(weights, scale)
    hub.add_repo("org/affine", {"model.safetensors": weights.read_bytes()})
    specs = root / "specs"
    specs.mkdir()
    write_factory(specs)
    url = f"{hub.endpoint}/org/affine/resolve/main/model.safetensors"
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    (specs / "affine.yaml").write_text(f"provider: torch\ndevice: cpu\nsource: {{url: '{url}', sha256: {sha256}}}\n"
                                       "options: {factory: 'testmodels.py:Affine'}\n")
    return start_daemon(specs, env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": None})


def _on_terminal(command: list[str], env: dict[str, str], columns: int = 80) -> tuple[int, str]:
    """Run `command` with stdout and stderr on a pseudo-terminal `columns` wide; its exit status and what
    the terminal showed (colours removed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env={**env, "COLUMNS": str(columns), "TERM": "xterm"})
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:            # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.wait(timeout=60), ANSI.sub("", shown.decode(errors="replace"))


# ---- messages are one line -------------------------------------------------------------------
def test_an_error_is_one_line_in_a_pipe_and_on_an_80_column_terminal(start_daemon) -> None:
    daemon = start_daemon()
    piped = daemon.warm("show", LONG)
    assert piped.returncode == 1
    assert piped.stderr.splitlines() == [f"error [model_not_found] no model named {LONG!r}; `warm ls` lists them"]

    status, shown = _on_terminal([*daemon.warm_command(), "show", LONG], daemon.env)
    assert status == 1
    lines = [line for line in shown.replace("\r\n", "\n").split("\n") if line.strip()]
    assert lines == [f"error [model_not_found] no model named {LONG!r}; `warm ls` lists them"], shown


def test_a_long_path_in_an_option_error_stays_whole(start_daemon, short_tmp: Path) -> None:
    daemon = _affine_daemon(start_daemon, short_tmp)
    missing = short_tmp / ("folder-" + "y" * 70) / "input.npy"
    result = daemon.warm("infer", "affine", "--input", f"x=@{missing}")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert str(missing) in result.stderr and "[invalid_argument]" in result.stderr
    status, shown = _on_terminal([*daemon.warm_command(), "infer", "affine", "--input", f"x=@{missing}"],
                                 daemon.env)
    assert status == 1 and len([x for x in shown.splitlines() if x.strip()]) == 1 and str(missing) in shown


# ---- a cold model shows its load -------------------------------------------------------------
def test_infer_on_a_cold_model_shows_its_load_on_stderr(start_daemon, short_tmp: Path) -> None:
    daemon = _affine_daemon(start_daemon, short_tmp)
    cold = daemon.warm("infer", "affine", "--input", "x=[[1,2,3,4]]")
    assert cold.returncode == 0, cold.stderr
    assert "affine: locating path:" in cold.stderr and "affine: loading onto cpu" in cold.stderr, cold.stderr
    assert cold.stdout == "y float32 [1, 4]\n[[2. 4. 6. 8.]]\n"
    warm = daemon.warm("infer", "affine", "--input", "x=[[1,2,3,4]]")
    assert warm.returncode == 0 and warm.stderr == "" and warm.stdout == cold.stdout   # ready: nothing to say

    assert daemon.warm("unload", "affine").returncode == 0
    as_json = daemon.warm("infer", "affine", "--input", "x=[[1,2,3,4]]", "--json")
    assert "affine: loading onto cpu" in as_json.stderr                   # progress stays off stdout
    assert json.loads(as_json.stdout)["outputs"]["y"]["data"] == [[2.0, 4.0, 6.0, 8.0]]


def test_infer_with_a_token_that_may_not_load_still_runs_a_cold_model(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 2.0)
    (specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    port = free_port()
    daemon = start_daemon(specs, args=("--tcp", f"127.0.0.1:{port}"))
    token = daemon.warm("token", "create", "--name", "app", "--scope", "infer").stdout.strip()
    result = subprocess.run([sys.executable, "-m", "warm.cli", "--tcp", f"127.0.0.1:{port}", "infer", "affine",
                             "--input", "x=[[1,2,3,4]]"], env={**daemon.env, "WARMD_TOKEN": token},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.endswith("[[2. 4. 6. 8.]]\n"), result.stderr


def test_infer_on_a_model_not_downloaded_shows_the_download(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon = _url_daemon(start_daemon, hub, short_tmp, scale=3.0)
    result = daemon.warm("infer", "affine", "--input", "x=[[1,1,1,1]]")
    assert result.returncode == 0, result.stderr
    assert "affine: downloading url:" in result.stderr and "warm cancel" in result.stderr
    assert "affine: downloaded " in result.stderr
    assert "affine: loading onto cpu" in result.stderr
    assert result.stdout.endswith("[[3. 3. 3. 3.]]\n")


# ---- tensors ---------------------------------------------------------------------------------
def test_tensors_print_summarized_full_with_full_and_every_value_with_json(start_daemon, short_tmp: Path) -> None:
    daemon = _affine_daemon(start_daemon, short_tmp)
    batch = np.arange(200, dtype=np.float32).reshape(50, 4)               # 200 values: past the summary's 100
    np.save(short_tmp / "batch.npy", batch)
    arg = f"x=@{short_tmp / 'batch.npy'}"

    summary = daemon.warm("infer", "affine", "--input", arg).stdout.splitlines()
    assert summary[0] == "y float32 [50, 4]"
    assert summary[1:] == ["[[  0.   2.   4.   6.]", " [  8.  10.  12.  14.]", " [ 16.  18.  20.  22.]", " ...",
                           " [376. 378. 380. 382.]", " [384. 386. 388. 390.]", " [392. 394. 396. 398.]]"]
    full = daemon.warm("infer", "affine", "--input", arg, "--full").stdout.splitlines()
    assert len(full) == 1 + 50 and "..." not in "".join(full) and full[25] == " [192. 194. 196. 198.]"
    data = json.loads(daemon.warm("infer", "affine", "--input", arg, "--json").stdout)
    np.testing.assert_array_equal(np.asarray(data["outputs"]["y"]["data"]), batch * 2)


# ---- a closed pipe ---------------------------------------------------------------------------
def _run_into_closed_pipe(daemon, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """Run the CLI with stdout a pipe whose reader is gone before the CLI writes (as `| head -0`)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([*daemon.warm_command(), *args], env=daemon.env, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)


def test_a_closed_pipe_ends_quietly_with_the_sigpipe_status(start_daemon, short_tmp: Path) -> None:
    daemon = _affine_daemon(start_daemon, short_tmp)
    for args in (("ls",), ("ls", "--json"), ("status",), ("show", "affine"),
                 ("infer", "affine", "--input", "x=[[1,2,3,4]]"), ("infer", "affine", "--input", "x=[[1,2,3,4]]",
                                                                 "--stream")):
        result = _run_into_closed_pipe(daemon, *args)
        assert result.returncode == 141 and "Traceback" not in result.stderr, (args, result.stderr)
        assert "Error" not in result.stderr, (args, result.stderr)


def test_watch_into_head_ends_at_the_next_event(start_daemon, short_tmp: Path) -> None:
    daemon = _affine_daemon(start_daemon, short_tmp)
    head = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    watch = subprocess.Popen([*daemon.warm_command(), "watch"], env=daemon.env, stdout=head.stdin,
                             stderr=subprocess.PIPE, text=True)
    head.stdin.close()                                   # only head holds the pipe's reading end
    assert "watching" in watch.stderr.readline()
    assert daemon.warm("load", "affine").returncode == 0              # events: head prints one and exits
    assert head.wait(timeout=30) == 0 and "model.loading" in head.stdout.read()
    assert daemon.warm("unload", "affine").returncode == 0            # the next write meets a closed pipe
    assert watch.wait(timeout=30) == 141
    assert watch.stderr.read() == ""


# ---- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (("infer", "affine", "--text", "a", "--input", "x=[[1]]"), "--text and --input do not go together"),
    (("infer", "affine", "--text", "a", "--dtype", "int32"), "--dtype applies to JSON --input values"),
    (("infer", "affine", "--input", "x=@a.npy", "--dtype", "int32"), "a .npy file keeps its own dtype"),
    (("infer", "affine", "--input", "x=[[1]]", "--dtype", "int"),
     "unknown --dtype 'int'; use one of bool, uint8, uint16, uint32, uint64, int8, int16, int32, int64, float16, "
     "float32, float64"),
    (("infer", "affine", "--input", "x=[[1]]", "--input", "x=[[2]]"), "--input x is given twice"),
    (("infer", "affine", "--input", "x=[[1]]", "--param", "k=1", "--param", "k=2"), "--param k is given twice"),
    (("infer", "affine", "--text", "-", "--text", "-"), "stdin, which can be read once"),
    (("infer", "affine", "--input", "x=[[1]]", "--json", "--full"), "--json always has every value"),
    (("infer", "affine", "--role", "embedder", "--input", "x=[[1]]"), "not both"),
    (("load", "affine", "--keep-alive", "soon"), "--keep-alive: 'soon' is not a duration"),
    (("load", "affine", "--dry-run", "--keep-alive", "5m"), "--dry-run loads nothing: it does not take --keep-alive"),
    (("ps", "--model", "affine"), "--model picks the entries of `warm ps --history`; add --history"),
    (("token", "list", "--scope", "admin"), "`warm token list` does not take --scope"),
    (("token", "create", "NAME", "--name", "app"), "`warm token create` does not take NAME"),
    (("profile", "list", "extra"), "usage: warm profile list"),
    (("profile", "use"), "usage: warm profile use NAME"),
    (("--tcp", "127.0.0.1:1", "ls"), "--socket and --tcp do not go together"),
])
def test_conflicting_or_ignored_options_are_refused(start_daemon, short_tmp: Path, args, says) -> None:  # type: ignore[no-untyped-def]
    daemon = _affine_daemon(start_daemon, short_tmp)
    result = daemon.warm(*args)
    assert result.returncode == 1
    if "--json" in args:                                       # the error is the JSON document
        assert json.loads(result.stdout)["error"]["code"] == "invalid_argument" and says in result.stdout
    else:
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith("error [invalid_argument] ") and says in result.stderr, result.stderr
    with daemon.client() as c:
        assert not c.status().resident                 # refused before anything reached the daemon


def test_service_options_that_would_be_ignored_are_refused(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config"),
           "WARMD_SOCKET": str(tmp_path / "none.sock")}
    for args, says in ((("uninstall", "--no-tray"), "does not take --no-tray"),
                       (("status", "--specs", str(tmp_path)), "does not take --specs")):
        result = subprocess.run([sys.executable, "-m", "warm.cli", "service", *args], capture_output=True,
                                text=True, env=env, timeout=60)
        assert result.returncode == 1 and "[invalid_argument]" in result.stderr and says in result.stderr


@pytest.mark.slow
def test_text_reads_a_file_and_stdin(start_daemon, short_tmp: Path) -> None:
    import shutil

    from conftest import REPO

    specs = short_tmp / "specs"
    shutil.copytree(REPO / "specs", specs)
    daemon = start_daemon(specs)
    (short_tmp / "hello.txt").write_text("hello\n")

    def embedding(*args: str, stdin: str = "") -> list:
        run = subprocess.run([*daemon.warm_command(), "infer", "minilm", *args, "--json"], input=stdin,
                             env=daemon.env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)["outputs"]["embedding"]["data"]

    plain = embedding("--text", "hello")
    assert embedding("--text", f"@{short_tmp / 'hello.txt'}") == plain    # the trailing newline is not text
    assert embedding("--text", "-", stdin="hello\n") == plain
    assert embedding("--text", "@@hello") != plain                         # the text "@hello"
    assert len(embedding("--text", "-", "--text", "hello", stdin="hello")) == 2


# ---- JSON ------------------------------------------------------------------------------------
def test_json_prints_64_bit_integers_as_numbers(start_daemon, short_tmp: Path) -> None:
    daemon = _affine_daemon(start_daemon, short_tmp)
    size = (short_tmp / "specs" / "w.safetensors").stat().st_size
    shown = json.loads(daemon.warm("show", "affine", "--json").stdout)
    assert shown["files"]["bytes_on_disk"] == size and shown["inputs"][0]["shape"] == [-1, 4]
    assert json.loads(daemon.warm("ls", "--json").stdout)["models"][0]["files"]["bytes_on_disk"] == size
    loaded = [json.loads(line) for line in daemon.warm("load", "affine", "--json").stdout.splitlines()]
    assert all(isinstance(e["seq"], int) for e in loaded[:-1]) and loaded[-1]["residency"]["measured_bytes"] == 80
    status = json.loads(daemon.warm("status", "--json").stdout)
    assert status["pid"] == daemon.proc.pid and all(isinstance(d["total"], int) for d in status["devices"])
    assert json.loads(daemon.warm("ps", "--json").stdout)[0]["residency"]["estimated_bytes"] == 80


# ---- show: download history ------------------------------------------------------------------
def test_show_prints_download_history_as_a_table(start_daemon, hub: Hub, short_tmp: Path) -> None:
    daemon = _url_daemon(start_daemon, hub, short_tmp, scale=1.0)
    assert daemon.warm("pull", "affine").returncode == 0

    data = json.loads(daemon.warm("show", "affine", "--json").stdout)["downloads"]
    assert len(data) == 1 and data[0]["result"] == "ok" and isinstance(data[0]["bytes"], int)
    lines = daemon.warm("show", "affine").stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["STARTED", "TOOK", "RESULT", "SIZE"])
    row = lines[header + 1].split()
    assert row[:2] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data[0]["started"])).split()
    assert data[0]["bytes"] == (short_tmp / "w.safetensors").stat().st_size
    assert row[3] == "ok" and " ".join(row[4:6]) == f"{data[0]['bytes']} B"
    assert row[6] == data[0]["source"] == "url:" + hub.endpoint + "/org/affine/resolve/main/model.safetensors"
    assert "bytes" not in "\n".join(lines) and '{"' not in "\n".join(lines)     # no raw JSON or field names


# ---- watch -----------------------------------------------------------------------------------
def _watching(daemon):  # type: ignore[no-untyped-def]
    watch = subprocess.Popen([*daemon.warm_command(), "watch"], env=daemon.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert "watching" in watch.stderr.readline()          # subscribed
    return watch


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_watch_says_when_the_daemon_went_away(start_daemon, short_tmp: Path, stop: signal.Signals) -> None:
    daemon = _affine_daemon(start_daemon, short_tmp, extra="")
    (short_tmp / "specs" / "broken.yaml").write_text(affine_spec("missing.safetensors"))
    watch = _watching(daemon)
    assert daemon.warm("load", "broken").returncode == 1
    daemon.proc.send_signal(stop)
    assert watch.wait(timeout=60) == 1
    said = watch.stderr.read().splitlines()
    assert len(said) == 1 and said[0].startswith("error [unavailable] ") and "warmd" in said[0], said
    shown = watch.stdout.read()
    assert "model.failed" in shown and "[weights_missing]" in shown       # codes print, they are not markup


# ---- --stream --------------------------------------------------------------------------------
def test_stream_on_a_model_that_does_not_generate_prints_its_result(start_daemon, short_tmp: Path) -> None:
    daemon = _affine_daemon(start_daemon, short_tmp)
    plain = daemon.warm("infer", "affine", "--input", "x=[[1,2,3,4]]")
    streamed = daemon.warm("infer", "affine", "--input", "x=[[1,2,3,4]]", "--stream")
    assert streamed.returncode == 0 and streamed.stdout == plain.stdout == "y float32 [1, 4]\n[[2. 4. 6. 8.]]\n"
    lines = daemon.warm("infer", "affine", "--input", "x=[[1,2,3,4]]", "--stream", "--json").stdout.splitlines()
    assert json.loads(lines[-1])["outputs"]["y"]["data"] == [[2.0, 4.0, 6.0, 8.0]]


def test_ls_on_an_empty_catalog_says_where_specs_go(start_daemon) -> None:
    daemon = start_daemon()
    result = daemon.warm("ls")
    assert result.returncode == 0
    assert f"the daemon serves the spec files in {daemon.specs}" in result.stderr
    assert "warm add hf://ORG/NAME" in result.stderr and len(result.stderr.splitlines()) == 1
    write_factory(daemon.specs)
    write_affine_weights(daemon.specs / "w.safetensors", 1.0)
    (daemon.specs / "affine.yaml").write_text(affine_spec("w.safetensors"))
    wait_until(lambda: "affine" in daemon.warm("ls").stdout)
    filtered = daemon.warm("ls", "--task", "text-generation")
    assert "no model matches the filters (1 in the catalog" in filtered.stderr
