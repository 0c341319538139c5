"""`warm`: the command line of warmd. Every read command takes --json; failures exit 1 with the code."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from warm.client import Client
from warmd import __version__
from warmd.errors import Code, WarmdError
from warmd.units import format_size, parse_duration
from warmd.v1 import warmd_pb2 as pb

# Not a terminal: no truncation at 80 columns (scripts should use --json, but grep must still work).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 250)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 250)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "service":       # talks to the service manager, not to the daemon
        return cmd_service(args)
    try:
        with Client(getattr(args, "socket", None), tcp=getattr(args, "tcp", None)) as client:
            return args.run(client, args) or 0
    except WarmdError as err:
        if getattr(args, "json", False):
            print(json.dumps({"error": {"code": err.code.value, "message": err.message}}))
        else:
            err_console.print(Text.assemble(("error", "red"), f" [{err.code.value}] {err.message}"))
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    # Accepted before or after the subcommand; SUPPRESS keeps a subcommand from resetting the value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="the daemon's Unix socket (default: $WARMD_SOCKET or the runtime dir)")
    common.add_argument("--tcp", default=argparse.SUPPRESS,
                        help="connect over TCP HOST:PORT instead (token from the daemon's token file)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = argparse.ArgumentParser(prog="warm", description="Talk to the warmd model daemon.",
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"warm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ls", parents=[common, as_json], help="list models and rejected spec files")
    p.add_argument("--task", default="")
    p.add_argument("--tag", default="")
    p.add_argument("--state", default="", choices=["", "available", "loading", "ready", "unloading", "failed"])
    p.set_defaults(run=cmd_ls)
    p = sub.add_parser("show", parents=[common, as_json], help="everything about one model")
    p.add_argument("name")
    p.set_defaults(run=cmd_show)
    p = sub.add_parser("load", parents=[common, as_json], help="load a model and wait until it is ready")
    p.add_argument("name")
    p.add_argument("--keep-alive", help="how long it stays when idle: 30s, 5m, 1h, -1 (forever)")
    p.set_defaults(run=cmd_load)
    p = sub.add_parser("pull", parents=[common, as_json], help="download a model's files with live progress")
    p.add_argument("name")
    p.set_defaults(run=cmd_pull)
    p = sub.add_parser("cancel", parents=[common], help="cancel a running job (partial downloads are kept)")
    p.add_argument("job_id")
    p.set_defaults(run=cmd_cancel)
    p = sub.add_parser("rm", parents=[common, as_json], help="unload a model and delete its downloaded files")
    p.add_argument("name")
    p.set_defaults(run=cmd_rm)
    p = sub.add_parser("add", parents=[common, as_json], help="write a spec for hf://ORG/NAME from its metadata, "
                       "or install a plugin from git+URL[@REV] (or a local git repository) once its gate passes")
    p.add_argument("source", metavar="hf://ORG/NAME | git+URL[@REV] | PATH")
    p.add_argument("--revision", default="")
    p.add_argument("--name", default="")
    p.set_defaults(run=cmd_add)
    p = sub.add_parser("plugins", parents=[common, as_json], help="provider plugins: ls | update NAME | rm NAME")
    p.add_argument("action", choices=["ls", "update", "rm"])
    p.add_argument("plugin", nargs="?", default="", metavar="NAME")
    p.set_defaults(run=cmd_plugins)
    p = sub.add_parser("unload", parents=[common, as_json], help="unload a model (after in-flight requests)")
    p.add_argument("name")
    p.set_defaults(run=cmd_unload)
    for verb in ("pin", "unpin"):
        p = sub.add_parser(verb, parents=[common, as_json],
                           help="never evict or expire a model" if verb == "pin" else "undo `warm pin`")
        p.add_argument("name")
        p.set_defaults(run=cmd_pin, pinned=verb == "pin")
    p = sub.add_parser("ps", parents=[common, as_json], help="resident models")
    p.set_defaults(run=cmd_ps)
    p = sub.add_parser("infer", parents=[common, as_json], help="run a model")
    p.add_argument("name", nargs="?", default="", help="the model (or use --role)")
    p.add_argument("--role", default="", help="run the model that plays this role in the active profile")
    p.add_argument("--text", action="append", default=[], help="a text input (repeatable)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="a tensor: NAME=[[1,2],[3,4]] (JSON) or NAME=@file.npy (repeatable)")
    p.add_argument("--dtype", default="float32", help="numpy dtype for JSON inputs (default float32)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=JSON", help="a provider parameter")
    p.add_argument("--stream", action="store_true",
                   help="print generated text as it comes (Ctrl-C stops the model)")
    p.set_defaults(run=cmd_infer)
    p = sub.add_parser("watch", parents=[common, as_json], help="follow events until interrupted")
    p.add_argument("--kind", action="append", default=[], help="event kind prefix, e.g. catalog. (repeatable)")
    p.add_argument("--model", default="")
    p.set_defaults(run=cmd_watch)
    p = sub.add_parser("service", help="start warmd and warm-tray at login: install | uninstall | status")
    p.add_argument("action", choices=["install", "uninstall", "status"])
    p.add_argument("--no-enable", action="store_true", help="only write or remove the files")
    p.add_argument("--no-tray", action="store_true", help="install: the daemon only, no warm-tray at login")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("status", parents=[common, as_json], help="the daemon: version, paths, resident models")
    p.set_defaults(run=cmd_status)
    p = sub.add_parser("profile", parents=[common, as_json],
                       help="profiles of roles: list | use NAME | choose ROLE [MODEL]")
    p.add_argument("action", choices=["list", "use", "choose"])
    p.add_argument("profile_name", nargs="?", default="", metavar="NAME|ROLE")
    p.add_argument("role_model", nargs="?", default="", metavar="MODEL",
                   help="choose: the candidate that plays ROLE from now on (none: back to the profile's order)")
    p.set_defaults(run=cmd_profile)
    p = sub.add_parser("token", parents=[common, as_json], help="tokens for TCP clients: create | list | revoke")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("revoke_name", nargs="?", metavar="NAME", help="the token to revoke")
    p.add_argument("--name", default="", help="create: the token's name (e.g. the app using it)")
    p.add_argument("--scope", default="read", choices=["read", "infer", "admin"],
                   help="create: read (list, status, watch) < infer (+ run models) < admin (+ everything)")
    p.set_defaults(run=cmd_token)
    return parser


# ---- commands --------------------------------------------------------------------------------
def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    listing = client.list(task=args.task, tag=args.tag, state=args.state, discovered=True)
    if args.json:
        return _print_json(listing)
    table = Table("NAME", "STATE", "FILES", "ON DISK", "TASK", "PROVIDER", "DEVICE", "SIZE", "SOURCE", box=None)
    for m in listing.models:
        source = m.source + (f" ({m.files.revision[:12]})" if m.files.revision else "")
        # Cells are data, not markup: "[spec_invalid]" must show, not vanish as a style tag.
        table.add_row(*map(escape, (m.name, _state(m), m.files.state, format_size(m.files.bytes_on_disk), m.task,
                                    m.provider, m.residency.device or m.device, _size(m), source)))
    out.print(table)
    rejected_files = {r.file for r in listing.rejected}
    for m in listing.models:
        if m.state == pb.READY and m.error:      # a new version was rejected or failed to load
            out.print(Text(f"{m.name}: still serving the previous version; the latest edit of {m.file} was "
                           "rejected (below)" if m.file in rejected_files else f"{m.name}: {m.error}"))
    if listing.rejected:
        out.print("\n[bold red]Rejected spec files[/bold red] (fix them; the daemon picks up the change):")
        bad = Table("FILE", "LINE", "FIELD", "CODE", "ERROR", box=None)
        for r in listing.rejected:
            bad.add_row(*map(escape, (r.file, str(r.line or ""), r.field, r.code, r.message)))
        out.print(bad)
    if listing.discovered:
        out.print("\n[bold]In the Hugging Face cache, no spec[/bold] (`warm add hf://REPO` writes one):")
        found = Table("REPO", "ON DISK", "REVISIONS", box=None)
        for d in listing.discovered:
            found.add_row(d.repo_id, format_size(d.size_on_disk), ", ".join(r[:12] for r in d.revisions))
        out.print(found)
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    model = client.get(args.name)
    if args.json:
        return _print_json(model)
    for key, value in MessageToDict(model, preserving_proto_field_name=True).items():
        out.print(f"[bold]{key:>13}[/bold]  {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return 0


def cmd_load(client: Client, args: argparse.Namespace) -> int:
    keep_alive = parse_duration(args.keep_alive) if args.keep_alive else None

    def show(event: pb.Event) -> None:
        if args.json:
            _print_json(event)
        elif event.kind == "job.progress" and event.progress.unit != "bytes":
            err_console.print(f"{event.progress.phase}: {event.message}")
        elif event.kind == "download.started":
            err_console.print(f"downloading first: {event.message} (job {event.job_id})")

    model = client.load(args.name, keep_alive=keep_alive, on_event=show)
    if args.json:
        return _print_json(model)
    out.print(f"{model.name} ready on {model.residency.device} ({_size(model)})")
    return 0


def cmd_pull(client: Client, args: argparse.Namespace) -> int:
    if args.json:
        model = client.pull(args.name, on_event=lambda e: (_print_json(e), sys.stdout.flush()))
        return _print_json(model)
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(args.name, total=None)

        def show(event: pb.Event) -> None:
            if event.kind == "download.started":
                err_console.print(f"pulling {event.model} (job {event.job_id}): {event.message}")
            elif event.kind == "job.progress" and event.progress.unit == "bytes":
                bar.update(task, completed=event.progress.done, total=event.progress.total or None,
                           description=f"{args.name} {event.message}".strip())

        model = client.pull(args.name, on_event=show)
    out.print(f"{model.name}: {model.files.state}, {format_size(model.files.bytes_on_disk)}"
              + (f", revision {model.files.revision}" if model.files.revision else ""))
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    client.cancel(args.job_id)
    out.print(f"cancelled {args.job_id}")
    return 0


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    result = client.remove(args.name)
    if args.json:
        return _print_json(result)
    out.print(f"{args.name}: freed {format_size(result.freed_bytes)} ({len(result.removed)} paths)")
    return 0


def cmd_add(client: Client, args: argparse.Namespace) -> int:
    plugin = _plugin_source(args.source)
    if plugin is not None:
        source = f"{plugin}@{args.revision}" if args.revision else plugin
        last = client.install_plugin(source, name=args.name, on_event=lambda e: _plugin_event(args, e))
        if not args.json:        # with --json every event, the last one included, is a line already
            out.print(escape(f"installed {last.message}"))
        return 0
    result = client.add(args.source, revision=args.revision, name=args.name)
    if args.json:
        return _print_json(result)
    out.print(f"wrote {result.file}: {result.name} ({result.provider}, {result.task}); `warm pull {result.name}` "
              "fetches it")
    return 0


def cmd_plugins(client: Client, args: argparse.Namespace) -> int:
    if args.action != "ls" and not args.plugin:
        raise WarmdError(Code.INVALID_ARGUMENT, f"warm plugins {args.action} NAME")
    if args.action == "update":
        last = client.update_plugin(args.plugin, on_event=lambda e: _plugin_event(args, e))
        if not args.json:
            out.print(escape(last.message))
        return 0
    if args.action == "rm":
        removed = client.remove_plugin(args.plugin)
        if args.json:
            print(json.dumps({"removed": removed}))
        else:
            out.print(escape(f"removed {args.plugin}: {', '.join(removed)}"))
        return 0
    plugins = client.plugins()
    if args.json:
        return _print_json_list(plugins)
    table = Table("NAME", "PROVIDER", "STATE", "SOURCE", "COMMIT", "GATE", "MODELS", box=None)
    for p in plugins:
        gate = f"{p.gate.result} ({p.gate.step}, {p.gate.commit[:12]})" if p.gate.result == "failed" else p.gate.result
        table.add_row(*map(escape, (p.name, p.provider, p.state, p.source or p.folder, p.commit[:12], gate,
                                    ", ".join(p.models))))
    out.print(table)
    for p in plugins:
        if p.error:
            out.print(escape(f"{p.name}: {p.error}"))
        elif p.gate.result == "failed":
            out.print(escape(f"{p.name}: the update to {p.gate.commit[:12]} failed at step {p.gate.step!r}: "
                             f"{p.gate.message}; still serving {p.commit[:12]}"))
    return 0


def _plugin_source(text: str) -> str | None:
    """A plugin source for the daemon (git+URL, or a local repository made absolute), or None for hf://."""
    if text.startswith("git+"):
        return text
    folder, at, rev = text.rpartition("@") if "@" in text else (text, "", "")
    if Path(folder).expanduser().is_dir():
        return str(Path(folder).expanduser().resolve()) + (at + rev if at else "")
    return None


