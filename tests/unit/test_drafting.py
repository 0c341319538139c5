"""Drafting's parts without a daemon: the worked example the coder is shown passes the real gate, what of an
answer is taken, the prompt's bounds, the feedback, the coder role's endpoint and its client's refusals."""
from __future__ import annotations

from pathlib import Path

import pytest

from coders import ScriptedEndpoint
from warmd.adapters import coder, draft, gate
from warmd.errors import Code, WarmdError
from warmd.providers import CallContext
from warmd.roles import Endpoint, Profiles


def test_the_worked_example_in_the_prompt_passes_the_real_gate(tmp_path: Path) -> None:
    (tmp_path / "factor.json").write_text('{"factor": 2}\n')
    example = draft.parse(draft.EXAMPLE, tmp_path)
    assert sorted(example.files) == ["warmd-plugin.yaml", "warmd-scale.yaml", "warmd_adapter.py"]
    assert not example.refused
    draft.write(example, tmp_path)
    verdict = gate.check_folder(tmp_path, "scale", tmp_path / "work", 120, True, lambda *_: None, CallContext())
    assert verdict.passed, verdict.explain()


def test_only_new_files_inside_the_repository_are_taken(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# mine\n")
    block = "FILE: {}\n```\nx = 1\n```\n"
    answer = "".join(block.format(p) for p in ("ok.py", "README.md", "../out.py", "/etc/x", ".git/config", "ok.py",
                                               "sub/two.py"))
    taken = draft.parse(answer + "FILE: big.py\n```\n" + "#" * (draft.MAX_FILE_BYTES + 1) + "\n```\n", tmp_path)
    assert sorted(taken.files) == ["ok.py", "sub/two.py"] and taken.files["ok.py"] == "x = 1\n"
    assert [r.split(":")[0] for r in taken.refused] == ["README.md", "../out.py", "/etc/x", ".git/config", "ok.py",
                                                        "big.py"]
    assert "a draft only adds files" in taken.refused[0] and "given twice" in taken.refused[4]
    assert draft.parse("no files here", tmp_path).refused == [
        "no files: write each one as `FILE: path` followed by one fenced code block"]
    assert taken.diff().startswith("--- /dev/null\n+++ b/ok.py\n@@ -0,0 +1 @@\n+x = 1\n")


def test_the_prompt_stays_bounded_and_ranks_entry_points(tmp_path: Path) -> None:
    (tmp_path / "README.rst").write_text("readme " * 50_000)
    for i in range(300):
        (tmp_path / f"util_{i:03}.py").write_text("x = 1\n")
    (tmp_path / "predict.py").write_text("import torch\n\ndef predict(x):\n    return torch.load('w.pt')(x)\n")
    text = draft.prompt(tmp_path, "big")
    assert len(text) < draft.PROMPT_CHARS + 10_000          # the contract plus the bounded repository
    assert "... and 152 more" in text and "[... cut]" in text
    entry = text.index("## Likely entry points")
    assert text.index("## predict.py", entry) < text.index("## util_000.py", entry)
    assert "plugin name: big" in text and "The provider contract" in text


def test_feedback_says_the_step_the_output_and_what_was_left_out() -> None:
    attempt = draft.Draft({"a.py": "x\n"}, refused=["b.py: over 64 KiB"],
                          verdict=gate.Verdict(False, "import", "ImportError: nope", "line\n" * 2000))
    said = draft.feedback(attempt)
    assert said.startswith("The gate refused this draft at step 'import': ImportError: nope")
    assert "Not taken from your answer: b.py: over 64 KiB" in said
    assert len(said) < draft.FEEDBACK_CHARS + 500


@pytest.mark.parametrize("endpoint, said", [
    ("[x]", "`endpoint` must be a mapping"),
    ("{url: 'ftp://x', model: m}", "must be http://"),
    ("{url: 'http://x/v1'}", "needs `model:`"),
    ("{url: 'http://x/v1', model: m, tokn_env: T}",
     "unknown key 'tokn_env' in role 'coder''s endpoint (did you mean 'token_env'?)"),
])
def test_a_bad_coder_endpoint_is_refused_with_its_profile(tmp_path: Path, endpoint: str, said: str) -> None:
    (tmp_path / "p.yaml").write_text(f"roles:\n  coder:\n    endpoint: {endpoint}\n")
    profiles = Profiles(tmp_path, tmp_path / "active", tmp_path / "picks", None, None, None)  # type: ignore[arg-type]
    with pytest.raises(WarmdError) as info:
        profiles.roles("p")
    assert info.value.code is Code.INVALID_ARGUMENT and said in info.value.message


def test_a_role_may_be_only_an_endpoint(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("roles:\n  coder:\n    endpoint: {url: 'http://h:1/v1/', model: m}\n")
    profiles = Profiles(tmp_path, tmp_path / "active", tmp_path / "picks", None, None, None)  # type: ignore[arg-type]
    assert profiles.roles("p")["coder"]["endpoint"] == Endpoint("http://h:1/v1", "m")


def test_the_remote_coder_refuses_before_asking_and_maps_the_servers_answers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WarmdError) as info:
        coder.remote(Endpoint("https://api.example.com/v1", "m"), offline=True)
    assert info.value.code is Code.NETWORK_FORBIDDEN
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    with pytest.raises(WarmdError) as info:
        coder.remote(Endpoint("http://127.0.0.1:1/v1", "m", "NO_SUCH_TOKEN"), offline=True)
    assert info.value.code is Code.INVALID_ARGUMENT and "NO_SUCH_TOKEN" in info.value.message

    monkeypatch.setenv("THE_TOKEN", "right")
    with ScriptedEndpoint(["hello"], token="right") as server:
        good = coder.remote(Endpoint(server.url, "m", "THE_TOKEN"), offline=True)
        assert good.ask([{"role": "user", "content": "hi"}], CallContext()) == "hello"
        assert server.requests[0]["messages"] == [{"role": "user", "content": "hi"}] and not server.requests[0]["stream"]
        for failing, code in ((good, Code.UNAVAILABLE),     # past the script: 500
                              (coder.remote(Endpoint(server.url, "m"), offline=True), Code.UNAUTHENTICATED),
                              (coder.remote(Endpoint(server.url + "/nope", "m"), offline=True), Code.INVALID_ARGUMENT)):
            with pytest.raises(WarmdError) as info:
                failing.ask([{"role": "user", "content": "hi"}], CallContext())
            assert info.value.code is code and server.url in info.value.message
    with pytest.raises(WarmdError) as info:            # the server is gone
        good.ask([{"role": "user", "content": "hi"}], CallContext())
    assert info.value.code is Code.UNAVAILABLE and "cannot reach" in info.value.message


def test_the_readmes_coder_profile_is_a_valid_profile(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### When the repository has no adapter", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "p.yaml").write_text(block)
    profiles = Profiles(tmp_path, tmp_path / "active", tmp_path / "picks", None, None, None)  # type: ignore[arg-type]
    assert profiles.roles("p")["coder"]["endpoint"] == Endpoint("http://127.0.0.1:8080/v1", "qwen2.5-coder",
                                                                "CODER_TOKEN")
