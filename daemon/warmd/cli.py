"""`warmd`: run the daemon (`warmd serve`) or check spec files (`warmd validate`)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from warmd import __version__
from warmd.errors import WarmdError


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
    args = parser.parse_args(argv)
    try:
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


def _nothing_to_check(path: Path) -> str:
    if path.is_dir():
        return "has no spec files (*.yaml, *.yml)"
    return "is not a spec file (*.yaml, *.yml)" if path.exists() else "does not exist"


if __name__ == "__main__":
    sys.exit(main())