def _plugin_event(args: argparse.Namespace, event: pb.Event) -> None:
    if args.json:
        _print_json(event)
        sys.stdout.flush()
    elif event.kind == "job.progress":
        err_console.print(escape(f"{event.progress.phase}: {event.message}"))


def cmd_unload(client: Client, args: argparse.Namespace) -> int:
    model = client.unload(args.name)
    if args.json:
        return _print_json(model)
    out.print(f"{model.name}: {pb.ModelState.Name(model.state).lower()}")
    return 0


def cmd_pin(client: Client, args: argparse.Namespace) -> int:
    model = client.pin(args.name, args.pinned)
    if args.json:
        return _print_json(model)
    out.print(f"{model.name}: {'pinned' if args.pinned else 'unpinned'}")
    return 0


def cmd_profile(client: Client, args: argparse.Namespace) -> int:
    if args.action == "use":
        if not args.profile_name:
            raise WarmdError(Code.INVALID_ARGUMENT, "warm profile use NAME")
        roles = client.use_profile(args.profile_name)
        active = args.profile_name
    elif args.action == "choose":
        if not args.profile_name:
            raise WarmdError(Code.INVALID_ARGUMENT, "warm profile choose ROLE [MODEL]")
        roles, active = [client.choose_role(args.profile_name, args.role_model)], client.list_profiles().active
    else:
        listing = client.list_profiles()
        if args.json:
            return _print_json(listing)
        roles, active = list(listing.roles), listing.active
        out.print(f"profiles: {', '.join(listing.profiles) or 'none'}")
    if args.json:
        return _print_json_list(roles)
    out.print(f"active: {active}")
    table = Table("ROLE", "MODEL", "CANDIDATES", "PASSED OVER", box=None)
    for r in roles:
        table.add_row(r.role, r.model or "(none)", ", ".join(f"{c} (chosen)" if c == r.chosen else c
                                                            for c in r.candidates),
                      "; ".join(f"{p.model}: {p.reason}" for p in r.passed_over))
    out.print(table)
    return 0


