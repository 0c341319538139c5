"""`warmd`: run the daemon (`warmd serve`), check spec files (`warmd validate`), or run the specs on a Ray Serve
cluster (`warmd cluster deploy | status | delete`, warmd.cluster)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from warmd import __version__
from warmd.errors import Code, WarmdError


def main(argv: list[str] | None = None) -> int:
    # gRPC's C core would log transport events at INFO on stderr, beside (and unlike) the daemon's own log.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = argparse.ArgumentParser(prog="warmd", description="Keep models warm and serve them.")
    parser.add_argument("--version", action="version", version=f"warmd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--specs", type=Path, help="the specs folder (default: config dir/specs)")
    serve.add_argument("--socket", type=Path, help="the Unix socket (default: $XDG_RUNTIME_DIR/warmd/warmd.sock)")
    serve.add_argument("--tcp", help="also listen on HOST:PORT (loopback; clients need the token file)")
    serve.add_argument("--config", type=Path, help="a YAML config file (default: config dir/config.yaml)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--offline", action="store_true", default=None,
                       help="never use the network: a needed download fails with network_forbidden")
    validate = sub.add_parser("validate", help="check spec files without a daemon")
    validate.add_argument("paths", nargs="+", type=Path)
    _cluster_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "cluster":
            return _cluster(args)
        return _serve(args) if args.command == "serve" else _validate(args.paths)
    except WarmdError as err:
        print(f"warmd: error: {err}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace) -> int:
    from warmd.config import load_settings
    from warmd.server import Daemon, setup_logging

    os.umask(0o077)   # everything the daemon creates is the user's alone
    settings = load_settings(args.config, specs_dir=args.specs, socket=args.socket, tcp=args.tcp,
                             log_level=args.log_level, offline=args.offline)
    setup_logging(settings)
    daemon = Daemon(settings)
    status = daemon.run()
    if daemon.drain.running():
        # A call still inside a provider that never looks at its cancellation (a huge embedding batch) runs
        # on an RPC thread Python would wait for at exit. The drain is over and everything is cleaned up.
        logging.shutdown()
        os._exit(status)
    return status


def _validate(paths: list[Path]) -> int:
    from warmd.catalog import is_spec_file
    from warmd.config import load_settings
    from warmd.providers import PROVIDERS
    from warmd.spec import SpecFileError, parse_spec_file

    settings = load_settings()
    files, failed = [], 0
    for p in paths:
        found = [f for f in sorted(p.iterdir()) if is_spec_file(f)] if p.is_dir() else [p] if is_spec_file(p) else []
        if not found:        # a path that checks nothing is a mistake to say, not a quiet success
            failed += 1
            print(f"error {p}: {_nothing_to_check(p)}")
        files += found
    for f in files:
        try:
            spec = parse_spec_file(f, f.parent, settings.path_roots, PROVIDERS)
            print(f"ok    {f}: {spec.name} ({spec.provider}, {spec.source.describe()})")
        except SpecFileError as err:
            failed += 1
            print(f"error {err} [{err.code.value}]")
    return 1 if failed else 0


def _cluster_parser(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="the warmd application on a Ray Serve cluster: deploy | status | delete")
    actions = cluster.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", help="the Ray cluster (default: the config's `cluster` setting)")
    common.add_argument("--config", type=Path, help="a YAML config file (default: config dir/config.yaml)")
    deploy = actions.add_parser("deploy", parents=[common], help="deploy a specs folder (replaces an earlier deploy)")
    deploy.add_argument("--specs", type=Path, required=True, help="the specs folder the replicas serve")
    deploy.add_argument("--replicas", type=int, default=1)
    deploy.add_argument("--models-per-replica", type=int, default=3,
                        help="models each replica keeps loaded (Ray's LRU evicts beyond it)")
    deploy.add_argument("--gpus-per-replica", type=float, default=0.0,
                        help="GPUs Ray gives each replica (0: the replicas see no GPU)")
    status = actions.add_parser("status", parents=[common], help="the application and which replica holds which model")
    status.add_argument("--json", action="store_true")
    actions.add_parser("delete", parents=[common], help="delete the application and its models")


def _cluster(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from warmd.cluster import admin
    from warmd.config import load_settings

    settings = load_settings(args.config)
    address = args.address or settings.cluster
    if not address:
        raise WarmdError(Code.INVALID_ARGUMENT, "which cluster? pass --address (the Ray address) or set `cluster` "
                         "in warmd's config")
    if args.action == "deploy":
        done = admin.deploy(address, args.specs, args.replicas, args.models_per_replica, args.gpus_per_replica,
                            settings.path_roots)
        print(f"deployed {len(done.models)} model(s) to {address}: {done.replicas} replica(s), up to "
              f"{done.models_per_replica} model(s) each ({', '.join(done.models)})")
    elif args.action == "status":
        state = admin.status(address)
        if args.json:
            print(json.dumps(dataclasses.asdict(state)))
        else:
            print(f"{address}: {state.state}" + (f" ({state.message})" if state.message else ""))
            for replica, entry in sorted(state.replicas.items()):
                held = ", ".join(f"{m} (loaded {entry['loads'][m]}x)" for m in entry["models"]) or "no model"
                print(f"  replica {replica} node {entry['node'][:8]} pid {entry['pid']}: {held}")
    else:
        print("deleted" if admin.delete(address) else f"no warmd application on {address}; nothing to delete")
    return 0


def _nothing_to_check(path: Path) -> str:
    if path.is_dir():
        return "has no spec files (*.yaml, *.yml)"
    return "is not a spec file (*.yaml, *.yml)" if path.exists() else "does not exist"


if __name__ == "__main__":
    sys.exit(main())
