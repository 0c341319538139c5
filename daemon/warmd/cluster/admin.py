"""`warmd cluster deploy | status | delete`: the warmd application on a Ray Serve cluster.

- deploy: every spec file of the folder is checked first, as `warmd validate` does; one that fails refuses
  the deploy and nothing changes on the cluster. Then the folder travels to the replicas (the deploying
  driver's runtime_env working_dir, which its deployments inherit), Serve starts without HTTP proxies (the
  front talks through deployment handles), and the application replaces any earlier deploy of it; deploy
  returns once every replica is running.
- status: the application's state, and per live replica its node, pid, the models it holds (with the
  device each is on) and how many times it loaded each (from the registry).
- delete: the application and its registry go; the cluster's models with them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmd import cluster
from warmd.errors import Code, WarmdError


@dataclass
class Deployed:
    """What `deploy` put on the cluster."""

    address: str
    models: list[str]
    replicas: int
    models_per_replica: int


@dataclass
class Status:
    """The application's state on the cluster, and its live replicas (see Registry)."""

    address: str
    state: str                                  # RUNNING, DEPLOYING, ..., or NOT_DEPLOYED
    message: str = ""
    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)


def deploy(address: str, specs_dir: Path, replicas: int, models_per_replica: int, gpus_per_replica: float,
           path_roots: list[Path]) -> Deployed:
    """Deploy the specs folder as the warmd application.

    Raises:
        WarmdError: `spec_invalid` (or the file's own code) naming every file that fails validation;
            `invalid_argument` for counts out of range; `unavailable` when the cluster does not answer or
            the application does not come up.
    """
    if replicas < 1 or models_per_replica < 1 or gpus_per_replica < 0:
        raise WarmdError(Code.INVALID_ARGUMENT, "--replicas and --models-per-replica must be at least 1, "
                         "--gpus-per-replica at least 0")
    specs = _checked_specs(specs_dir, path_roots)
    cluster.connect(address, working_dir=specs_dir.resolve())
    from ray import serve

    from warmd.cluster import replica

    serve.start(proxy_location="Disabled")
    app = replica.application(replicas, models_per_replica, gpus_per_replica, path_roots)
    try:
        serve.run(app, name=cluster.APP, route_prefix=None)
    except RuntimeError as exc:
        raise WarmdError(Code.UNAVAILABLE, f"the warmd application did not start on {address}: {exc}") from None
    return Deployed(address, specs, replicas, models_per_replica)


def status(address: str) -> Status:
    """The application's state and its replicas (NOT_DEPLOYED when there is none)."""
    cluster.connect(address)
    import ray
    from ray import serve

    app = serve.status().applications.get(cluster.APP)
    if app is None:
        return Status(address, "NOT_DEPLOYED", "no warmd application; `warmd cluster deploy` one")
    from warmd.cluster.replica import registry

    return Status(address, str(app.status.value if hasattr(app.status, "value") else app.status), app.message,
                  ray.get(registry().snapshot.remote(), timeout=30))


def delete(address: str) -> bool:
    """Delete the application and its registry. Returns whether there was one."""
    cluster.connect(address)
    import ray
    from ray import serve

    existed = cluster.APP in serve.status().applications
    serve.delete(cluster.APP)
    try:
        ray.kill(ray.get_actor(cluster.REGISTRY, namespace=cluster.NAMESPACE))
    except ValueError:
        pass                        # never created, or gone already
    return existed


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`warmd cluster deploy | status | delete` on warmd's command line."""
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


def command(args: argparse.Namespace) -> int:
    """Run one `warmd cluster` command; its result on stdout.

    Raises:
        WarmdError: as deploy, status and delete; `invalid_argument` when no cluster is named.
    """
    from warmd.config import load_settings

    settings = load_settings(args.config)
    address = args.address or settings.cluster
    if not address:
        raise WarmdError(Code.INVALID_ARGUMENT, "which cluster? pass --address (the Ray address) or set `cluster` "
                         "in warmd's config")
    if args.action == "deploy":
        done = deploy(address, args.specs, args.replicas, args.models_per_replica, args.gpus_per_replica,
                            settings.path_roots)
        print(f"deployed {len(done.models)} model(s) to {address}: {done.replicas} replica(s), up to "
              f"{done.models_per_replica} model(s) each ({', '.join(done.models)})")
    elif args.action == "status":
        state = status(address)
        if args.json:
            print(json.dumps(dataclasses.asdict(state)))
        else:
            print(f"{address}: {state.state}" + (f" ({state.message})" if state.message else ""))
            for replica, entry in sorted(state.replicas.items()):
                held = ", ".join(f"{m} ({entry['devices'][m]}, loaded {entry['loads'][m]}x)"
                                 for m in entry["models"]) or "no model"
                print(f"  replica {replica} node {entry['node'][:8]} pid {entry['pid']}: {held}")
    else:
        print("deleted" if delete(address) else f"no warmd application on {address}; nothing to delete")
    return 0


def _checked_specs(specs_dir: Path, path_roots: list[Path]) -> list[str]:
    """The model names the folder defines; every failing file refuses the deploy."""
    from warmd.catalog import is_spec_file
    from warmd.providers import PROVIDERS
    from warmd.spec import SpecFileError, parse_spec_file

    if not specs_dir.is_dir():
        raise WarmdError(Code.INVALID_ARGUMENT, f"the specs folder {specs_dir} does not exist")
    names, problems = [], []
    for f in sorted(specs_dir.iterdir()):
        if not is_spec_file(f):
            continue
        try:
            name = parse_spec_file(f, specs_dir, [*path_roots, specs_dir], PROVIDERS).name
        except SpecFileError as err:
            problems.append(f"{err} [{err.code.value}]")
            continue
        if name in names:
            problems.append(f"{f}: model name {name!r} is defined twice [spec_invalid]")
        names.append(name)
    if problems:
        raise WarmdError(Code.SPEC_INVALID, "nothing deployed; fix these spec files first: " + "; ".join(problems))
    if not names:
        raise WarmdError(Code.INVALID_ARGUMENT, f"the specs folder {specs_dir} has no spec files (*.yaml, *.yml)")
    return names