def cmd_token(client: Client, args: argparse.Namespace) -> int:
    if args.action == "create":
        token, info = client.create_token(args.name, args.scope)
        if args.json:
            print(json.dumps({"token": token, "name": info.name, "scope": info.scope}))
        else:
            print(token)      # alone on stdout, for scripts; the note goes to stderr
            err_console.print(f"token {info.name!r} (scope {info.scope}): shown once, the daemon keeps only its hash")
        return 0
    if args.action == "revoke":
        client.revoke_token(args.revoke_name or args.name)
        out.print(f"revoked {args.revoke_name or args.name}")
        return 0
    tokens = client.list_tokens()
    if args.json:
        return _print_json_list(tokens)
    table = Table("NAME", "SCOPE", "CREATED", box=None)
    for t in tokens:
        table.add_row(t.name, t.scope, time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created)))
    out.print(table)
    return 0


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    resident = client.status().resident
    if args.json:
        return _print_json_list(resident)
    table = Table("NAME", "DEVICE", "TIER", "SIZE", "ESTIMATED", "PINNED", "IN FLIGHT", "LAST USED", "EXPIRES",
                  box=None)
    now = time.time()
    for m in resident:
        r = m.residency
        table.add_row(m.name, r.device, r.tier, format_size(r.measured_bytes), format_size(r.estimated_bytes),
                      "yes" if r.pinned else "", str(r.in_flight), f"{now - r.last_used:.0f}s ago",
                      "never" if not r.expires_at else f"in {max(0.0, r.expires_at - now):.0f}s")
    out.print(table)
    return 0


