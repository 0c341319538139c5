"""Hugging Face Hub sources in the standard cache layout, so transformers and sentence-transformers
find what warmd fetched (and warmd finds what they fetched):

    $HF_HUB_CACHE/models--org--name/blobs/<etag>                 the content (etag = sha256 for LFS files,
    $HF_HUB_CACHE/models--org--name/snapshots/<commit>/<path>    git blob sha1 otherwise) -> ../../blobs/<etag>
    $HF_HUB_CACHE/models--org--name/refs/<revision>              the commit a branch or tag resolved to

Listing and revision lookups go through huggingface_hub's HfApi (honouring HF_ENDPOINT, HF_TOKEN, proxies);
file bodies go through store.fetch for resume across daemon restarts, which huggingface_hub does not do.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from warmd.errors import Code, WarmdError
from warmd.paths import write_atomic
from warmd.spec import Source
from warmd.store.fetch import OFFLINE_HINT, Digest, part_path


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    digest: Digest

    @property
    def etag(self) -> str:
        return self.digest.value


def cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub read it at import: the user's standard way to stay offline."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def repo_dir(repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_root() / repo_folder_name(repo_id=repo_id, repo_type="model")


def endpoint() -> str:
    """The hub warmd talks to: HF_ENDPOINT as huggingface_hub read it, by default https://huggingface.co."""
    from huggingface_hub import constants

    return constants.ENDPOINT


@contextlib.contextmanager
def asking(repo: str, revision: str) -> Iterator[None]:
    """Around a hub API call: its failures as stable codes naming the hub (HF_ENDPOINT) that was asked.

    Raises:
        WarmdError: `unavailable` when the hub cannot be reached or answers with a server error;
            `invalid_argument` for a repository or revision it does not have (or hides: private, gated).
    """
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    # The HTTP library's own base error (httpx's, or httpx2's in huggingface_hub 2) covers connect errors,
    # timeouts and unresolvable names; HfHubHTTPError derives from it and from OSError.
    transport = (OSError, *HfHubHTTPError.__bases__)
    try:
        yield
    except RevisionNotFoundError:
        raise WarmdError(Code.INVALID_ARGUMENT, f"the hub at {endpoint()} has no revision {revision!r} of "
                         f"{repo}; name a branch, tag or commit it has") from None
    except RepositoryNotFoundError:
        raise WarmdError(Code.INVALID_ARGUMENT, f"the hub at {endpoint()} has no repository {repo} (or it is "
                         "private or gated: log in with `hf auth login` or set HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise WarmdError(Code.UNAVAILABLE, f"the hub at {endpoint()} failed the request for {repo} ({first}); "
                         "retry later") from None
    except transport as exc:
        raise WarmdError(Code.UNAVAILABLE, f"cannot reach the Hugging Face Hub at {endpoint()} for {repo} "
                         f"({type(exc).__name__}: {exc}); {OFFLINE_HINT}") from None


def resolve_commit(src: Source) -> str:
    """Ask the hub which commit `src.revision` is now (a commit hash resolves to itself)."""
    from huggingface_hub import HfApi

    with asking(src.ref, src.revision):
        return HfApi().model_info(src.ref, revision=src.revision).sha  # type: ignore[return-value]


def list_files(src: Source, commit: str) -> list[RemoteFile]:
    """The repo's files at `commit` that the spec's allow/ignore patterns select, with sizes and digests."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    with asking(src.ref, commit):
        entries = [e for e in HfApi().list_repo_tree(src.ref, revision=commit, recursive=True)
                   if isinstance(e, RepoFile)]
    chosen = set(filter_repo_objects([e.path for e in entries],
                                     allow_patterns=list(src.allow_patterns) or None,
                                     ignore_patterns=list(src.ignore_patterns) or None))
    files = [RemoteFile(e.path, e.size,
                        Digest("sha256", e.lfs.sha256) if e.lfs else Digest("git-sha1", e.blob_id))
             for e in entries if e.path in chosen]
    for f in files:
        _check_names(src, commit, f)
    return files


_HEX = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def _check_names(src: Source, commit: str, f: RemoteFile) -> None:
    """A hub's answer becomes paths in the cache: a commit, a digest and a file path that could climb out
    of it ("../../.bashrc") are refused before anything is written."""
    parts = PurePosixPath(f.path).parts
    unsafe = (not parts or f.path.startswith("/") or "\\" in f.path or any(p in ("..", ".") for p in parts)
              or not _HEX.match(commit) or not _HEX.match(f.etag))
    if unsafe:
        raise WarmdError(Code.UNAVAILABLE, f"{src.describe()}: the hub listed an unsafe name (commit {commit!r}, "
                         f"file {f.path!r}, digest {f.etag!r}); nothing was written. Is HF_ENDPOINT a real hub?")


def file_url(src: Source, commit: str, path: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(src.ref, path, revision=commit)


def auth_headers() -> dict[str, str]:
    """The user's standard HF token (HF_TOKEN or the token file), if any."""
    from huggingface_hub.utils import build_hf_headers

    return dict(build_hf_headers())


def blob_path(src: Source, f: RemoteFile) -> Path:
    return repo_dir(src.ref) / "blobs" / f.etag


