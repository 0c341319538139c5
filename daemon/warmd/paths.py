"""Where things live by default. Shared by the daemon and its clients, so both agree without talking."""
from __future__ import annotations

import warnings
from pathlib import Path

import platformdirs

APP = "warmd"


def runtime_dir() -> Path:
    """The per-user runtime folder holding the socket (`$XDG_RUNTIME_DIR/warmd` on Linux).

    Without XDG_RUNTIME_DIR (no login session, a container) platformdirs falls back to a per-user
    folder in /tmp, as tmux and ssh-agent do; that is expected, so its warning is not repeated.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir(APP, appauthor=False))


def default_socket() -> Path:
    return runtime_dir() / "warmd.sock"


def default_token_file() -> Path:
    """The bearer token for TCP clients: written by the daemon (0600), read by local clients."""
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "token"


def default_config_file() -> Path:
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "config.yaml"


def default_specs_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "specs"


def default_log_dir() -> Path:
    return Path(platformdirs.user_log_dir(APP, appauthor=False))


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP, appauthor=False))