def cmd_infer(client: Client, args: argparse.Namespace) -> int:
    if args.role:
        choice = client.resolve_role(args.role)
        args.name = choice.model
        err_console.print(f"role {args.role} -> {choice.model}" + "".join(
            f"; passed over {p.model}: {p.reason}" for p in choice.passed_over))
    elif not args.name:
        raise WarmdError(Code.INVALID_ARGUMENT, "name a model, or pass --role ROLE")
    inputs = dict(_tensor_arg(item, args.dtype) for item in args.input)
    params = dict(_param_arg(item) for item in args.param)
    if args.stream:
        result = None
        for chunk in client.infer_stream(args.name, inputs, text=args.text, parameters=params):
            if chunk.text and not args.json:
                print(chunk.text, end="", flush=True)
            elif chunk.progress and not args.json:
                err_console.print(f"{chunk.progress[0]}/{chunk.progress[1]} {chunk.progress[2]}")
            result = chunk.result or result
        if not args.json:
            print()
            return 0
    else:
        result = client.infer(args.name, inputs, text=args.text, parameters=params)
    if args.json:
        print(json.dumps({
            "model": args.name,
            "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "data": v.tolist()}
                        for k, v in result.outputs.items()},
            "json": result.json,
            "signature": MessageToDict(result.signature, preserving_proto_field_name=True)}))
        return 0
    import numpy as np

    for name, value in result.outputs.items():
        out.print(f"[bold]{name}[/bold] {value.dtype} {list(value.shape)}")
        print(np.array2string(value, threshold=sys.maxsize, precision=6, max_line_width=120))
    if result.json is not None:
        print(json.dumps(result.json, indent=2))
    return 0


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    for event in client.watch(kinds=args.kind, model=args.model):
        if args.json:
            _print_json(event)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
            extra = " ".join(x for x in (event.reason and f"({event.reason})", event.error_code and
                                         f"[{event.error_code}]", event.message) if x)
            out.print(f"{stamp} {event.kind:<17} {event.model or event.file} {extra}")
        sys.stdout.flush()
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    from warm import service

    if args.action == "status":
        info = service.status()
        if args.json:
            print(json.dumps(info))
        else:
            for key, value in info.items():
                out.print(f"[bold]{key:>14}[/bold]  {'unknown' if value is None else value}")
        return 0
    if args.action == "install":
        files, said = service.install(enable=not args.no_enable, tray=not args.no_tray)
    else:
        files, said = service.uninstall(enable=not args.no_enable)
    if args.json:
        print(json.dumps({"files": [str(f) for f in files], "result": said}))
    else:
        out.print(f"{args.action}: {', '.join(map(str, files)) or 'nothing to remove'}: {said}")
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    status = client.status()
    if args.json:
        return _print_json(status)
    rows = [("version", status.version), ("pid", status.pid),
            ("uptime", f"{time.time() - status.started_at:.0f}s"), ("socket", status.socket),
            ("tcp", status.tcp or "off"), ("specs", status.specs_dir),
            ("downloads", "offline" if status.offline else status.downloads), ("hf cache", status.hf_cache),
            ("config", status.config_file or "(none)"), ("log file", status.log_file),
            ("models", f"{status.models} ({status.rejected} rejected spec files)"),
            ("resident", ", ".join(m.name for m in status.resident) or "none"),
            ("torch", "imported" if status.torch_imported else "not imported yet"),
            ("plugins", f"{status.plugins_dir}: " + (", ".join(
                f"{p.name} ({p.provider})" if p.provider else f"{p.name} (disabled: {p.error})"
                for p in status.plugins) or "none")),
            ("jobs", ", ".join(f"{j.kind} {j.model} {j.id} {_fraction(j.progress)}" for j in status.jobs) or "none")]
    for key, value in rows:
        out.print(f"[bold]{key:>9}[/bold]  {value}")
    devices = Table("DEVICE", "TOTAL", "BUDGET", "USED", "FREE", box=None)
    for d in status.devices:
        devices.add_row(d.name + (" (simulated)" if d.simulated else ""), format_size(d.total),
                        format_size(d.budget), format_size(d.used), format_size(d.free) if d.free >= 0 else "")
    out.print(devices)
    return 0


