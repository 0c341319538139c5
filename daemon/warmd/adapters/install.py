"""`warm add git+URL[@REV]`, `warm plugins update NAME`, `warm plugins rm NAME`.

Rules:
- Sources: git+https://, git+http://, git+ssh://, git+file:// URLs with an optional `@REV` (a branch, a tag
  or a commit), and absolute paths to a git repository. Cloning is the git CLI with every other transport
  refused (`protocol.allow=never`, so ext:: and fd:: never run a command), no prompts, a timeout. An
  offline daemon clones file:// and local sources only (`network_forbidden` otherwise).
- The resolved commit is pinned: the install record names it and its checkout lives in a folder of that name.
- Nothing is installed unless the gate passes: the clone and the virtualenv are staged in
  `<plugins_dir>/.staging/<operation id>` and moved into place only after it; a failure leaves nothing
  behind and says which step failed, with the traceback's last lines.
- Drafting (`--draft`, a repository with no adapter): the `coder` (coder.py) is given the prompt of
  draft.py; each attempt starts from the pinned commit's tree (git checkout and clean), writes the answer's
  files and runs the same gate as any install; a refused attempt's verdict goes back to the coder, at most
  `draft_attempts` times. The last draft is kept (draft.py) with its diff; it is installed only when its
  gate passed: at once with `--accept`, or later by `--accept` alone, which clones its commit, adds its
  files and gates it again. An update of a drafted plugin adds the draft's files to the new commit.
- Install order: the files, the record, the plugins scan (the provider exists), then the example specs
  (the models appear; a spec that cannot be written undoes the install). Update: the same with the new
  commit, the spec files rewritten to point at it, so each model reloads by itself while the old version
  serves (hot reload); a failed gate switches nothing, and the record keeps its verdict. Remove: the specs
  it wrote (their models unload, runners killed), then its folder.
- One operation per plugin at a time (`busy` otherwise). Each is a job of the daemon's registry (jobs.py,
  kind `plugin.install` / `plugin.update`): an id, progress events (`job.progress`, phase = the step,
  `plugin` = its name), cancellation by `CancelJob` or by its caller leaving; it ends with
  `plugin.installed` / `plugin.updated`, or `plugin.failed` and the error.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from warmd.adapters import draft, gate, manifest
from warmd.adapters.coder import Coder
from warmd.adapters.gate import Verdict
from warmd.adapters.record import Record, is_installed, read
from warmd.catalog import Catalog
from warmd.errors import Code, WarmdError, at_boundary
from warmd.jobs import Job, Jobs
from warmd.plugins import Plugins
from warmd.providers import CallContext
from warmd.spec import NAME_PATTERN, ModelSpec, SpecFileError, read_yaml_file
from warmd.store.sources import spec_name

log = logging.getLogger(__name__)
GIT_TIMEOUT_S = 300.0
STAGING = ".staging"
_SCHEMES = ("https", "http", "ssh", "git", "file")
_NETWORK_ERROR = re.compile(r"could not resolve|unable to access|connection (refused|timed out|reset)|"
                            r"network is unreachable|could not read from remote", re.IGNORECASE)


@dataclass(frozen=True)
class GitSource:
    given: str            # as the user wrote it
    url: str              # what git clones
    rev: str              # "" = the default branch

    @property
    def local(self) -> bool:
        return self.url.startswith(("file://", "/"))

    @property
    def default_name(self) -> str:
        """A plugin name from the repository's last path segment (`org/My_Repo.git` -> `my_repo`)."""
        return spec_name(self.url.rstrip("/").removesuffix(".git"))


