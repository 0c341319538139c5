"""Ollama's chat templates (Go text/template) translated to Jinja, so one sandboxed renderer (warmd.chat)
serves every chat model.

What Ollama does with a template, reproduced here:
- it sees the conversation collated: consecutive messages of one role joined with a blank line, the
  system messages also joined into `.System`; a model's SYSTEM layer is the system message when the
  conversation has none;
- a template that uses `.Messages` is run once with {System, Messages (Role, Content), Tools, Response: ""};
- an older template (only .System, .Prompt, .Response) is run once per exchange, and a last time for the
  open turn with everything after `.Response` cut off.
Translated: text, `{{- -}}` trimming, fields (`.X.Y`, `$.X`, `$var`), literals, parentheses, pipelines,
if / else if / else, range (with `$i, $v :=`), with, break, continue, variables (`:=`, `=`), comments, and
the functions eq ne lt le gt ge and or not len index slice json printf (%s %d %v). Anything else
(define, template, block, other functions) is refused with `spec_invalid` naming it, never guessed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from warmd.errors import Code, WarmdError

_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\'(?:[^\'\\]|\\.)\'|:=|[()|,]|=(?!=)|[^\s()|,]+)')
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_FUNCTIONS = {*_COMPARE, "and", "or", "not", "len", "index", "slice", "json", "printf"}
_VAR = re.compile(r"^\$[A-Za-z_][A-Za-z0-9_]*$")


class TemplateError(ValueError):
    """A construct the translator does not cover."""


def to_jinja(template: str, system: str = "") -> str:
    """A Jinja chat template (taking `messages`) that renders what Ollama renders for `template`.

    Args:
        template: the model's template layer (Go text/template).
        system: the model's SYSTEM layer, used when the conversation has no system message.
    Raises:
        WarmdError: `spec_invalid` naming the construct the translator does not cover.
    """
    try:
        legacy = ".Messages" not in template
        body = _Translator(template).run()
        macros = f"{{%- macro _go(_root) -%}}{{%- set _v = namespace() -%}}{body}{{%- endmacro -%}}"
        if legacy:
            cut = _Translator(template, cut_after="Response").run()
            macros += f"{{%- macro _cut(_root) -%}}{{%- set _v = namespace() -%}}{cut}{{%- endmacro -%}}"
    except TemplateError as exc:
        raise WarmdError(Code.SPEC_INVALID, f"Ollama's template uses {exc}, which warmd cannot translate; set "
                         "options.chat_template (Jinja) in the spec") from None
    return macros + _collate(system) + (_LEGACY if legacy else _MESSAGES)


def _collate(system: str) -> str:
    default = json.dumps(system)
    return ("{%- set _c = namespace(msgs=[], system=[]) -%}"
            f"{{%- set _m = ([{{'role': 'system', 'content': {default}}}] if {default} and not "
            "(messages|selectattr('role', 'equalto', 'system')|list) else []) + messages -%}"
            "{%- for m in _m -%}"
            "{%- if m.role == 'system' -%}{%- set _c.system = _c.system + [m.content] -%}{%- endif -%}"
            "{%- if _c.msgs and _c.msgs[-1].Role == m.role -%}"
            "{%- set _c.msgs = _c.msgs[:-1] + [{'Role': m.role, 'Content': _c.msgs[-1].Content ~ '\\n\\n' ~ m.content}] -%}"
            "{%- else -%}{%- set _c.msgs = _c.msgs + [{'Role': m.role, 'Content': m.content}] -%}{%- endif -%}"
            "{%- endfor -%}")


_MESSAGES = ("{{- _go({'System': _c.system|join('\\n\\n'), 'Messages': _c.msgs, 'Tools': none, 'Response': '', "
             "'Prompt': ''}) -}}")
_TURN = "{'System': _s.system, 'Prompt': _s.prompt, 'Response': _s.response}"
_RESET = "{%- set _s.system = '' -%}{%- set _s.prompt = '' -%}{%- set _s.response = '' -%}"
_LEGACY = ("{%- set _s = namespace(system='', prompt='', response='') -%}"
           "{%- for m in _c.msgs -%}"
           "{%- if m.Role == 'system' -%}"
           f"{{%- if _s.prompt or _s.response -%}}{{{{- _go({_TURN}) -}}}}{_RESET}{{%- endif -%}}"
           "{%- set _s.system = m.Content -%}"
           "{%- elif m.Role == 'user' -%}"
           f"{{%- if _s.response -%}}{{{{- _go({_TURN}) -}}}}{_RESET}{{%- endif -%}}"
           "{%- set _s.prompt = m.Content -%}"
           "{%- elif m.Role == 'assistant' -%}{%- set _s.response = m.Content -%}"
           "{%- endif -%}"
           "{%- endfor -%}"
           f"{{{{- _cut({_TURN}) -}}}}")


@dataclass
class _Block:
    kind: str              # if | range | with
    dot: str               # the Jinja name of `.` inside it


@dataclass
class _Translator:
    source: str
    cut_after: str = ""    # stop after the first action that reads this root field (legacy templates)
    out: list[str] = field(default_factory=list)
    blocks: list[_Block] = field(default_factory=list)
    counter: int = 0

    @property
    def dot(self) -> str:
        return self.blocks[-1].dot if self.blocks else "_root"

    def run(self) -> str:
        pos, text = 0, self.source
        pending_trim = cut = False
        while pos < len(text):
            start = text.find("{{", pos)
            chunk = text[pos:] if start < 0 else text[pos:start]
            if start < 0:
                self._text(chunk.lstrip(" \t\r\n") if pending_trim else chunk)
                break
            end = _action_end(text, start + 2)
            inner = text[start + 2:end]
            left, right = bool(re.match(r"-\s", inner)), bool(re.search(r"\s-$", inner))
            inner = inner[1:] if left else inner
            inner = inner[:-1] if right else inner
            if pending_trim:
                chunk = chunk.lstrip(" \t\r\n")
            self._text(chunk.rstrip(" \t\r\n") if left else chunk)
            if self._action(inner.strip()):
                cut = True     # the rest is dropped, open blocks closed below
                break
            pending_trim, pos = right, end + 2
        if self.blocks and not cut:
            raise TemplateError(f"an unclosed {{{{ {self.blocks[-1].kind} }}}}")
        for block in reversed(self.blocks):
            self.out.append({"if": "{%- endif -%}", "with": "{%- endif -%}", "range": "{%- endfor -%}"}[block.kind])
        return "".join(self.out)

    def _text(self, chunk: str) -> None:
        if chunk:
            self.out.append("{{- " + json.dumps(chunk) + " -}}")

    def _action(self, inner: str) -> bool:
        """Translate one action; True when the translation stops here (cut_after)."""
        if inner.startswith("/*"):
            return False
        tokens = [t for t in _TOKEN.findall(inner) if t]
        if not tokens:
            raise TemplateError("an empty action {{ }}")
        head = tokens[0]
        if head in ("define", "template", "block"):
            raise TemplateError(f"{{{{ {head} }}}}")
        if head == "if":
            self.out.append(f"{{%- if {self._expr(tokens[1:])} -%}}")
            self.blocks.append(_Block("if", self.dot))
        elif head == "else":
            self._else(tokens[1:])
        elif head == "end":
            if not self.blocks:
                raise TemplateError("an {{ end }} without a block")
            block = self.blocks.pop()
            self.out.append({"if": "{%- endif -%}", "with": "{%- endif -%}", "range": "{%- endfor -%}"}[block.kind])
        elif head == "range":
            self._range(tokens[1:])
        elif head == "with":
            name = self._name()
            self.out.append(f"{{%- set {name} = {self._expr(tokens[1:])} -%}}{{%- if {name} -%}}")
            self.blocks.append(_Block("with", name))
        elif head in ("break", "continue"):
            self.out.append(f"{{%- {head} -%}}")
        elif len(tokens) > 2 and _VAR.match(head) and tokens[1] in (":=", "="):
            self.out.append(f"{{%- set _v.{head[1:]} = {self._expr(tokens[2:])} -%}}")
        else:
            self.out.append(f"{{{{- {self._expr(tokens)} -}}}}")
            return bool(self.cut_after) and any(t in (f".{self.cut_after}", f"$.{self.cut_after}") for t in tokens)
        return False

    def _else(self, rest: list[str]) -> None:
        if not self.blocks:
            raise TemplateError("an {{ else }} without a block")
        if not rest:
            self.out.append("{%- else -%}")
        elif rest[0] == "if" and self.blocks[-1].kind == "if":
            self.out.append(f"{{%- elif {self._expr(rest[1:])} -%}}")
        else:
            raise TemplateError(f"{{{{ else {' '.join(rest)} }}}}")

    def _range(self, rest: list[str]) -> None:
        names: list[str] = []
        if ":=" in rest:
            split = rest.index(":=")
            names = [t for t in rest[:split] if t != ","]
            rest = rest[split + 1:]
            if not 1 <= len(names) <= 2 or not all(_VAR.match(n) for n in names):
                raise TemplateError(f"range variables {' '.join(names)}")
        name = self._name()
        sets = ""
        if len(names) == 2:
            sets = f"{{%- set _v.{names[0][1:]} = loop.index0 -%}}{{%- set _v.{names[1][1:]} = {name} -%}}"
        elif names:
            sets = f"{{%- set _v.{names[0][1:]} = {name} -%}}"
        self.out.append(f"{{%- for {name} in {self._expr(rest)} -%}}{sets}")
        self.blocks.append(_Block("range", name))

    def _name(self) -> str:
        self.counter += 1
        return f"_d{self.counter}"

    def _expr(self, tokens: list[str]) -> str:
        parser = _Pipeline(tokens, self.dot)
        expr = parser.pipeline()
        if parser.pos != len(tokens):
            raise TemplateError(f"the expression {' '.join(tokens)}")
        return expr


class _Pipeline:
    """A Go pipeline (`cmd | cmd`, each `fn arg...` or one term) as a Jinja expression."""

    def __init__(self, tokens: list[str], dot: str) -> None:
        self.tokens, self.dot, self.pos = tokens, dot, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def pipeline(self) -> str:
        value = self.command(None)
        while self.peek() == "|":
            self.pos += 1
            value = self.command(value)
        return value

    def command(self, piped: str | None) -> str:
        args: list[str] = []
        while self.peek() not in (None, ")", "|"):
            args.append(self.term())
        if piped is not None:
            args.append(piped)
        if not args:
            raise TemplateError("an empty command")
        if args[0].startswith("\0"):
            return _call(args[0][1:], args[1:])
        if len(args) != 1:
            raise TemplateError(f"calling a value ({' '.join(self.tokens)})")
        return args[0]

    def term(self) -> str:
        t = self.tokens[self.pos]
        self.pos += 1
        if t == "(":
            inner = self.pipeline()
            if self.peek() != ")":
                raise TemplateError("an unclosed (")
            self.pos += 1
            return f"({inner})"
        if t[0] == '"':
            return json.dumps(json.loads(t))
        if t[0] == "`":
            return json.dumps(t[1:-1])
        if re.fullmatch(r"-?\d+(\.\d+)?", t):
            return t
        if t in ("true", "false"):
            return t
        if t == "nil":
            return "none"
        if t == ".":
            return self.dot
        if re.fullmatch(r"(\.[A-Za-z_][A-Za-z0-9_]*)+", t):
            return self.dot + t
        if t == "$":
            return "_root"
        if re.fullmatch(r"\$(\.[A-Za-z_][A-Za-z0-9_]*)+", t):
            return "_root" + t[1:]
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", t):
            return "_v." + t[1:]
        if t in _FUNCTIONS:
            return "\0" + t
        raise TemplateError(f"{t!r}")


def _call(name: str, args: list[str]) -> str:
    def need(low: int, high: int = 99) -> None:
        if not low <= len(args) <= high:
            raise TemplateError(f"{name} with {len(args)} arguments")

    if name in _COMPARE:
        need(2, 99 if name == "eq" else 2)
        return "(" + " or ".join(f"{args[0]} {_COMPARE[name]} {b}" for b in args[1:]) + ")"
    if name in ("and", "or"):
        need(1)
        return "(" + f" {name} ".join(args) + ")"
    if name == "not":
        need(1, 1)
        return f"(not {args[0]})"
    if name == "len":
        need(1, 1)
        return f"({args[0]}|length)"
    if name == "index":
        need(1)
        return args[0] + "".join(f"[{a}]" for a in args[1:])
    if name == "slice":
        need(1, 3)
        return f"{args[0]}[{':'.join(args[1:]) if len(args) == 3 else (args[1] + ':' if len(args) == 2 else ':')}]"
    if name == "json":
        need(1, 1)
        return f"({args[0]}|tojson)"
    need(1)                                   # printf
    fmt = json.loads(args[0]) if args[0].startswith('"') else None
    if fmt is None or re.search(r"%[^sdv%]", fmt):
        raise TemplateError(f"printf {args[0]}")
    return f"({json.dumps(fmt.replace('%v', '%s'))}|format({', '.join(args[1:])}))"


def _action_end(text: str, pos: int) -> int:
    """Where the action opened before `pos` closes (`}}` outside string literals)."""
    quote = ""
    while pos < len(text) - 1:
        c = text[pos]
        if quote:
            if c == "\\" and quote != "`":
                pos += 1
            elif c == quote:
                quote = ""
        elif c in "\"`":
            quote = c
        elif text.startswith("}}", pos):
            return pos
        pos += 1
    raise TemplateError("an unclosed {{")
