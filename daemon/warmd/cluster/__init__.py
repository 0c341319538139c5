"""Cluster mode: the same specs served from a Ray Serve cluster (`pip install 'warmd[cluster]'`).

Rooms: `replica` (the Serve deployment: its multiplexed loader is warmd's own spec parsing, store and
providers; the registry of which replica holds which model), `routing` (its request router), `admin`
(`warmd cluster deploy | status | delete`), `front` (the provider through which a local daemon serves
cluster-placed specs). Rules held here:

- Ray is imported only when a cluster is used: this module and `front` import nothing of it at import
  time; `replica` and `admin` are imported only by cluster commands and cluster loads.
- Where a spec runs is decided once, by `Placement` (the spec's `placement:`, else the daemon's
  `placement` setting); a spec placed on the cluster is served locally through the `cluster` provider,
  with its name as Ray Serve's multiplexed model id. `placement: cluster` in a daemon without
  `cluster: ADDR` is refused, never quietly run here.
- Residency on the cluster is Ray's: each replica keeps an LRU of at most `--models-per-replica` models
  and requests go to a replica that holds their model. The local scheduler counts a cluster model as
  0 bytes on no local device.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

from warmd.errors import Code, WarmdError
from warmd.spec import ModelSpec, Source, SpecFileError

APP = "warmd"                 # the Serve application
DEPLOYMENT = "WarmdModels"    # its one deployment
NAMESPACE = "warmd"           # Ray namespace of the drivers and of the registry actor
REGISTRY = "warmd-registry"   # the detached actor replicas report their models to
PROVIDER = "cluster"          # the local provider that serves a cluster-placed spec

_connected: str | None = None
_connect_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the daemon runs each spec: `address` is the `cluster` setting ("" = no cluster), `default`
    the `placement` setting for specs that do not say."""

    address: str = ""
    default: str = "local"

    def __call__(self, spec: ModelSpec) -> ModelSpec:
        """The spec as this daemon serves it: unchanged when local; when placed on the cluster, a spec of
        the `cluster` provider (no local files, no local device) with the same name, declared tensors,
        admission limits, keep_alive and metadata.

        Raises:
            SpecFileError: `placement: cluster` in a daemon without a cluster.
        """
        if (spec.placement or self.default) != "cluster":
            return spec
        if not self.address:
            raise SpecFileError(spec.file, "placement: cluster, but this daemon has no cluster; set "
                                "`cluster: ADDRESS` in its config (the Ray address) or remove `placement`",
                                field="placement", code=Code.UNSUPPORTED_PROVIDER)
        return dataclasses.replace(spec, provider=PROVIDER, source=Source(PROVIDER, self.address, model=spec.name),
                                   device="cpu", memory=None)


def connect(address: str, working_dir: Path | None = None) -> None:
    """Join the Ray cluster at `address` as a driver, once per process; with `working_dir`, a folder that
    goes to every actor this driver starts (what `deploy` ships the specs with).

    Raises:
        WarmdError: `unsupported_provider` without Ray installed; `unavailable` when the cluster does not
            answer, or when this process already joined another one.
    """
    global _connected
    with _connect_lock:
        if _connected == address:
            return
        if _connected is not None:
            raise WarmdError(Code.UNAVAILABLE, f"this process is connected to the Ray cluster {_connected}, "
                             f"not {address}; one daemon serves one cluster")
        ray = import_ray()
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING",
                     configure_logging=False,
                     runtime_env={"working_dir": str(working_dir)} if working_dir is not None else None)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise WarmdError(Code.UNAVAILABLE, f"the Ray cluster at {address} does not answer ({exc}); start it "
                             "(`ray start --head`) or fix `cluster` / --address") from None
        _connected = address
        # Serve's INFO lines ("Started Serve", "Connecting to existing Serve app") are not this program's output.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)


def import_ray():  # type: ignore[no-untyped-def]
    """`ray`, or `unsupported_provider` saying how to install it."""
    try:
        import ray
        from ray import serve  # noqa: F401 - Serve is what cluster mode needs
    except ImportError:
        raise WarmdError(Code.UNSUPPORTED_PROVIDER, "cluster mode needs Ray Serve: pip install 'warmd[cluster]'") \
            from None
    return ray