def parse_source(text: str) -> GitSource:
    """`git+SCHEME://...[@REV]` or an absolute path to a repository `[@REV]`.

    Raises:
        WarmdError: `invalid_argument` for anything else.
    """
    body = text.strip()
    if body.startswith("git+"):
        body = body[4:]
        scheme = body.split("://", 1)[0]
        if "://" not in body or scheme not in _SCHEMES:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{text!r}: use git+https://, git+ssh://, git+http://, "
                             "git+git:// or git+file:// (e.g. git+https://github.com/org/repo@v1.0)")
    elif not body.startswith("/"):
        raise WarmdError(Code.INVALID_ARGUMENT, f"{text!r} is neither git+URL nor an absolute path to a git "
                         "repository (`warm add ./repo` makes a relative path absolute)")
    url, rev = body, ""
    at = body.rfind("@")
    if at > body.rfind("/"):               # an @ in the last segment is a revision; one before it a user
        url, rev = body[:at], body[at + 1:]
        if not rev or rev.startswith("-"):
            raise WarmdError(Code.INVALID_ARGUMENT, f"{text!r}: the revision after @ must name a branch, tag or commit")
    return GitSource(text.strip(), url, rev)


class Refused(WarmdError):
    """The gate refused an adapter; `verdict` says where and why."""

    def __init__(self, code: Code, message: str, verdict: Verdict) -> None:
        super().__init__(code, message)
        self.verdict = verdict


@dataclass
class Work:
    """One install or update under way: its job, the plugin it works on (named by the manifest once the
    clone is read), and the cancellation its gate's runner processes listen to."""

    job: Job
    plugin: str
    context: CallContext = field(default_factory=CallContext)

    @property
    def id(self) -> str:
        return self.job.id


