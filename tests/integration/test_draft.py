"""`warm add git+URL --draft`: the profile's coder drafts an adapter for a repository that has none, the
real gate judges each attempt (its verdict goes back to the coder), the draft is shown as a diff, and
`--accept` installs only a draft that passed — never untested code.

Coders: a tiny random GGUF served by the daemon itself (its drafts fail: the refusal path), a scripted
OpenAI-compatible endpoint on 127.0.0.1 (the success path and the feedback), and a second warmd's own
OpenAI-compatible HTTP front serving a scripted chat model (needs warmd.http)."""
from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from coders import ScriptedEndpoint
from plugin_repos import ADAPTER, DRAFTABLE, commit, drafted_answer
from waiting import free_port, wait_until
from warmd.v1 import warmd_pb2 as pb

X = np.array([[1, 2, 3]], dtype=np.float32)


def _profile(root: Path, coder: str) -> Path:
    profiles = root / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "default.yaml").write_text("roles:\n  coder:\n" + textwrap.indent(coder, "    "))
    return profiles


def _plugins(daemon) -> set[str]:  # type: ignore[no-untyped-def]
    folder = daemon.root / "config" / "warmd" / "plugins"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _kept(daemon, name: str = "scale") -> dict:  # type: ignore[no-untyped-def]
    return json.loads((daemon.root / "config" / "warmd" / "plugins" / ".drafts" / f"{name}.json").read_text())


