"""Daemon settings: one object, from defaults < config file < WARMD_* environment < command line."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmd import paths
from warmd.errors import Code, WarmdError
from warmd.spec import did_you_mean
from warmd.units import parse_duration, parse_size


@dataclass
class Settings:
    """Everything the daemon can be told. Each field is also a config-file key and a WARMD_<KEY> variable."""

    specs_dir: Path = field(default_factory=paths.default_specs_dir)
    plugins_dir: Path = field(default_factory=paths.default_plugins_dir)
    profiles_dir: Path = field(default_factory=paths.default_profiles_dir)
    socket: Path = field(default_factory=paths.default_socket)
    # "HOST:PORT"; empty = no TCP listener. Loopback only unless tcp_allow_remote.
    tcp: str = ""
    tcp_allow_remote: bool = False
    # The HTTP front (OpenAI, Ollama and Anthropic dialects): "HOST:PORT", or "unix:PATH" (a socket only this
    # user can open); empty = off. Loopback only unless http_allow_remote. Needs the `http` extra.
    http: str = ""
    http_allow_remote: bool = False
    # The scope a loopback HTTP caller without a token gets ("" none, read, infer): for clients that cannot send
    # a key. Any program (and any user) on this machine then has it; see README, HTTP.
    http_anonymous: str = ""
    # "HOST:PORT" of a Prometheus metrics endpoint (plain HTTP, no token: loopback only); empty = off.
    metrics: str = ""
    token_file: Path = field(default_factory=paths.default_token_file)
    log_dir: Path = field(default_factory=paths.default_log_dir)
    log_level: str = "info"
    # Downloaded url sources and daemon state (hub files go to the standard Hugging Face cache).
    data_dir: Path = field(default_factory=paths.default_data_dir)
    config_file: Path | None = None
    # Absolute `path:` sources must lie under one of these (relative ones under their spec's folder).
    path_roots: list[Path] = field(default_factory=lambda: [Path.home()])
    # Seconds an idle model stays resident by default (-1 forever, 0 unload when idle).
    keep_alive: float = 300.0
    # The most a request or a load may ask for as keep_alive (-1: no cap); pinned models never expire.
    max_keep_alive: float = -1.0
    # How victims are chosen when a load needs room: `cost` (what losing each costs) or `lru`.
    eviction: str = "cost"
    # Seconds SIGTERM waits for in-flight requests before unloading anyway.
    drain_timeout: float = 10.0
    # Seconds the catalog waits for a burst of file events to settle.
    reload_debounce: float = 0.25
    # Downloads: `auto` fetches missing files on first use; `never` only on `warm pull`.
    downloads: str = "auto"
    # Offline: nothing leaves the machine; a needed download is `network_forbidden`.
    offline: bool = False
    # Seconds a download connection may stay silent before it is dropped and resumed.
    download_timeout: float = 30.0
    # Seconds the gate of a plugin from git may take to import, load and run its examples.
    gate_timeout: float = 300.0
    # How many drafts the coder may write for `warm add --draft`, each gated, before it gives up.
    draft_attempts: int = 3
    # Memory budgets: a fraction of the device's memory (0 < x <= 1) or bytes.
    cpu_budget: float = 0.5
    gpu_budget: float = 0.9
    # Host memory for models parked after eviction from a GPU (0 turns the host tier off).
    host_tier_budget: float = 0.25
    # Bytes of GPU memory left free for other programs; below it, idle models are evicted.
    gpu_reserve: int = 512 * 1024 * 1024
    # Sizes of simulated GPUs (accounted as cuda:N, tensors kept in host memory): try policies without one.
    simulated_gpus: list[int] = field(default_factory=list)
    max_message_bytes: int = 64 * 1024 * 1024
    # Worker threads for gRPC calls that may wait (loads, streams, slow models); quick calls run on the loop.
    rpc_threads: int = 32
    # The Ray cluster (`ray start --head` address, or ray://HOST:PORT) whose `warmd cluster deploy`ed
    # application serves the specs placed there; empty = no cluster.
    cluster: str = ""
    # Where specs without their own `placement:` run: local, or cluster (every spec).
    placement: str = "local"
    # Threads one call of a model on the CPU may use (torch's intra-op threads: OMP_NUM_THREADS and
    # MKL_NUM_THREADS, unless set in the environment); 0 = the CPUs / 4, at least 1, so that a model's
    # default max_in_flight (4) calls share the CPUs instead of each spreading over all of them.
    cpu_threads: int = 0

    def threads_per_call(self) -> int:
        return self.cpu_threads or max(1, (os.cpu_count() or 1) // 4)

    @property
    def log_file(self) -> Path:
        return self.log_dir / "warmd.log"


_PATHS = {"specs_dir", "plugins_dir", "profiles_dir", "socket", "token_file", "log_dir", "config_file", "data_dir"}


def _coerce(name: str, value: Any) -> Any:
    """Turn a config-file or environment value into the field's type, or raise spec-like errors."""
    if name in _PATHS:
        return Path(os.path.expanduser(str(value))).absolute()
    if name == "path_roots":
        items = value.split(os.pathsep) if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError("expected a list of folders")
        return [Path(os.path.expanduser(str(p))).absolute() for p in items if str(p)]
    if name == "downloads":
        if value not in ("auto", "never"):
            raise ValueError(f"downloads must be auto or never, not {value!r}")
        return value
    if name == "placement":
        if value not in ("local", "cluster"):
            raise ValueError(f"placement must be local or cluster, not {value!r}")
        return value
    if name == "eviction":
        if value not in ("cost", "lru"):
            raise ValueError(f"eviction must be cost or lru, not {value!r}")
        return value
    if name == "http_anonymous":
        if value not in ("", "read", "infer"):
            raise ValueError(f"http_anonymous must be empty, read or infer, not {value!r}")
        return value
    if name in ("tcp_allow_remote", "http_allow_remote", "offline"):
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if name in ("keep_alive", "max_keep_alive", "drain_timeout", "reload_debounce", "download_timeout",
                "gate_timeout"):
        return parse_duration(value)
    if name in ("rpc_threads", "cpu_threads"):
        number = int(value)
        if number < 0:
            raise ValueError(f"must be 0 or more, not {value!r}")
        return number
    if name == "draft_attempts":
        if int(value) < 1 or int(value) > 20:
            raise ValueError(f"draft_attempts must be 1 to 20, not {value!r}")
        return int(value)
    if name in ("cpu_budget", "gpu_budget", "host_tier_budget"):
        return _budget(value)
    if name in ("gpu_reserve", "max_message_bytes"):
        return parse_size(value)
    if name == "simulated_gpus":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError("simulated_gpus must be a list of sizes")
        return [parse_size(v) for v in items if str(v).strip()]
    return str(value)


