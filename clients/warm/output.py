"""How the `warm` CLI writes: the rules every command's output follows.

- A message (an error, a note, a one-line result) is one line, never hard-wrapped, whatever the terminal's
  width and whether or not the stream is a terminal: a path in it stays whole for copy, paste and grep.
  Messages never go through rich's markup, so `[model_not_found]` or a path with brackets prints as it is.
- Tables fit a terminal's width; into a pipe or a file they are never cut.
- `--json` output is built by `to_data` alone: every field (defaults included), 64-bit integers as JSON
  numbers, enums by name, field names as in the .proto.
- Tensors print numpy's summary (the first and last 3 values along each axis) past `SUMMARY_THRESHOLD`
  values; `--full` prints every value.
- A reader that goes away (`warm ls | head -1`) ends the command quietly with the status a program killed
  by SIGPIPE has in a shell (141), as other command-line tools do.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.text import Text

from warmd.errors import WarmdError

SUMMARY_THRESHOLD = 100         # values; more than this and a tensor prints numpy's summary
PIPE_CLOSED_STATUS = 128 + 13   # 128 + SIGPIPE: what a shell reports for `seq 1 1000000 | head -1`
_UNCUT = 1_000_000              # the width of tables written to a pipe or a file: never cut



class _Console(Console):
    def on_broken_pipe(self) -> None:
        """rich's own answer (exit 1) would bypass `pipe_closed`: hand the error to `warm.cli.main`."""
        self.quiet = True
        raise BrokenPipeError


out = _Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else _UNCUT)
err_console = _Console(stderr=True, highlight=False, soft_wrap=True)


def one_line(text: str) -> str:
    """`text` with its line breaks turned into spaces (a provider's multi-line exception, say)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def say(text: str) -> None:
    """A one-line result on stdout."""
    out.print(Text(one_line(text)))


def note(text: str) -> None:
    """A one-line remark on stderr (progress, hints): stdout stays the command's result."""
    err_console.print(Text(one_line(text)))


def error(err: WarmdError, as_json: bool) -> None:
    """A failure: `error [code] message` on stderr, or `{"error": {...}}` on stdout with --json."""
    if as_json:
        print_json({"error": {"code": err.code.value, "message": err.message}})
    else:
        err_console.print(Text.assemble(("error", "red"), f" [{err.code.value}] {one_line(err.message)}"))


def to_data(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON-ready data: every field, 64-bit integers as numbers (not the strings of
    the ProtoJSON mapping; warmd's values stay far below 2**53), enums by name."""
    return MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True,
                         unquote_int64_if_possible=True)


def print_json(value: Any) -> int:
    """Print one JSON document on one line: a message, a list of messages, or plain data. Returns 0."""
    if isinstance(value, Message):
        value = to_data(value)
    elif isinstance(value, (list, tuple)) and all(isinstance(v, Message) for v in value):
        value = [to_data(v) for v in value]
    print(json.dumps(value), flush=True)
    return 0


def format_tensor(array: Any, full: bool) -> str:
    """numpy's text for an array: summarized past SUMMARY_THRESHOLD values unless `full`, lines as wide as
    the terminal (120 columns into a pipe)."""
    import numpy as np

    return np.array2string(array, threshold=sys.maxsize if full else SUMMARY_THRESHOLD, edgeitems=3,
                           precision=6, max_line_width=shutil.get_terminal_size((120, 24)).columns)


def pipe_closed() -> int:
    """The reader of stdout (or stderr) went away: point both at /dev/null, so that nothing more fails on
    the way out (Python's final flush included), and return the status to exit with."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):      # a stream without a file descriptor (captured in-process)
            pass
    os.close(devnull)
    return PIPE_CLOSED_STATUS