def test_a_tiny_random_gguf_coder_drafts_nothing_that_passes_and_nothing_is_installed(start_daemon,
                                                                                      short_tmp: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed (pip install 'warmd[llama-cpp]')")
    from gguf_models import TinyLlama, gguf_spec, write_tiny_llama

    tiny = write_tiny_llama(short_tmp / "models" / "tiny.gguf", TinyLlama(context=32768))
    specs = short_tmp / "specs"
    specs.mkdir()
    (specs / "coder.yaml").write_text(gguf_spec(tiny, options="n_ctx: 32768"))
    repo = short_tmp / "scale"
    commit(repo, DRAFTABLE)
    daemon = start_daemon(specs, config={"profiles_dir": str(_profile(short_tmp, "prefer: [coder]\n")),
                                         "draft_attempts": 2, "path_roots": [str(short_tmp)]})
    with daemon.client() as c:
        events = c.watch(kinds=["plugin."])
        added = daemon.warm("add", str(repo), "--draft", timeout=300)
        assert added.returncode == 1, added.stderr
        assert "[provider_failed]" in added.stderr and "no draft by model coder passed the gate in 2 attempt(s)" \
            in added.stderr and "step 'manifest'" in added.stderr, added.stderr
        attempts = [next(e for e in events if e.kind == "plugin.draft") for _ in range(2)]
        assert [a.message.split(":")[0] for a in attempts] == ["attempt 1 of 2", "attempt 2 of 2"]
        assert all("the gate failed at step 'manifest'" in a.message for a in attempts)
        assert next(e for e in events if e.kind.startswith("plugin.") and e.kind != "plugin.draft").kind == "plugin.failed"
        assert c.get("coder").state == pb.READY          # the coder was asked through the daemon itself
        assert not c.plugins() and [p.name for p in specs.iterdir()] == ["coder.yaml"]
    assert _plugins(daemon) <= {".staging", ".drafts"}
    assert _kept(daemon)["passed"] is False
    refused = daemon.warm("add", str(repo), "--accept")
    assert refused.returncode == 1 and "[invalid_argument]" in refused.stderr
    assert "failed the gate at step 'manifest'" in refused.stderr and "nothing untested is installed" in refused.stderr


def test_a_draft_the_gate_refused_goes_back_to_the_coder_and_only_a_passed_one_is_accepted(
        start_daemon, short_tmp: Path) -> None:
    repo = short_tmp / "scale"
    first = commit(repo, DRAFTABLE)
    broken = drafted_answer(ADAPTER.replace("import numpy as np", "import numpy as np\nimport no_such_module"))
    with ScriptedEndpoint([broken, drafted_answer()], token="s3cret") as endpoint:
        profiles = _profile(short_tmp, f"endpoint: {{url: '{endpoint.url}', model: qwen-coder, token_env: CODER_TOKEN}}\n")
        daemon = start_daemon(config={"profiles_dir": str(profiles), "offline": True}, env={"CODER_TOKEN": "s3cret"})
        drafted = daemon.warm("add", str(repo), "--draft", timeout=300)
        assert drafted.returncode == 0, drafted.stderr
        # the gate's verdict on the first draft went back to the coder with its answer
        assert len(endpoint.requests) == 2 and endpoint.requests[0]["model"] == "qwen-coder"
        assert "# scale" in endpoint.requests[0]["messages"][1]["content"]           # the README
        assert "def scale(x" in endpoint.requests[0]["messages"][1]["content"]       # an entry point
        assert "class Provider" in endpoint.requests[0]["messages"][1]["content"] or \
            "The provider contract" in endpoint.requests[0]["messages"][1]["content"]
        said = endpoint.requests[1]["messages"]
        assert said[2] == {"role": "assistant", "content": broken}
        assert "The gate refused this draft at step 'import'" in said[3]["content"]
        assert "No module named 'no_such_module'" in said[3]["content"]
    # the diff on stdout: new files from /dev/null; the next step said on the last line
    assert "--- /dev/null\n+++ b/adapter.py\n" in drafted.stdout and "+class Scale(Provider):" in drafted.stdout
    assert "attempt 1 of 3: the gate failed at step 'import'" in drafted.stderr
    assert drafted.stdout.strip().splitlines()[-1] == \
        f"a draft for scale passed the gate at attempt 2; `warm add {repo} --accept` installs it"
    with daemon.client() as c:
        assert not c.plugins() and not list(daemon.specs.iterdir())          # a draft installs nothing
        commit(repo, {"NEWS": "later\n"})                                   # the branch moves on
        accepted = daemon.warm("add", str(repo), "--accept", timeout=300)
        assert accepted.returncode == 0, accepted.stderr
        assert "import:" in accepted.stderr and "outputs:" in accepted.stderr    # gated again
        [plugin] = c.plugins()
        assert plugin.commit == first and plugin.models == ["scale"] and plugin.gate.result == "passed"
        assert np.allclose(c.infer("scale", {"x": X}).outputs["y"], X * 2.5)  # in a runner process
        record = json.loads((daemon.root / "config" / "warmd" / "plugins" / "scale" / "plugin.json").read_text())
        assert sorted(record["drafted"]) == ["adapter.py", "scale.yaml", "warmd-plugin.yaml"]
        # an update adds the draft's files to the new commit, gates it and switches
        updated = daemon.warm("plugins", "update", "scale", timeout=300)
        assert updated.returncode == 0, updated.stderr
        assert c.plugins()[0].commit != first
        assert np.allclose(c.infer("scale", {"x": X}).outputs["y"], X * 2.5)


def test_draft_refusals_change_nothing(start_daemon, short_tmp: Path) -> None:
    repo = short_tmp / "scale"
    commit(repo, DRAFTABLE)
    daemon = start_daemon(config={"profiles_dir": str(_profile(short_tmp, "prefer: [nothing-here]\n"))})
    for args, code, said in (
            (("--draft",), "unavailable", "no model can play 'coder' in profile 'default': nothing-here: not in the catalog"),
            (("--accept",), "invalid_argument", "no draft of 'scale' to accept"),
            (("hf://org/name", "--draft"), "invalid_argument", "--draft and --accept are for plugins from git")):
        out = daemon.warm("add", *(args if args[0].startswith("hf") else (str(repo), *args)))
        assert out.returncode == 1 and f"[{code}]" in out.stderr and said in out.stderr, (args, out.stderr)
    with_adapter = short_tmp / "has"
    commit(with_adapter, {**DRAFTABLE, "warmd-plugin.yaml": "name: x\n"})
    (short_tmp / "profiles" / "default.yaml").write_text(
        "roles:\n  coder:\n    endpoint: {url: 'http://127.0.0.1:9/v1', model: m}\n")
    out = daemon.warm("add", str(with_adapter), "--draft")
    assert out.returncode == 1 and "has an adapter already" in out.stderr, out.stderr
    (short_tmp / "profiles" / "default.yaml").write_text("roles:\n  coder:\n    endpoint: {url: 'ftp://x', model: m}\n")
    out = daemon.warm("add", str(repo), "--draft")
    assert out.returncode == 1 and "the endpoint's `url` must be http://" in out.stderr, out.stderr
    assert not _plugins(daemon) - {".staging"} and not list(daemon.specs.iterdir())


SCRIPTED = textwrap.dedent('''
    from pathlib import Path

    from warmd.providers import InferResult, Provider


    class Scripted(Provider):
        """A chat model whose every answer is the text of its source file."""

        name = "scripted"
        tasks = ("chat",)

        @classmethod
        def estimate(cls, spec, files):
            return 8

        def load(self):
            self.answer = Path(self.files).read_text()
            return 8

        def infer(self, request):
            return InferResult(json={"text": self.answer, "stopped": "stop",
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

        def unload(self):
            self.answer = None
''')


@pytest.mark.skipif(importlib.util.find_spec("warmd.http") is None,
                    reason="needs warmd's OpenAI-compatible HTTP front (warmd.http, issue 17)")
def test_a_second_warmd_as_the_coder_endpoint_drafts_what_installs(start_daemon, short_tmp: Path) -> None:
    """The success path end to end: daemon A serves a scripted chat model through its OpenAI-compatible
    front; daemon B's coder role falls back to that endpoint; the draft passes B's gate and installs."""
    coder_root, root = short_tmp / "a", short_tmp / "b"
    plugins = coder_root / "config" / "warmd" / "plugins" / "scripted"
    plugins.mkdir(parents=True)
    (plugins / "adapter.py").write_text(SCRIPTED)
    specs = coder_root / "specs"
    specs.mkdir(parents=True)
    (specs / "answer.txt").write_text(drafted_answer())
    (specs / "scripted.yaml").write_text("provider: scripted\ntask: chat\nsource: {path: answer.txt}\n")
    port = free_port()
    coder = start_daemon(specs, root=coder_root, config={"http": f"127.0.0.1:{port}"})
    wait_until(lambda: "HTTP (OpenAI" in coder.log(), timeout=30)
    token = (coder_root / "config" / "warmd" / "token").read_text().strip()

    repo = short_tmp / "scale"
    commit(repo, DRAFTABLE)
    root.mkdir()
    profiles = _profile(root, f"endpoint: {{url: 'http://127.0.0.1:{port}/v1', model: scripted, token_env: A_TOKEN}}\n")
    daemon = start_daemon(root=root, config={"profiles_dir": str(profiles)}, env={"A_TOKEN": token})
    added = daemon.warm("add", str(repo), "--draft", "--accept", timeout=300)
    assert added.returncode == 0, added.stderr
    assert "+class Scale(Provider):" in added.stdout and "attempt 1 of 3: passed the gate" in added.stderr
    with daemon.client() as c:
        assert [p.name for p in c.plugins()] == ["scale"]
        assert np.allclose(c.infer("scale", {"x": X}).outputs["y"], X * 2.5)
    with coder.client() as a:
        assert a.get("scripted").state == pb.READY         # the answer came from daemon A's model