class Installer:
    def __init__(self, plugins_dir: Path, catalog: Catalog, plugins: Plugins, jobs: Jobs,
                 gate_timeout: float, offline: bool, draft_attempts: int = 3) -> None:
        self.folder, self.catalog, self.plugins, self.jobs = plugins_dir, catalog, plugins, jobs
        self.bus = jobs.bus
        self.gate_timeout, self.offline, self.draft_attempts = gate_timeout, offline, draft_attempts
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    # ---- the operations ------------------------------------------------------------------------
    def install(self, source: str, name: str = "", coder: Coder | None = None,
                accept: bool = False) -> tuple[Job, Future]:
        """Start installing `source`.

        Args:
            coder: draft an adapter with it (`--draft`); installed only with `accept` once a draft passed.
            accept: without a coder, install the kept draft of `source` (which passed its gate).
        Returns:
            Its job (follow it by id) and a future of what it says when it is done.
        Raises:
            WarmdError: `invalid_argument` for a malformed source or name, or `accept` with no passed draft
                of it; `network_forbidden` for a network source while offline.
        """
        parsed = self._source(source)
        if name and not NAME_PATTERN.match(name):
            raise WarmdError(Code.INVALID_ARGUMENT, f"{name!r} is not a plugin name: lowercase letters, digits, "
                             ". _ -, at most 64")
        kept = draft.kept(self.folder, name or parsed.default_name, parsed.url) if accept and coder is None else None
        return self._start("install", name or parsed.default_name,
                           lambda work: self._install(work, parsed, name, coder, accept, kept))

    def update(self, name: str) -> tuple[Job, Future]:
        """Start updating installed plugin `name` to its source's newest commit (see `install`).

        Raises:
            WarmdError: `invalid_argument` when no plugin of that name was installed from git.
        """
        record = self._record(name)
        return self._start("update", name, lambda work: self._update(work, record))

    def _start(self, kind: str, plugin: str, run: Callable[[Work], str]) -> tuple[Job, Future]:
        """Run `run` on a thread as a job, ending with `plugin.failed` whatever stopped it, so that a
        watcher (warm-tray) hears of it."""
        work, future = Work(self.jobs.start(f"plugin.{kind}", ""), plugin), Future()
        work.job.on_cancel(work.context.cancel)

        def main() -> None:
            try:
                future.set_result(run(work))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever follows the job
                err = at_boundary(exc, Code.INTERNAL, f"plugin {kind} of {work.plugin!r}", log)
                self._event(work, "plugin.failed", err.message, err.code)
                future.set_exception(err)
            finally:
                self.jobs.finish(work.job)
        threading.Thread(target=main, name=f"plugin-{kind}", daemon=True).start()
        return work.job, future

    def check_folder(self, folder: Path, name: str, workdir: Path, op: Work) -> Verdict:
        """Gate the adapter in `folder` for operation `op`, reporting each step (see gate.py). The one entry
        for any folder: a clone, or a clone with a drafted adapter."""
        return gate.check_folder(folder, name, workdir, self.gate_timeout, self.offline,
                                 lambda step, message: self._progress(op, step, message), op.context)

    def remove(self, name: str) -> list[str]:
        """Remove plugin `name`: the spec files it wrote (their models unload), then its folder.

        Returns:
            The paths deleted.
        Raises:
            WarmdError: `invalid_argument` for a name no git install has; `busy` while it installs or updates.
        """
        record = self._record(name)
        with self._claimed(name):
            removed = [str(p) for p in self._own_specs(record)]
            for path in removed:
                Path(path).unlink()
            self.catalog.rescan()
            shutil.rmtree(record.folder)
            removed.append(str(record.folder))
            self.plugins.scan()
        self.bus.publish("plugin.removed", plugin=name, message=f"removed {len(removed) - 1} spec(s) and {record.folder}")
        return removed

    def updating(self) -> set[str]:
        with self._lock:
            return set(self._busy)

    # ---- install -------------------------------------------------------------------------------
    def _install(self, op: Work, source: GitSource, name: str, coder: Coder | None, accept: bool,
                 kept: draft.Kept | None) -> str:
        with self._staged(op) as staging:
            checkout = staging / "checkout"
            commit = self._clone(op, GitSource(source.given, source.url, kept.commit) if kept else source, checkout)
            name = name or _manifest_name(checkout, source.default_name)
            op.plugin = name
            if (self.folder / name).exists():
                raise WarmdError(Code.INVALID_ARGUMENT, f"a plugin named {name!r} is installed; `warm plugins update "
                                 f"{name}` fetches its newest commit, or pass --name")
            with self._claimed(name):
                drafted: list[str] = []
                if coder is not None:
                    attempt = self._draft(op, source, checkout, name, staging, commit, coder)
                    if not accept:
                        said = f"a draft for {name} passed the gate at attempt {attempt.attempt}; `warm add " \
                               f"{source.given} --accept` installs it"
                        self._event(op, "plugin.drafted", said, diff=attempt.diff())
                        return said
                    verdict, drafted = attempt.verdict, sorted(attempt.files)    # the gate just passed on these
                else:
                    if kept is not None:
                        draft.write(draft.Draft(kept.files), checkout)
                        drafted = sorted(kept.files)
                    verdict = self._gated(op, checkout, name, staging, commit)
                assert verdict is not None
                self._check_free(verdict)
                record = Record(name=name, source=source.given, url=source.url, rev=source.rev, commit=commit,
                                provider=verdict.provider["name"], batchable=verdict.provider["batchable"],
                                adapter=str(verdict.manifest.adapter.relative_to(checkout.resolve())),  # type: ignore[union-attr]
                                class_name=verdict.manifest.class_name,  # type: ignore[union-attr]
                                venv=verdict.environment is not None, specs=[f"{s.name}.yaml" for s in verdict.specs],
                                gate=verdict.summary(commit), drafted=drafted, folder=self.folder / name)
                record.folder.mkdir(parents=True)
                try:
                    self._place(record, staging, commit)
                    record.write()
                    self.plugins.scan()
                    for spec in verdict.specs:
                        self._write_spec(record, checkout, spec)
                except BaseException:
                    self._undo(record)
                    raise
        said = f"{name} at commit {commit[:12]}: model(s) {', '.join(s.name for s in verdict.specs)} " \
               f"(provider {record.provider})"
        self._event(op, "plugin.installed", said)
        return said

    def _draft(self, op: Work, source: GitSource, checkout: Path, name: str, staging: Path, commit: str,
               coder: Coder) -> draft.Draft:
        """Ask `coder` for an adapter until one passes the gate, at most `draft_attempts` times; keep the last
        draft. Returns the passing one.

        Raises:
            Refused: no draft passed (the last one's verdict).
        """
        if any((checkout / f).exists() for f in (manifest.MANIFEST, manifest.ADAPTER)):
            raise WarmdError(Code.INVALID_ARGUMENT, f"{source.url} has an adapter already ({manifest.MANIFEST} or "
                             f"{manifest.ADAPTER}); `warm add {source.given}` without --draft gates it")
        messages = [{"role": "system", "content": draft.SYSTEM},
                    {"role": "user", "content": draft.prompt(checkout, name)}]
        for number in range(1, self.draft_attempts + 1):
            said = f"attempt {number} of {self.draft_attempts}"
            self._progress(op, "draft", f"{said}: asking {coder.name}")
            answer = coder.ask(messages, op.context)
            for args in (["checkout", "--quiet", "--force", commit], ["clean", "-q", "-f", "-d", "-x"]):
                _git(["-C", str(checkout), *args], source)        # each attempt starts from the commit's tree
            attempt = draft.parse(answer, checkout)
            attempt.attempt = number
            draft.write(attempt, checkout)
            attempt.verdict = verdict = self.check_folder(checkout, name, staging, op)
            self._event(op, "plugin.draft", f"{said}: " + ("passed the gate" if verdict.passed else verdict.explain()),
                        diff=attempt.diff())
            if verdict.passed or op.context.cancelled.is_set():
                break
            messages = messages[:2] + [{"role": "assistant", "content": answer},
                                       {"role": "user", "content": draft.feedback(attempt)}]
        draft.keep(self.folder, name, draft.Kept(source.given, source.url, commit, coder.name, attempt.files,
                                                 verdict.passed, verdict.step, verdict.message, attempt.diff()))
        if not verdict.passed:
            raise Refused(Code.CANCELLED if op.context.cancelled.is_set() else Code.PROVIDER_FAILED,
                          f"{name} (commit {commit[:12]}): no draft by {coder.name} passed the gate in {number} "
                          f"attempt(s); the last: {verdict.explain()}", verdict)
        return attempt

    def _clone(self, op: Work, source: GitSource, dest: Path) -> str:
        self._progress(op, "clone", f"cloning {source.url}" + (f" at {source.rev}" if source.rev else ""))
        return clone(source, dest, self.offline)

    def _gated(self, op: Work, checkout: Path, name: str, staging: Path, commit: str) -> Verdict:
        verdict = self.check_folder(checkout, name, staging, op)
        if not verdict.passed:
            raise Refused(Code.CANCELLED if op.context.cancelled.is_set() else Code.PROVIDER_FAILED,
                          f"{name} (commit {commit[:12]}): {verdict.explain()}", verdict)
        return verdict

    def _check_free(self, verdict: Verdict) -> None:
        """The provider's and the models' names must be free (refused before anything is installed)."""
        provider = verdict.provider["name"]
        if provider in self.catalog.providers:
            raise WarmdError(Code.INVALID_ARGUMENT, f"the adapter's provider is named {provider!r}, which is "
                             "taken (built in or another plugin's); rename it in the adapter")
        for spec in verdict.specs:
            self.catalog.check_free(spec.name)

    def _place(self, record: Record, staging: Path, commit: str) -> None:
        checkout = staging / "checkout"
        shutil.rmtree(checkout / ".git", ignore_errors=True)
        checkout.rename(record.code_dir(commit))
        if record.venv:
            (staging / "venv").rename(record.venv_dir(commit))

    def _write_spec(self, record: Record, checkout: Path, spec: ModelSpec) -> None:
        """An example spec into the specs folder, its `path:` pointing into the installed checkout (the
        staged `checkout` the gate read has been moved there)."""
        staged = checkout.resolve()
        try:
            _, data = read_yaml_file(record.code_dir() / spec.file.relative_to(staged))
        except SpecFileError as err:
            raise WarmdError(Code.SPEC_INVALID, str(err)) from None
        body = {k: v for k, v in data.items() if k != "name"}
        body["source"] = {**data["source"], "path": str(record.code_dir() / Path(spec.source.ref).relative_to(staged))}
        self.catalog.write_spec(spec.name, body, note=f"installed with plugin {record.name} from {record.source} "
                                f"(commit {record.commit[:12]}); `warm plugins rm {record.name}` removes it")

    def _undo(self, record: Record) -> None:
        for path in self._own_specs(record):
            path.unlink()
        self.catalog.rescan()
        shutil.rmtree(record.folder, ignore_errors=True)
        self.plugins.scan()

    # ---- update --------------------------------------------------------------------------------
    def _update(self, op: Work, old: Record) -> str:
        source = GitSource(old.source, old.url, old.rev)
        with self._claimed(old.name), self._staged(op) as staging:
            checkout = staging / "checkout"
            commit = self._clone(op, source, checkout)
            self._redraft(old, checkout)
            if commit == old.commit:
                said = f"{old.name} is at commit {commit[:12]} already, the newest of {old.url}" + \
                    (f" at {old.rev}" if old.rev else "")
                self._event(op, "plugin.updated", said)
                return said
            try:
                verdict = self._gated(op, checkout, old.name, staging, commit)
            except Refused as err:
                old.gate = err.verdict.summary(commit)      # the old commit serves on; `ls` shows why
                old.write()
                self.plugins.scan()
                raise
            if verdict.provider["name"] != old.provider:
                raise WarmdError(Code.INVALID_ARGUMENT, f"commit {commit[:12]} renames the provider {old.provider!r} "
                                 f"to {verdict.provider['name']!r}; `warm plugins rm {old.name}` and add it again")
            new = Record(**{**vars(old), "commit": commit, "previous": old.commit, "gate": verdict.summary(commit),
                            "adapter": str(verdict.manifest.adapter.relative_to(checkout.resolve())),  # type: ignore[union-attr]
                            "class_name": verdict.manifest.class_name,  # type: ignore[union-attr]
                            "venv": verdict.environment is not None, "installed": time.time(),
                            "specs": [f"{s.name}.yaml" for s in verdict.specs]})
            self._place(new, staging, commit)
            new.write()
            self.plugins.scan()
            self._switch_specs(old, new, checkout, verdict.specs)
            self._prune(new)
        said = f"{old.name}: commit {old.commit[:12]} -> {commit[:12]}; its models reload while the old version serves"
        self._event(op, "plugin.updated", said)
        return said

    def _redraft(self, record: Record, checkout: Path) -> None:
        """A drafted plugin's files onto a new commit (those the commit does not have itself)."""
        for path in record.drafted:
            if not (checkout / path).exists():
                (checkout / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(record.code_dir() / path, checkout / path)

    def _switch_specs(self, old: Record, new: Record, checkout: Path, specs: list[ModelSpec]) -> None:
        """Point the plugin's spec files at the new commit (keeping the user's edits); write the new
        examples' specs, remove those of examples that are gone."""
        mine = {p.name: p for p in self._own_specs(old)}
        for spec in specs:
            path = mine.pop(f"{spec.name}.yaml", None)
            if path is None:
                self._write_spec(new, checkout, spec)
            else:
                text = path.read_text(encoding="utf-8").replace(str(old.code_dir()), str(new.code_dir()))
                self.catalog.replace_spec(path, text.replace(old.commit[:12], new.commit[:12]))
        for path in mine.values():
            path.unlink()
        self.catalog.rescan()

    def _prune(self, record: Record) -> None:
        """Keep the new commit's folders and the previous one's (a model may still drain from it)."""
        keep = {record.commit, record.previous, f"{record.commit}.venv", f"{record.previous}.venv"}
        for child in record.folder.iterdir():
            if child.is_dir() and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)

    # ---- helpers -------------------------------------------------------------------------------
    def _source(self, source: str) -> GitSource:
        parsed = parse_source(source)
        if self.offline and not parsed.local:
            raise WarmdError(Code.NETWORK_FORBIDDEN, f"the daemon is offline; cloning {parsed.url} needs the "
                             "network (file:// and local repositories work offline)")
        return parsed

    def _record(self, name: str) -> Record:
        folder = self.folder / name
        if not NAME_PATTERN.match(name) or not folder.is_dir():
            raise WarmdError(Code.INVALID_ARGUMENT, f"no plugin named {name!r}; `warm plugins ls` lists them")
        if not is_installed(folder):
            raise WarmdError(Code.INVALID_ARGUMENT, f"{name!r} is a folder plugin (its adapter.py is yours, not "
                             f"installed from git); delete {folder} to remove it")
        try:
            return read(folder)
        except ValueError as exc:
            raise WarmdError(Code.INVALID_ARGUMENT, str(exc)) from None

    def _own_specs(self, record: Record) -> list[Path]:
        """The recorded spec files that still point into the plugin's folder (the user may have repointed one)."""
        found = []
        for file in record.specs:
            path = self.catalog.root / file
            try:
                if str(record.folder) in path.read_text(encoding="utf-8"):
                    found.append(path)
            except OSError:
                continue
        return found

    @contextlib.contextmanager
    def _claimed(self, name: str) -> Iterator[None]:
        with self._lock:
            if name in self._busy:
                raise WarmdError(Code.BUSY, f"plugin {name!r} is being installed or updated; retry when that finishes")
            self._busy.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(name)

    @contextlib.contextmanager
    def _staged(self, op: Work) -> Iterator[Path]:
        staging = self.folder / STAGING / op.id
        staging.mkdir(parents=True)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _progress(self, op: Work, step: str, message: str) -> None:
        steps = ("clone", "draft", *gate.STEPS)
        op.job.progress(step, steps.index(step), len(steps), message=message, plugin=op.plugin)

    def _event(self, op: Work, kind: str, message: str, code: Code | None = None, diff: str = "") -> None:
        op.job.publish(kind, plugin=op.plugin, message=message, error_code=code.value if code else "", diff=diff)