# ---- helpers ---------------------------------------------------------------------------------
def _state(m: pb.Model) -> str:
    state = pb.ModelState.Name(m.state).lower()
    return f"{state} [{m.error_code}]" if m.error_code else state


def _size(m: pb.Model) -> str:
    r = m.residency
    return format_size(r.measured_bytes or r.estimated_bytes) if (r.measured_bytes or r.estimated_bytes) else ""


def _fraction(p: pb.Progress) -> str:
    """`12.0 MiB/26.0 MiB` for bytes, `3/10 steps` otherwise."""
    if p.unit == "bytes":
        return f"{format_size(p.done)}/{format_size(p.total)}" if p.total else format_size(p.done)
    return f"{p.done}/{p.total} {p.unit}" if p.total else ""


def _print_json(message: Any) -> int:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True)))
    return 0


def _print_json_list(messages: Any) -> int:
    print(json.dumps([MessageToDict(m, preserving_proto_field_name=True) for m in messages]))
    return 0


def _tensor_arg(item: str, dtype: str) -> tuple[str, Any]:
    import numpy as np

    name, sep, value = item.partition("=")
    if not sep or not name:
        raise WarmdError(Code.INVALID_ARGUMENT, f"--input {item!r} must be NAME=JSON or NAME=@file.npy")
    try:
        if value.startswith("@"):
            return name, np.load(Path(value[1:]), allow_pickle=False)
        return name, np.asarray(json.loads(value), dtype=dtype)
    except (OSError, ValueError, TypeError) as exc:
        raise WarmdError(Code.INVALID_ARGUMENT, f"--input {name}: {exc}") from None


def _param_arg(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep:
        raise WarmdError(Code.INVALID_ARGUMENT, f"--param {item!r} must be KEY=JSON")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


if __name__ == "__main__":
    sys.exit(main())