def has_blob(src: Source, f: RemoteFile) -> bool:
    """The blob is there with its full size (a torn file after a power loss is not)."""
    try:
        return blob_path(src, f).stat().st_size == f.size
    except OSError:
        return False


def install(src: Source, commit: str, f: RemoteFile) -> None:
    """Link a verified blob into the commit's snapshot (relative symlink, as huggingface_hub does)."""
    link = repo_dir(src.ref) / "snapshots" / commit / f.path
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob_path(src, f), link.parent)
    if link.is_symlink() or link.exists():
        if os.readlink(link) == target if link.is_symlink() else False:
            return
        link.unlink()
    link.symlink_to(target)


def record_ref(src: Source, commit: str) -> None:
    if src.revision == commit:
        return
    ref = repo_dir(src.ref) / "refs" / src.revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(ref, commit)


def cached_commit(src: Source) -> str | None:
    """The commit the cache last resolved `src.revision` to, without the network."""
    if len(src.revision) == 40 and all(c in "0123456789abcdef" for c in src.revision):
        return src.revision
    ref = repo_dir(src.ref) / "refs" / src.revision
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def bytes_on_disk(src: Source, files: list[RemoteFile]) -> tuple[int, int]:
    """(complete bytes, partial bytes) of these files in the cache."""
    done = partial = 0
    for f in files:
        blob = blob_path(src, f)
        if has_blob(src, f):
            done += f.size
        elif part_path(blob).exists():
            partial += part_path(blob).stat().st_size
    return done, partial


def snapshot_blobs(snapshot: Path) -> set[Path]:
    """The blobs a snapshot's links point to."""
    return {p.resolve() for p in snapshot.rglob("*") if p.is_symlink()}


def remove(src: Source, commit: str, keep_commits: set[str]) -> tuple[int, list[Path]]:
    """Delete the snapshot of `commit` and every blob no other snapshot links to.

    Args:
        keep_commits: commits other specs use; refusing them is the caller's job, this never deletes them.
    Returns:
        (bytes freed, paths deleted).
    """
    import shutil

    root = repo_dir(src.ref)
    snapshot = root / "snapshots" / commit
    others = [p for p in (root / "snapshots").iterdir() if p.name != commit] if (root / "snapshots").is_dir() else []
    shared = set().union(*(snapshot_blobs(p) for p in others)) if others else set()
    freed, removed = 0, []
    for blob in sorted(snapshot_blobs(snapshot) - shared) if snapshot.is_dir() else []:
        if blob.is_file() and blob.parent == (root / "blobs").resolve():
            freed += blob.stat().st_size
            blob.unlink()
            removed.append(blob)
    # partial blobs are not attributable to a revision; they go only when no other snapshot is left
    for part in (root / "blobs").glob("*.part") if (root / "blobs").is_dir() and not others else []:
        freed += part.stat().st_size
        part.unlink()
        removed.append(part)
    if snapshot.is_dir():
        shutil.rmtree(snapshot)
        removed.append(snapshot)
    for ref in (root / "refs").iterdir() if (root / "refs").is_dir() else []:
        if ref.read_text().strip() == commit and commit not in keep_commits:
            ref.unlink()
            removed.append(ref)
    return freed, removed


def discover(named: set[str]) -> list[dict]:
    """Models in the Hugging Face cache that no spec names: repo, revisions, size on disk."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_root())
    except CacheNotFound:
        return []
    return [{"repo_id": r.repo_id, "revisions": sorted(rev.commit_hash for rev in r.revisions),
             "size_on_disk": r.size_on_disk, "path": str(r.repo_path)}
            for r in sorted(info.repos, key=lambda r: r.repo_id)
            if r.repo_type == "model" and r.repo_id not in named]


# library_name on the hub -> (provider, default task)
_LIBRARIES = {"sentence-transformers": ("sentence-transformers", "feature-extraction")}


def suggest_spec(repo_id: str, revision: str) -> dict:
    """A spec for a hub repo from its metadata (library name, pipeline tag, config architectures).

    Raises:
        WarmdError: `unsupported_provider` when no installed provider runs the repo's library.
    """
    from huggingface_hub import HfApi

    from warmd.providers.transformers import TASKS    # transformers repos: the pipelines that provider runs

    with asking(repo_id, revision):
        info = HfApi().model_info(repo_id, revision=revision)
    library = info.library_name or ""
    if library not in _LIBRARIES and "sentence-transformers" in (info.tags or []):
        library = "sentence-transformers"
    if library == "transformers" and info.pipeline_tag in TASKS:
        provider, task = "transformers", info.pipeline_tag
    elif library in _LIBRARIES:
        provider, task = _LIBRARIES[library]
    else:
        raise WarmdError(Code.UNSUPPORTED_PROVIDER, f"{repo_id} is a {library or 'unknown-library'} model "
                         f"(pipeline {info.pipeline_tag or 'unknown'}); installed providers run sentence-"
                         f"transformers repos and transformers repos for {', '.join(TASKS)}. "
                         "Write its spec by hand with a torch factory.")
    architectures = (info.config or {}).get("architectures") or []
    description = f"{repo_id}" + (f" ({', '.join(architectures)})" if architectures else "")
    return {"description": description, "task": info.pipeline_tag if info.pipeline_tag == task else task,
            "tags": [library], "source": {"hf": repo_id, "revision": revision}, "provider": provider}
