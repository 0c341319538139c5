"""`warm`: the command line of warmd. Every read command takes --json; failures exit 1 with the code.

How output is written (one-line messages, tables, JSON, tensors, a closed pipe) is `warm.output`'s rules;
options that conflict or would be ignored are refused with `invalid_argument` before any call.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from warm import inputs, output
from warm.client import Client, InferResult
from warm.output import note, out, print_json, say, to_data
from warm.progress import JobProgress
from warmd import __version__
from warmd.devices import is_gpu
from warmd.errors import Code, WarmdError
from warmd.units import format_size, parse_duration
from warmd.v1 import MODEL_STATES
from warmd.v1 import warmd_pb2 as pb


def main(argv: list[str] | None = None) -> int:
    """Run one `warm` command. Returns its exit status: 0, 1 on a failure (its code printed), 130 on
    Ctrl-C, 141 when the reader of its output went away."""
    args = _parser().parse_args(argv)
    try:
        try:
            status = _run(args)
        except WarmdError as err:
            output.error(err, getattr(args, "json", False))
            status = 1
        sys.stdout.flush()             # a closed pipe shows here, not in Python's last flush
        return status
    except BrokenPipeError:
        return output.pipe_closed()
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "service":       # talks to the service manager, not to the daemon
        return cmd_service(args)
    socket, tcp = getattr(args, "socket", None), getattr(args, "tcp", None)
    if socket and tcp:
        raise WarmdError(Code.INVALID_ARGUMENT, "--socket and --tcp do not go together: name one way to the daemon")
    with Client(socket, tcp=tcp) as client:
        return args.run(client, args) or 0


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
    p.add_argument("--state", default="", choices=["", *MODEL_STATES])
    p.set_defaults(run=cmd_ls)
    p = sub.add_parser("show", parents=[common, as_json],
                       help="everything about one model, with its download history")
    p.add_argument("name")
    p.set_defaults(run=cmd_show)
    p = sub.add_parser("load", parents=[common, as_json], help="load a model and wait until it is ready")
    p.add_argument("name")
    p.add_argument("--keep-alive", help="how long it stays when idle: 30s, 5m, 1h, -1 (forever)")
    p.add_argument("--dry-run", action="store_true",
                   help="only say what loading it would do now: where, and what would be parked or unloaded")
    p.set_defaults(run=cmd_load)
    p = sub.add_parser("pull", parents=[common, as_json], help="download a model's files with live progress")
    p.add_argument("name")
    p.set_defaults(run=cmd_pull)
    p = sub.add_parser("cancel", parents=[common],
                       help="cancel a running load or download (`warm status` lists jobs; partial downloads are kept)")
    p.add_argument("job_id")
    p.set_defaults(run=cmd_cancel)
    p = sub.add_parser("rm", parents=[common, as_json], help="unload a model and delete its downloaded files")
    p.add_argument("name")
    p.set_defaults(run=cmd_rm)
    p = sub.add_parser("add", parents=[common, as_json],
                       help="write a spec for hf://ORG/NAME (from its metadata) or ollama://NAME:TAG (Ollama's store), "
                       "or install a plugin from git+URL[@REV] (or a local git repository) once its gate passes")
    p.add_argument("source", metavar="hf://ORG/NAME|ollama://NAME:TAG|git+URL[@REV]|PATH")
    p.add_argument("--revision", default="")
    p.add_argument("--name", default="")
    p.add_argument("--draft", action="store_true", help="git: the repository has no adapter; the profile's coder "
                   "drafts one, each attempt gated, and the draft is shown as a diff")
    p.add_argument("--accept", action="store_true", help="git: install the draft once it passed the gate (with "
                   "--draft), or the last draft that passed")
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
    p.add_argument("--history", action="store_true",
                   help="the residency log instead: evictions, parks, expiries, pressure, with their figures")
    p.add_argument("--model", default="", help="--history: only this model's")
    p.set_defaults(run=cmd_ps)
    p = sub.add_parser("infer", parents=[common, as_json], help="run a model")
    p.add_argument("name", nargs="?", default="", help="the model (or use --role)")
    p.add_argument("--role", default="", help="run the model that plays this role in the active profile")
    p.add_argument("--text", action="append", default=[],
                   help="a text input (repeatable): the text, @FILE to read a file, - to read stdin")
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="a tensor: NAME=[[1,2],[3,4]] (JSON) or NAME=@file.npy (repeatable, each NAME once)")
    p.add_argument("--dtype", help=f"numpy dtype of JSON --input values (default {inputs.DEFAULT_DTYPE})")
    p.add_argument("--param", action="append", default=[], metavar="KEY=JSON", help="a provider parameter")
    p.add_argument("--stream", action="store_true",
                   help="print generated text as it comes (Ctrl-C stops the model); with --json, one line per chunk")
    p.add_argument("--full", action="store_true", help="print every value of the output tensors")
    p.set_defaults(run=cmd_infer)
    p = sub.add_parser("watch", parents=[common, as_json], help="follow events until interrupted")
    p.add_argument("--kind", action="append", default=[], help="event kind prefix, e.g. catalog. (repeatable)")
    p.add_argument("--model", default="")
    p.set_defaults(run=cmd_watch)
    p = sub.add_parser("service", help="start warmd and warm-tray at login: install | uninstall | status")
    p.add_argument("action", choices=["install", "uninstall", "status"])
    p.add_argument("--no-enable", action="store_true", help="install, uninstall: only write or remove the files")
    p.add_argument("--no-tray", action="store_true", help="install: the daemon only, no warm-tray at login")
    p.add_argument("--specs", type=Path, help="install: the specs folder the daemon serves (default: the one "
                   "the daemon running now serves, else the default folder)")
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
    p.add_argument("--scope", choices=["read", "infer", "admin"],
                   help="create: read (list, status, watch) < infer (+ run models) < admin (+ everything)")
    p.set_defaults(run=cmd_token)
    return parser


# ---- commands --------------------------------------------------------------------------------
def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    listing = client.list(task=args.task, tag=args.tag, state=args.state, discovered=True)
    if args.json:
        return print_json(listing)
    table = Table("NAME", "STATE", "FILES", "ON DISK", "TASK", "PROVIDER", "DEVICE", "SIZE", "SOURCE", box=None)
    for m in listing.models:
        source = m.source + (f" ({m.files.revision[:12]})" if m.files.revision else "")
        _row(table, m.name, _state(m), m.files.state, format_size(m.files.bytes_on_disk), m.task, m.provider,
             m.residency.device or m.device, _size(m), source)
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
            _row(bad, r.file, str(r.line or ""), r.field, r.code, r.message)
        out.print(bad)
    in_hub = [d for d in listing.discovered if d.source != "ollama"]
    if in_hub:
        out.print("\n[bold]In the Hugging Face cache, no spec[/bold] (`warm add hf://REPO` writes one):")
        found = Table("REPO", "ON DISK", "REVISIONS", box=None)
        for d in in_hub:
            _row(found, d.repo_id, format_size(d.size_on_disk), ", ".join(r[:12] for r in d.revisions))
        out.print(found)
    in_ollama = [d for d in listing.discovered if d.source == "ollama"]
    if in_ollama:
        out.print("\n[bold]In Ollama's store, no spec[/bold] (`warm add ollama://NAME:TAG` writes one):")
        found = Table("NAME", "SIZE", "MANIFEST", box=None)
        for d in in_ollama:
            _row(found, d.repo_id, format_size(d.size_on_disk), d.path)
        out.print(found)
    if not listing.models:
        _hint_empty(client, filtered=bool(args.task or args.tag or args.state))
    return 0


def _hint_empty(client: Client, filtered: bool) -> None:
    """Say why `warm ls` lists nothing: the filters, or an empty specs folder (and where specs go)."""
    status = client.status()
    if filtered and status.models:
        note(f"no model matches the filters ({status.models} in the catalog; `warm ls` lists them all)")
    else:
        note(f"no models: the daemon serves the spec files in {status.specs_dir}; put NAME.yaml files there, "
             "or write one with `warm add hf://ORG/NAME` (`warm service install --specs DIR` picks another folder)")


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    m = client.get(args.name)
    if args.json:
        return print_json(m)
    r = m.residency
    _print_fields([
        ("name", m.name), ("version", m.version), ("description", m.description), ("tags", ", ".join(m.tags)),
        ("task", m.task), ("provider", m.provider), ("source", m.source), ("file", m.file),
        ("signature", m.signature), ("state", _state(m)),
        ("error", f"[{m.error_code}] {m.error}" if m.error_code else m.error),
        ("device", f"{m.device}, {m.precision}"), ("keep alive", _duration(m.keep_alive_s)),
        ("pinned", "yes" if m.pin else "no"), ("preload", "yes" if m.preload else "no"),
        ("inputs", ", ".join(map(_tensor_spec, m.inputs))), ("outputs", ", ".join(map(_tensor_spec, m.outputs))),
        ("files", _files(m.files)),
        ("resident", r.device and (f"on {r.device} (tier {r.tier}), {_size(m)}, loaded {_local_time(r.loaded_at)}"
                                   + (f", {r.in_flight} in flight" if r.in_flight else ""))),
    ])
    if m.downloads:
        out.print(Text("\ndownloads (newest last):", style="bold"))
        table = Table("STARTED", "TOOK", "RESULT", "SIZE", "REVISION", "SOURCE", "MESSAGE", box=None)
        for d in m.downloads:
            result = f"{d.result} [{d.error_code}]" if d.error_code else d.result
            _row(table, _local_time(d.started), _duration(d.finished - d.started) if d.finished else "",
                 result, format_size(d.bytes), d.revision[:12], d.source, output.one_line(d.message))
        out.print(table)
    return 0


def cmd_load(client: Client, args: argparse.Namespace) -> int:
    if args.dry_run:
        if args.keep_alive:
            raise WarmdError(Code.INVALID_ARGUMENT, "--dry-run loads nothing: it does not take --keep-alive")
        return _dry_run(client.plan_load(args.name), args.json)
    try:
        keep_alive = parse_duration(args.keep_alive) if args.keep_alive else None
    except ValueError as exc:
        raise WarmdError(Code.INVALID_ARGUMENT, f"--keep-alive: {exc}") from None
    model = _load(client, args.name, keep_alive, as_json=args.json)
    if args.json:
        return print_json(model)
    say(f"{model.name} ready on {model.residency.device} ({_size(model)})")
    return 0


def _load(client: Client, name: str, keep_alive: float | None = None, as_json: bool = False) -> pb.Model:
    """Load `name` and wait, showing the job's progress on stderr (its events as JSON lines on stdout
    with `as_json`): `warm load` and `warm infer` on a model not loaded yet."""
    if as_json:
        return client.load(name, keep_alive=keep_alive, on_event=print_json)
    with JobProgress(name) as progress:
        return client.load(name, keep_alive=keep_alive, on_event=progress)


def cmd_pull(client: Client, args: argparse.Namespace) -> int:
    if args.json:
        return print_json(client.pull(args.name, on_event=print_json))
    with JobProgress(args.name) as progress:
        model = client.pull(args.name, on_event=progress)
    say(f"{model.name}: {model.files.state}, {format_size(model.files.bytes_on_disk)}"
        + (f", revision {model.files.revision}" if model.files.revision else ""))
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    client.cancel(args.job_id)
    say(f"cancelled {args.job_id}")
    return 0


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    result = client.remove(args.name)
    if args.json:
        return print_json(result)
    say(f"{args.name}: freed {format_size(result.freed_bytes)} ({len(result.removed)} paths)")
    return 0


def cmd_add(client: Client, args: argparse.Namespace) -> int:
    plugin = _plugin_source(args.source)
    if plugin is not None:
        return _add_plugin(client, args, f"{plugin}@{args.revision}" if args.revision else plugin)
    if args.draft or args.accept:
        raise WarmdError(Code.INVALID_ARGUMENT, "--draft and --accept are for plugins from git (git+URL or a "
                         "local repository)")
    result = client.add(args.source, revision=args.revision, name=args.name)
    if args.json:
        return print_json(result)
    say(f"wrote {result.file}: {result.name} ({result.provider}, {result.task}); `warm pull {result.name}` "
        "fetches it")
    return 0


def _add_plugin(client: Client, args: argparse.Namespace, source: str) -> int:
    drafts: list[pb.Event] = []            # the attempts of --draft, each with its diff

    def on_event(event: pb.Event) -> None:
        drafts.extend([event] if event.kind == "plugin.draft" else [])
        _plugin_event(args, event)

    try:
        last = client.install_plugin(source, name=args.name, draft=args.draft, accept=args.accept, on_event=on_event)
    finally:
        if drafts and not args.json:       # the last draft, passed or not, for the user to read
            out.print(Text(drafts[-1].diff), end="")
    if not args.json:        # with --json every event, the last one included, is a line already
        say(last.message if last.kind == "plugin.drafted" else f"installed {last.message}")
    return 0


def cmd_plugins(client: Client, args: argparse.Namespace) -> int:
    if args.action != "ls" and not args.plugin:
        raise WarmdError(Code.INVALID_ARGUMENT, f"warm plugins {args.action} NAME")
    if args.action == "update":
        last = client.update_plugin(args.plugin, on_event=lambda e: _plugin_event(args, e))
        if not args.json:
            say(last.message)
        return 0
    if args.action == "rm":
        removed = client.remove_plugin(args.plugin)
        if args.json:
            return print_json({"removed": removed})
        say(f"removed {args.plugin}: {', '.join(removed)}")
        return 0
    plugins = client.plugins()
    if args.json:
        return print_json(plugins)
    table = Table("NAME", "PROVIDER", "STATE", "SOURCE", "COMMIT", "GATE", "MODELS", box=None)
    for p in plugins:
        gate = f"{p.gate.result} ({p.gate.step}, {p.gate.commit[:12]})" if p.gate.result == "failed" else p.gate.result
        _row(table, p.name, p.provider, p.state, p.source or p.folder, p.commit[:12], gate, ", ".join(p.models))
    out.print(table)
    for p in plugins:
        if p.error:
            say(f"{p.name}: {p.error}")
        elif p.gate.result == "failed":
            say(f"{p.name}: the update to {p.gate.commit[:12]} failed at step {p.gate.step!r}: {p.gate.message}; "
                f"still serving {p.commit[:12]}")
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
        print_json(event)
        sys.stdout.flush()
    elif event.kind == "job.progress":
        note(f"{event.progress.phase}: {event.message}")
    elif event.kind == "plugin.draft":
        note(event.message.splitlines()[0])


def cmd_unload(client: Client, args: argparse.Namespace) -> int:
    model = client.unload(args.name)
    if args.json:
        return print_json(model)
    say(f"{model.name}: {pb.ModelState.Name(model.state).lower()}")
    return 0


def cmd_pin(client: Client, args: argparse.Namespace) -> int:
    model = client.pin(args.name, args.pinned)
    if args.json:
        return print_json(model)
    say(f"{model.name}: {'pinned' if args.pinned else 'unpinned'}")
    return 0


def cmd_profile(client: Client, args: argparse.Namespace) -> int:
    usage = {"list": "warm profile list", "use": "warm profile use NAME", "choose": "warm profile choose ROLE [MODEL]"}
    given = [a for a in (args.profile_name, args.role_model) if a]
    if len(given) > {"list": 0, "use": 1, "choose": 2}[args.action] or (args.action != "list" and not given):
        raise WarmdError(Code.INVALID_ARGUMENT, f"usage: {usage[args.action]}")
    if args.action == "use":
        roles = client.use_profile(args.profile_name)
        active = args.profile_name
    elif args.action == "choose":
        roles, active = [client.choose_role(args.profile_name, args.role_model)], client.list_profiles().active
    else:
        listing = client.list_profiles()
        if args.json:
            return print_json(listing)
        roles, active = list(listing.roles), listing.active
        say(f"profiles: {', '.join(listing.profiles) or 'none'}")
    if args.json:
        return print_json(roles)
    say(f"active: {active}")
    table = Table("ROLE", "MODEL", "CANDIDATES", "PASSED OVER", box=None)
    for r in roles:
        _row(table, r.role, r.model or "(none)", ", ".join(f"{c} (chosen)" if c == r.chosen else c
                                                         for c in r.candidates),
             "; ".join(f"{p.model}: {p.reason}" for p in r.passed_over))
    out.print(table)
    return 0


def cmd_token(client: Client, args: argparse.Namespace) -> int:
    _refuse_ignored(args, {"create": ("revoke_name",), "list": ("revoke_name", "name", "scope"),
                           "revoke": ("scope",)}[args.action])
    if args.action == "create":
        token, info = client.create_token(args.name, args.scope or "read")
        if args.json:
            return print_json({"token": token, "name": info.name, "scope": info.scope})
        print(token)      # alone on stdout, for scripts; the note goes to stderr
        note(f"token {info.name!r} (scope {info.scope}): shown once, the daemon keeps only its hash")
        return 0
    if args.action == "revoke":
        if args.revoke_name and args.name and args.revoke_name != args.name:
            raise WarmdError(Code.INVALID_ARGUMENT, "name the token once: `warm token revoke NAME`")
        client.revoke_token(args.revoke_name or args.name)
        say(f"revoked {args.revoke_name or args.name}")
        return 0
    tokens = client.list_tokens()
    if args.json:
        return print_json(tokens)
    table = Table("NAME", "SCOPE", "CREATED", box=None)
    for t in tokens:
        _row(table, t.name, t.scope, _local_time(t.created))
    out.print(table)
    return 0


def _dry_run(plan: pb.LoadPlan, as_json: bool) -> int:
    if as_json:
        return print_json(plan)
    say(f"{plan.model}: {plan.message}")
    for e in plan.evictions:
        say(f"  {e.action} {e.model} ({format_size(e.bytes)} on {e.device}): {e.message}")
    return 0


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    if args.history:
        return _history(client.evictions(args.model), args.json)
    if args.model:
        raise WarmdError(Code.INVALID_ARGUMENT, "--model picks the entries of `warm ps --history`; add --history")
    resident = client.status().resident
    if args.json:
        return print_json(list(resident))
    table = Table("NAME", "DEVICE", "TIER", "LAYERS", "SIZE", "ESTIMATED", "PINNED", "IN FLIGHT", "LAST USED",
                  "EXPIRES", box=None)
    now = time.time()
    for m in resident:
        r = m.residency
        layers = f"{r.gpu_layers}/{r.total_layers} on GPU" if r.total_layers and is_gpu(r.device) else ""
        # A model served elsewhere (a cluster replica) shows where, not the local placeholder device.
        _row(table, m.name, r.location or r.device, "cluster" if r.location else r.tier, layers,
             format_size(r.measured_bytes), format_size(r.estimated_bytes),
             "yes" if r.pinned else "", str(r.in_flight), f"{now - r.last_used:.0f}s ago",
             "never" if not r.expires_at else f"in {max(0.0, r.expires_at - now):.0f}s")
    out.print(table)
    return 0


def _history(evictions: list[pb.Eviction], as_json: bool) -> int:
    if as_json:
        return print_json(evictions)
    table = Table("TIME", "MODEL", "ACTION", "REASON", "DEVICE", "SIZE", "FOR", "REQ/MIN", "BACK IN", "COST",
                  "WHY", box=None)
    for e in evictions:
        back = f"{e.back_s:.2f}s" + ("" if e.back_measured else " (est.)")
        _row(table, time.strftime("%H:%M:%S", time.localtime(e.time)), e.model, e.action, e.reason, e.device,
             format_size(e.bytes), e.for_model, f"{e.requests_per_min:.2f}", back, f"{e.cost:.2f}", e.message)
    out.print(table)
    return 0


def cmd_infer(client: Client, args: argparse.Namespace) -> int:
    request = inputs.parse(args.text, args.input, args.dtype, args.param)
    if args.full and args.json:
        raise WarmdError(Code.INVALID_ARGUMENT, "--full is for the printed tensors; --json always has every value")
    if args.role and args.name:
        raise WarmdError(Code.INVALID_ARGUMENT, "name a model or pass --role ROLE, not both")
    if args.role:
        choice = client.resolve_role(args.role)
        args.name = choice.model
        note(f"role {args.role} -> {choice.model}" + "".join(
            f"; passed over {p.model}: {p.reason}" for p in choice.passed_over))
    elif not args.name:
        raise WarmdError(Code.INVALID_ARGUMENT, "name a model, or pass --role ROLE")
    if not any(m.name == args.name and m.state == pb.READY for m in client.status().resident):
        try:
            _load(client, args.name)    # its progress on stderr, not seconds of silence
        except WarmdError as err:       # a TCP token that may run models but not load them: the call
            if err.code is not Code.PERMISSION_DENIED:      # below loads it, without a progress display
                raise
    if args.stream:
        return _infer_stream(client, args, request)
    _print_result(args, client.infer(args.name, request.tensors, text=request.text, parameters=request.parameters))
    return 0


def _infer_stream(client: Client, args: argparse.Namespace, request: inputs.Inputs) -> int:
    """Print text as it is generated (JSON lines with --json); the stream ends with the result, printed as
    `warm infer` prints it unless its text came already (a model that does not generate has no text)."""
    streamed = False
    for chunk in client.infer_stream(args.name, request.tensors, text=request.text, parameters=request.parameters):
        if chunk.result is not None:
            if streamed and not args.json:
                print()
            else:
                _print_result(args, chunk.result)
        elif args.json:
            print_json({"text": chunk.text} if chunk.text else {"progress": dict(zip(("done", "total", "unit"),
                                                                                        chunk.progress or ()))})
        elif chunk.text:
            print(chunk.text, end="", flush=True)
            streamed = True
        elif chunk.progress:
            note(f"{args.name}: {chunk.progress[0]}/{chunk.progress[1]} {chunk.progress[2]}")
    return 0


def _print_result(args: argparse.Namespace, result: InferResult) -> None:
    if args.json:
        print_json({"model": args.name,
                    "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "data": v.tolist()}
                                for k, v in result.outputs.items()},
                    "json": result.json, "signature": to_data(result.signature)})
        return
    for name, value in result.outputs.items():
        out.print(Text.assemble((name, "bold"), f" {value.dtype} {list(value.shape)}"))
        print(output.format_tensor(value, full=args.full))
    if result.json is not None:
        print(json.dumps(result.json, indent=2))


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    events = client.watch(kinds=args.kind, model=args.model)
    note(f"watching {client.target} (Ctrl-C stops)")
    for event in events:
        if args.json:
            print_json(event)
            continue
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        extra = " ".join(x for x in (event.reason and f"({event.reason})", event.error_code and
                                     f"[{event.error_code}]", event.message, event.eviction.message) if x)
        say(f"{stamp} {event.kind:<17} {event.model or event.file} {extra}")
        sys.stdout.flush()
    # The daemon ends a watch only when it stops (a crash shows as an error from the stream instead).
    raise WarmdError(Code.UNAVAILABLE, f"warmd at {client.target} closed the stream: it stopped or is restarting; "
                     "run `warm watch` again once it is back (`warm status` tells)")


def cmd_service(args: argparse.Namespace) -> int:
    from warm import service

    _refuse_ignored(args, {"install": (), "uninstall": ("no_tray", "specs"),
                           "status": ("no_enable", "no_tray", "specs")}[args.action])
    if args.action == "status":
        info = service.status()
        if args.json:
            return print_json(info)
        _print_fields([(key, "unknown" if value is None else str(value)) for key, value in info.items()])
        return 0
    if args.action == "install":
        files, said = service.install(enable=not args.no_enable, tray=not args.no_tray, specs=args.specs)
    else:
        files, said = service.uninstall(enable=not args.no_enable)
    if args.json:
        return print_json({"files": [str(f) for f in files], "result": said})
    say(f"{args.action}: {', '.join(map(str, files)) or 'nothing to remove'}: {said}")
    return 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    status = client.status()
    if args.json:
        return print_json(status)
    _print_fields([
        ("version", status.version), ("pid", str(status.pid)),
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
        ("jobs", ", ".join(f"{j.kind} {j.model} {j.id} {_fraction(j.progress)}" for j in status.jobs) or "none")])
    devices = Table("DEVICE", "TOTAL", "BUDGET", "USED", "FREE", box=None)
    for d in status.devices:
        _row(devices, d.name + (" (simulated)" if d.simulated else ""), format_size(d.total),
             format_size(d.budget), format_size(d.used), format_size(d.free) if d.free >= 0 else "")
    out.print(devices)
    return 0


# ---- helpers ---------------------------------------------------------------------------------
def _refuse_ignored(args: argparse.Namespace, ignored: tuple[str, ...]) -> None:
    """Options this action would ignore are an error, not silence."""
    given = [f"--{name.replace('_', '-')}" if name != "revoke_name" else "NAME" for name in ignored
             if getattr(args, name, None)]
    if given:
        raise WarmdError(Code.INVALID_ARGUMENT, f"`warm {args.command} {args.action}` does not take {', '.join(given)}")


def _print_fields(rows: list[tuple[str, str]]) -> None:
    """`key  value` lines, keys right-aligned; empty values left out. Values are text, never markup."""
    rows = [(k, v) for k, v in rows if v]
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        out.print(Text.assemble((key.rjust(width), "bold"), "  ", output.one_line(value)))


def _row(table: Table, *cells: str) -> None:
    """A table row of text: `[spec_invalid]` in a cell shows, it is not a style tag."""
    table.add_row(*(escape(c) for c in cells))


def _state(m: pb.Model) -> str:
    state = pb.ModelState.Name(m.state).lower()
    return f"{state} [{m.error_code}]" if m.error_code else state


def _size(m: pb.Model) -> str:
    r = m.residency
    return format_size(r.measured_bytes or r.estimated_bytes) if (r.measured_bytes or r.estimated_bytes) else ""


def _files(f: pb.Files) -> str:
    total = f" of {format_size(f.bytes_total)}" if f.bytes_total and f.bytes_total != f.bytes_on_disk else ""
    revision = f", revision {f.revision}" if f.revision else ""
    return f"{f.state}, {format_size(f.bytes_on_disk)}{total} on disk{revision}"


def _tensor_spec(t: pb.TensorSpec) -> str:
    return f"{t.name} {t.dtype} {list(t.shape)}"


def _duration(seconds: float) -> str:
    """`forever`, `0s`, `90s`, `10m`, `2h`, `1.5s`: how long, the way specs write it."""
    if seconds < 0:
        return "forever"
    for unit, scale in (("h", 3600), ("m", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{seconds / scale:.0f}{unit}"
    return f"{seconds:.0f}s" if seconds >= 10 or seconds == int(seconds) else f"{seconds:.1f}s"


def _local_time(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix)) if unix else ""


def _fraction(p: pb.Progress) -> str:
    """`12.0 MiB/26.0 MiB` for bytes, `3/10 steps` otherwise."""
    if p.unit == "bytes":
        return f"{format_size(p.done)}/{format_size(p.total)}" if p.total else format_size(p.done)
    return f"{p.done}/{p.total} {p.unit}" if p.total else ""


if __name__ == "__main__":
    sys.exit(main())
