"""Where things live by default. Shared by the daemon and its clients, so both agree without talking."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import platformdirs

APP = "warmd"


def runtime_dir() -> Path:
    """The per-user runtime folder holding the socket (`$XDG_RUNTIME_DIR/warmd` on Linux).

    When the platform's runtime folder does not exist (no login session, a container), a per-user
    folder in the temp dir is used, as tmux and ssh-agent do.
    """
    base = Path(platformdirs.user_runtime_dir(APP, appauthor=False))
    if base.parent.is_dir():
        return base
    return Path(tempfile.gettempdir()) / f"{APP}-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


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
