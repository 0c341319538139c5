"""The chat task's pieces without a model: request validation, the sandboxed template, stop strings held
back from a stream, and Ollama's Go templates translated to Jinja (rendering what Ollama renders)."""
from __future__ import annotations

import pytest

from warmd import chat, gotemplate
from warmd.errors import Code, WarmdError

LLAMA3 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{ if .System }}{{ .System }}{{ end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"""
LEGACY = ("{{ if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}</s>\n"
          "{{ end }}<|assistant|>\n{{ .Response }}</s>\n")
TALK = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"}]


def test_stop_strings_are_held_back_until_they_cannot_form() -> None:
    f = chat.StopFilter(("STOP", "</s>"))
    sent = [f.feed(p) for p in ("hel", "lo S", "T", "x ", "wor", "ld <", "/", "s> never")]
    assert "".join(sent) == "hello STx world " and f.hit and f.text == "hello STx world "
    assert sent[:3] == ["hel", "lo ", ""]                 # "S", then "ST", could still become STOP
    assert f.feed("more") == "" and f.flush() == ""
    tail = chat.StopFilter(("END",))
    assert tail.feed("the E") == "the " and tail.flush() == "E" and tail.text == "the E" and not tail.hit


def test_sampling_parameters_are_checked_by_name() -> None:
    s = chat.sampling({"temperature": 0, "stop": "x", "seed": 7}, {"top_k": 5, "temperature": 0.3})
    assert (s.temperature, s.top_k, s.stop, s.seed, s.max_tokens) == (0.0, 5, ("x",), 7, None)
    assert chat.sampling({"max_new_tokens": 3}, max_name="max_new_tokens").max_tokens == 3
    for bad, name in (({"top_p": 2}, "top_p"), ({"max_tokens": 0}, "max_tokens"), ({"seed": "a"}, "seed"),
                      ({"stop": [""]}, "stop"), ({"response_format": {"type": "text"}}, "response_format"),
                      ({"temperature": True}, "temperature")):
        with pytest.raises(WarmdError) as info:
            chat.sampling(bad)
        assert info.value.code is Code.INVALID_ARGUMENT and name in info.value.message


def test_messages_come_from_parameters_then_texts() -> None:
    got = chat.messages({"messages": [{"role": "system", "content": "s"}]}, ["u"])
    assert got == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    for bad in ({"messages": "hi"}, {"messages": [{"role": "robot", "content": "x"}]},
                {"messages": [{"role": "user"}]}, {}, {"messages": [], "max_token": 5}):
        with pytest.raises(WarmdError) as info:
            chat.messages(bad, [])
        assert info.value.code is Code.INVALID_ARGUMENT


def test_templates_render_sandboxed_and_refusals_are_the_callers() -> None:
    tpl = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[a]{% endif %}"
    assert chat.render(tpl, TALK) == "[user]hi[assistant]yo[user]again[a]"
    strict = "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    with pytest.raises(WarmdError) as info:
        chat.render(strict, TALK)
    assert info.value.code is Code.INVALID_ARGUMENT and "system first" in info.value.message
    with pytest.raises(WarmdError) as info:                 # no way out to Python internals
        chat.render("{{ messages.__class__.__mro__ }}", TALK)
    assert info.value.code is Code.PROVIDER_FAILED
    with pytest.raises(WarmdError) as info:
        chat.compile_template("{% for %}")
    assert info.value.code is Code.SPEC_INVALID


def test_ollama_messages_template_renders_as_ollama_does() -> None:
    rendered = chat.render(gotemplate.to_jinja(LLAMA3), [{"role": "system", "content": "be brief"}, *TALK])
    assert rendered == ("<|start_header_id|>system<|end_header_id|>\nbe brief<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\nyo<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\nagain<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # consecutive messages of one role are joined with a blank line, as Ollama collates them
    joined = chat.render(gotemplate.to_jinja(LLAMA3), [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert "\n\na\n\nb<|eot_id|>" in joined


def test_ollama_legacy_template_runs_per_exchange_and_cuts_after_the_response() -> None:
    rendered = chat.render(gotemplate.to_jinja(LEGACY, system="default sys"), TALK)
    assert rendered == ("<|system|>\ndefault sys</s>\n<|user|>\nhi</s>\n<|assistant|>\nyo</s>\n"
                        "<|user|>\nagain</s>\n<|assistant|>\n")
    mine = chat.render(gotemplate.to_jinja(LEGACY, system="default sys"), [{"role": "system", "content": "mine"}, TALK[0]])
    assert mine.startswith("<|system|>\nmine</s>") and "default sys" not in mine


def test_untranslatable_go_templates_are_refused_by_name() -> None:
    for template, what in (('{{ template "x" . }}', "template"), ("{{ .A | html }}", "html"),
                           ("{{ if .A }}x", "unclosed"), ("{{ .A", "unclosed")):
        with pytest.raises(WarmdError) as info:
            rendered = gotemplate.to_jinja(template)
            chat.compile_template(rendered)
        assert info.value.code is Code.SPEC_INVALID and what in info.value.message, info.value.message