def _budget(value: Any) -> float:
    """0.5 or "50%" (a fraction of the device) or "12GiB" / bytes."""
    text = str(value).strip()
    if text in ("0", "0.0", "off"):
        return 0.0
    if text.endswith("%"):
        return float(text[:-1]) / 100
    try:
        number = float(text)
    except ValueError:
        return float(parse_size(text))
    if number <= 0:
        raise ValueError(f"a budget must be positive, not {value!r}")
    return number


def load_settings(config_file: Path | None = None, env: dict[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Build the settings.

    Args:
        config_file: a YAML file of settings; default: the user config dir's config.yaml if present.
        env: the environment to read WARMD_* from (default: os.environ).
        overrides: command-line values; None means "not given".
    Returns:
        The settings.
    Raises:
        WarmdError: `invalid_argument` for an unreadable config file, an unknown key or a bad value.
    """
    env = os.environ if env is None else env
    names = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    chosen = config_file or (Path(env["WARMD_CONFIG"]) if env.get("WARMD_CONFIG") else None)
    if chosen is None and paths.default_config_file().is_file():
        chosen = paths.default_config_file()
    if chosen is not None:
        values.update(_read_config_file(chosen, names))
        values["config_file"] = chosen

    for name in names:
        key = f"WARMD_{name.upper()}"
        if env.get(key):
            values[name] = env[key]
    values.update({k: v for k, v in overrides.items() if v is not None})

    unknown = set(values) - names
    if unknown:
        raise WarmdError(Code.INVALID_ARGUMENT, f"unknown setting(s): {', '.join(sorted(unknown))}")
    try:
        coerced = {k: _coerce(k, v) for k, v in values.items()}
    except (TypeError, ValueError) as exc:
        raise WarmdError(Code.INVALID_ARGUMENT, f"bad setting: {exc}") from None
    if coerced.get("placement") == "cluster" and not coerced.get("cluster"):
        raise WarmdError(Code.INVALID_ARGUMENT, "placement: cluster needs `cluster: ADDRESS` (the Ray cluster)")
    return Settings(**coerced)


def _read_config_file(path: Path, names: set[str]) -> dict[str, Any]:
    import yaml       # only when there is a config file: a start without one does not need it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise WarmdError(Code.INVALID_ARGUMENT, f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise WarmdError(Code.INVALID_ARGUMENT, f"config file {path} must be a mapping of settings")
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        named = ", ".join(f"{k!r}{did_you_mean(k, names)}" for k in unknown)
        raise WarmdError(Code.INVALID_ARGUMENT,
                         f"config file {path}: unknown key(s) {named}; known: {', '.join(sorted(names))}")
    return data
