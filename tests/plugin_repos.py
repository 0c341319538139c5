"""Git repositories of provider plugins for the tests: a manifest, an adapter, an example spec, committed
with the real git CLI, so `warm add` clones them as it would any repository."""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

# y = factor * x, the factor read from factor.json; `x[0, 0]` picks a behaviour: 3 exits the process with
# status 3, 11 dereferences NULL (SIGSEGV), 7 waits (checking its CallContext), 9 sleeps ignoring it, 5
# streams text and progress.
ADAPTER = textwrap.dedent('''
    import ctypes
    import json
    import os
    import time

    import numpy as np

    from warmd.providers import InferResult, Provider

    open(os.environ.get("PLUGIN_MARKER", os.devnull), "a").write(f"{os.getpid()}\\n")


    class Scale(Provider):
        name = "scale"
        options_schema = {"type": "object", "additionalProperties": False,
                          "properties": {"offset": {"type": "number"}, "load_delay": {"type": "number"}}}

        @classmethod
        def estimate(cls, spec, files):     # in-process (a folder plugin); from git the daemon never runs it
            return 8

        def load(self):
            time.sleep(self.spec.options.get("load_delay", 0))
            self.factor = json.loads(self.files.read_text())["factor"]
            return 8

        def infer(self, request):
            x = request.tensors["x"]
            fault = int(x.flat[0]) if x.size else 0
            if fault == 3:
                os._exit(3)
            if fault == 11:
                ctypes.string_at(0)
            if fault == 7:
                for i in range(6000):
                    request.context.check()
                    time.sleep(0.01)
            if fault == 9:
                time.sleep(60)
            if fault == 5:
                for i in range(3):
                    request.context.emit(f"step {i} ")
                    request.context.progress(i + 1, 3, "frames")
            y = x * self.factor + self.spec.options.get("offset", 0.0)
            return InferResult(tensors={"y": y.astype(np.float32)})

        def unload(self):
            self.factor = None
''')

SPEC = textwrap.dedent("""\
    provider: scale
    device: cpu
    source:
      path: factor.json
    inputs:
      - {name: x, dtype: FP32, shape: [-1, 3]}
    outputs:
      - {name: y, dtype: FP32, shape: [-1, 3]}
    """)

MANIFEST = textwrap.dedent("""\
    name: scale
    provider: adapter.py:Scale
    examples:
      - spec: scale.yaml
        inputs:
          x: {data: [[1, 2, 3]]}
    """)


def scale_files(factor: float = 2.5, adapter: str = ADAPTER, manifest: str = MANIFEST,
                spec: str = SPEC) -> dict[str, str]:
    return {"adapter.py": adapter, "scale.yaml": spec, "factor.json": f'{{"factor": {factor}}}\n',
            "warmd-plugin.yaml": manifest}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    """Write `files` into `repo` (a new repository the first time), commit them, return the commit."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


def runner_pids(daemon_pid: int) -> list[int]:
    """The daemon's runner processes (children running warmd.runner.child), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == daemon_pid and b"warmd.runner.child" in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append(int(entry.name))
    return found


# A repository with a model and no adapter (`warm add --draft`): scale.py shows how the model runs.
DRAFTABLE = {
    "README.md": "# scale\n\nMultiplies its input by the factor in factor.json: `scale.scale(x)`.\n",
    "scale.py": "import json\n\n\ndef scale(x, path='factor.json'):\n    return x * json.load(open(path))['factor']\n",
    "factor.json": '{"factor": 2.5}\n',
}


def drafted_answer(adapter: str = ADAPTER) -> str:
    """A coder's answer for the DRAFTABLE repository, in the format the drafting asks for: the scale adapter
    (`adapter`), its manifest and its example spec."""
    files = (("warmd-plugin.yaml", MANIFEST), ("scale.yaml", SPEC), ("adapter.py", adapter))
    return "Here is the adapter.\n\n" + "".join(f"FILE: {path}\n```\n{text}```\n\n" for path, text in files)
