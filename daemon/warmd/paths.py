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


def default_plugins_dir() -> Path:
    """Provider plugins: the only folder the daemon imports code from besides installed packages."""
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "plugins"


def default_profiles_dir() -> Path:
    """Profiles: named sets of role -> preferred models (`warm profile use NAME`)."""
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "profiles"


def default_log_dir() -> Path:
    return Path(platformdirs.user_log_dir(APP, appauthor=False))


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def read_or_empty(path: Path | str) -> str:
    """A small text file's stripped content (a pid, a sysfs value), or "" when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` with `text` all at once: readers see the old content or the new, never a torn file.

    Raises:
        WarmdError: `insufficient_disk` when the disk is full (the old file stays as it was).
    """
    import errno
    import os

    from warmd.errors import Code, WarmdError

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise WarmdError(Code.INSUFFICIENT_DISK, f"the disk holding {path.parent} is full; {path.name} was "
                             "not written (its previous version is intact). Free some space and retry") from None
        raise