def _manifest_name(checkout: Path, default: str) -> str:
    """The plugin's name as its manifest gives it (a broken manifest is the gate's to report)."""
    try:
        return manifest.read(checkout, default).name
    except WarmdError:
        return default


def clone(source: GitSource, dest: Path, offline: bool) -> str:
    """Clone `source` into `dest` and check out its revision, detached. Returns the commit.

    Raises:
        WarmdError: `invalid_argument` (no such repository or revision), `unavailable` (git missing, the
            host unreachable), `network_forbidden` (offline).
    """
    allowed = ("file",) if offline else _SCHEMES
    config = ["-c", "protocol.allow=never", *(a for s in allowed for a in ("-c", f"protocol.{s}.allow=always"))]
    _git([*config, "clone", "--quiet", "--no-checkout", "--", source.url, str(dest)], source)
    rev = source.rev or "HEAD"
    commit = ""
    for candidate in (rev, f"origin/{rev}"):
        out = _git(["-C", str(dest), "rev-parse", "--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}"],
                   source, check=False)
        if out:
            commit = out.strip()
            break
    if not commit:
        raise WarmdError(Code.INVALID_ARGUMENT, f"{source.url} has no branch, tag or commit {rev!r}")
    _git(["-C", str(dest), "checkout", "--quiet", "--detach", commit], source)
    return commit


def _git(args: list[str], source: GitSource, check: bool = True) -> str:
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes", "GIT_ASKPASS": "true"}
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env={**os.environ, **env})
    except FileNotFoundError:
        raise WarmdError(Code.UNAVAILABLE, "git is not installed on this machine; install it (e.g. apt-get "
                         "install git) to add plugins from a repository") from None
    except subprocess.TimeoutExpired:
        raise WarmdError(Code.UNAVAILABLE, f"git did not finish with {source.url} within {GIT_TIMEOUT_S:.0f} s") from None
    if done.returncode == 0 or not check:
        return done.stdout if done.returncode == 0 else ""
    said = " ".join(done.stderr.split())[-500:] or f"git exited with status {done.returncode}"
    if _NETWORK_ERROR.search(said) and not source.local:
        raise WarmdError(Code.UNAVAILABLE, f"cannot reach {source.url}: {said} (warmd serve --offline keeps "
                         "everything on this machine)")
    raise WarmdError(Code.INVALID_ARGUMENT, f"cannot clone {source.url}: {said}")
