"""Roles and profiles: apps ask for a role ("embedder", "chat"), not a model name.

A profile is a file `<profiles_dir>/<name>.yaml` mapping roles to ordered preferences with requirements:

    roles:
      embedder:
        prefer: [bge-small, minilm]     # the first that is available and fits wins
        task: feature-extraction        # optional: models of another task are passed over
        max_memory: 1GiB                # optional: models estimated above it are passed over
      chat:
        prefer: [qwen-7b, qwen-1.5b]
      coder:                            # drafts adapters (`warm add git+URL --draft`)
        prefer: [qwen-coder]
        endpoint:                       # optional: when no preferred model qualifies, an OpenAI-compatible
          url: http://127.0.0.1:8080/v1 #   server (POST {url}/chat/completions); a role may have only this
          model: qwen2.5-coder
          token_env: CODER_TOKEN        # optional: the environment variable holding its bearer token

A role's `endpoint` is a fallback only callers that can talk to it use (the drafting of adapters); for
everything else the role resolves to a model warmd serves, or fails as it would without it.

`warm profile use NAME` makes it the active profile (kept in the data folder, so it survives restarts),
loads each role's chosen model and unloads the models the previous profile chose that the new one does not.
`warm profile choose ROLE MODEL` (or a pick in warm-tray) puts one of a role's candidates ahead of the
profile's order, per profile and kept across restarts, for as long as it qualifies.
Files are read on every call: an edit takes effect at the next resolution.
"""
from __future__ import annotations

import dataclasses
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from warmd.catalog import Catalog
from warmd.errors import Code, WarmdError
from warmd.paths import write_atomic
from warmd.scheduler import Scheduler
from warmd.spec import did_you_mean
from warmd.store import Store
from warmd.store.sources import handler
from warmd.units import format_size, parse_size

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RULE_KEYS = ("prefer", "task", "max_memory", "endpoint")
_ENDPOINT_KEYS = ("url", "model", "token_env")


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server a role falls back to: `url` is its API base (…/v1)."""

    url: str
    model: str
    token_env: str = ""
DEFAULT = "default"


@dataclass(frozen=True)
class Choice:
    role: str
    model: str                                                 # "" when nothing qualifies
    passed_over: list[tuple[str, str]] = field(default_factory=list)   # (model, why)
    candidates: list[str] = field(default_factory=list)        # the role's `prefer` list
    chosen: str = ""                                           # the user's pick, if any
    endpoint: Endpoint | None = None                           # the fallback, when no model qualifies


class Profiles:
    def __init__(self, folder: Path, state_file: Path, picks_file: Path, catalog: Catalog, scheduler: Scheduler,
                 store: Store) -> None:
        self.folder, self.state_file, self.picks_file = folder, state_file, picks_file
        self.catalog, self.scheduler, self.store = catalog, scheduler, store
        self._picks_lock = threading.Lock()        # picks are read, changed and written back whole

    # ---- reading -------------------------------------------------------------------------------
    def active(self) -> str:
        try:
            return self.state_file.read_text().strip() or DEFAULT
        except OSError:
            return DEFAULT

    def picks(self, profile: str) -> dict[str, str]:
        """The user's picks in `profile`: role -> model."""
        try:
            picks = json.loads(self.picks_file.read_text()).get(profile, {})
        except (OSError, ValueError, AttributeError):
            return {}
        return {str(k): str(v) for k, v in picks.items()} if isinstance(picks, dict) else {}

    def names(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.folder.glob("*.yaml") if _NAME.match(p.stem))
        except OSError:
            return []

    def roles(self, profile: str) -> dict[str, dict]:
        """The profile's roles, validated.

        Raises:
            WarmdError: `invalid_argument` naming the file and what is wrong; `model_not_found`-like
                `invalid_argument` for an unknown profile.
        """
        if not _NAME.match(profile):
            raise WarmdError(Code.INVALID_ARGUMENT, f"profile name {profile!r}: letters, digits, . _ -")
        import yaml       # only when there is a profile to read

        path = self.folder / f"{profile}.yaml"
        if not path.is_file():
            if profile == DEFAULT:
                return {}
            raise WarmdError(Code.INVALID_ARGUMENT, f"no profile {profile!r}: create {path} "
                             f"(profiles: {', '.join(self.names()) or 'none'})")
        try:
            body = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            roles = body.get("roles", {}) if isinstance(body, dict) else None
            if not isinstance(roles, dict):
                raise ValueError("the top level must be a mapping with `roles:`")
            _known_keys(body, ("roles",), "at the top level")      # a typo must not mean "no roles"
            for role, rule in roles.items():
                if not isinstance(rule, dict) or not isinstance(rule.get("prefer", []), list) or not (
                        rule.get("prefer") or "endpoint" in rule):
                    raise ValueError(f"role {role!r} needs `prefer: [model, ...]` (or an `endpoint:`)")
                _known_keys(rule, _RULE_KEYS, f"in role {role!r}")
                if "max_memory" in rule:
                    rule["max_memory"] = parse_size(rule["max_memory"])
                if "endpoint" in rule:
                    rule["endpoint"] = _endpoint(role, rule["endpoint"])
            return roles
        except (yaml.YAMLError, ValueError, UnicodeDecodeError) as exc:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{path}: {exc}") from None

    # ---- choosing ------------------------------------------------------------------------------
    def resolve(self, role: str, profile: str = "", endpoint: bool = False) -> Choice:
        """The model that plays `role` in the profile (default: the active one), and why others did not.

        Args:
            endpoint: the caller can use the role's `endpoint`: when no model qualifies, the choice has
                no model and that endpoint.
        Raises:
            WarmdError: `invalid_argument` for an unknown role or profile; `unavailable` when no
                preferred model qualifies (the message lists why each was passed over).
        """
        profile = profile or self.active()
        rule = self._rule(profile, role)
        choice = self._choose(role, rule, self.picks(profile).get(role, ""))
        if not choice.model and endpoint and "endpoint" in rule:
            return dataclasses.replace(choice, endpoint=rule["endpoint"])
        if not choice.model:
            why = "; ".join(f"{m}: {r}" for m, r in choice.passed_over)
            raise WarmdError(Code.UNAVAILABLE, f"no model can play {role!r} in profile {profile!r}: {why}")
        return choice

    def _rule(self, profile: str, role: str) -> dict:
        rules = self.roles(profile)
        if role not in rules:
            raise WarmdError(Code.INVALID_ARGUMENT, f"profile {profile!r} has no role {role!r} "
                             f"(roles: {', '.join(rules) or 'none'})")
        return rules[role]

    def _choose(self, role: str, rule: dict, pick: str = "") -> Choice:
        candidates = [str(name) for name in rule.get("prefer", [])]
        pick = pick if pick in candidates else ""
        passed: list[tuple[str, str]] = []
        for name in ([pick] if pick else []) + [c for c in candidates if c != pick]:
            why = self._disqualified(name, rule)
            if why is None:
                return Choice(role, name, passed, candidates, pick)
            passed.append((name, why))
        return Choice(role, "", passed, candidates, pick)

    def _disqualified(self, name: str, rule: dict) -> str | None:
        spec = self.catalog.get(name)
        if spec is None:
            return "not in the catalog"
        if rule.get("task") and spec.task != rule["task"]:
            return f"task {spec.task}, the role needs {rule['task']}"
        view = self.scheduler.view(name)
        if view.state == "failed" and view.error is not None:
            return f"its last load failed [{view.error.code.value}]"
        if view.resident is not None:
            need = view.resident.bytes
        else:
            try:
                files = self.store.local(spec)
            except WarmdError as err:
                if not handler(spec.source).downloadable:
                    return f"files not available [{err.code.value}]"
                files = None      # downloadable: its size is known only afterwards, unless the spec says
            cls = self.scheduler.providers.get(spec.provider)
            need = spec.memory if spec.memory is not None else (
                cls.estimate(spec, files) if cls is not None and files is not None else 0)
        if "max_memory" in rule and need > rule["max_memory"]:
            return f"needs {format_size(need)}, over the role's {format_size(rule['max_memory'])}"
        if view.resident is None and need > self.scheduler.room_for(spec, need):
            return f"needs {format_size(need)}, more than its device can make room for (pinned models stay)"
        return None

    # ---- switching -----------------------------------------------------------------------------
    def use(self, profile: str) -> list[Choice]:
        """Make `profile` active: load each role's model, unload what only the previous profile chose.

        Returns:
            The choice for every role (a role with no qualifying model has model "").
        """
        new_rules = self.roles(profile)                   # validates before anything changes
        old = self.active()
        try:
            old_models = {c.model for c in self.choices(old)}
        except WarmdError:
            old_models = set()
        picks = self.picks(profile)
        choices = [self._choose(role, rule, picks.get(role, "")) for role, rule in new_rules.items()]
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_file, profile + "\n")
        chosen = {c.model for c in choices if c.model}
        for model in sorted(old_models - chosen - {""}):
            self.scheduler.unload(model, reason="profile")
        for model in sorted(chosen):
            self.scheduler.start_load(model, reason="profile")
        return choices

    def choose(self, role: str, model: str) -> Choice:
        """Make `model` play `role` in the active profile from now on and start loading it; "" clears the pick.

        Raises:
            WarmdError: `invalid_argument` for an unknown role or a model that is not one of its candidates;
                `unavailable` when the model cannot play it now (the reason is in the message).
        """
        profile = self.active()
        rule = self._rule(profile, role)
        candidates = [str(name) for name in rule.get("prefer", [])]
        if model and model not in candidates:
            raise WarmdError(Code.INVALID_ARGUMENT, f"{model!r} is not a candidate for {role!r} in profile "
                             f"{profile!r} (candidates: {', '.join(candidates)}); add it to the role's `prefer`")
        why = self._disqualified(model, rule) if model else None
        if why is not None:
            raise WarmdError(Code.UNAVAILABLE, f"{model!r} cannot play {role!r} now: {why}")
        self._save_pick(profile, role, model)
        choice = self._choose(role, rule, model)
        if choice.model:
            self.scheduler.start_load(choice.model, reason="role")
        return choice

    def _save_pick(self, profile: str, role: str, model: str) -> None:
        with self._picks_lock:
            try:
                everything = json.loads(self.picks_file.read_text())
                everything = everything if isinstance(everything, dict) else {}
            except (OSError, ValueError):
                everything = {}
            picks = everything.setdefault(profile, {})
            if model:
                picks[role] = model
            else:
                picks.pop(role, None)
            self.picks_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.picks_file, json.dumps(everything, indent=1, sort_keys=True))

    def choices(self, profile: str) -> list[Choice]:
        picks = self.picks(profile)
        return [self._choose(role, rule, picks.get(role, "")) for role, rule in self.roles(profile).items()]


def _known_keys(mapping: dict, known: tuple[str, ...], where: str) -> None:
    """Refuse a key a profile does not know (it would be ignored without a word), naming the nearest."""
    for key in mapping:
        if key not in known:
            raise ValueError(f"unknown key {key!r} {where}{did_you_mean(key, known)}; known: {', '.join(known)}")


def _endpoint(role: str, value: object) -> Endpoint:
    """A role's `endpoint:` mapping, checked."""
    if not isinstance(value, dict):
        raise ValueError(f"role {role!r}: `endpoint` must be a mapping with `url:` and `model:`")
    _known_keys(value, _ENDPOINT_KEYS, f"in role {role!r}'s endpoint")
    url, model, token_env = value.get("url"), value.get("model"), value.get("token_env", "")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"role {role!r}: the endpoint's `url` must be http://... or https://... (its API base, "
                         "e.g. http://127.0.0.1:8080/v1)")
    if not isinstance(model, str) or not model:
        raise ValueError(f"role {role!r}: the endpoint needs `model:` (the name the server knows it by)")
    if not isinstance(token_env, str):
        raise ValueError(f"role {role!r}: the endpoint's `token_env` is the name of an environment variable")
    return Endpoint(url.rstrip("/"), model, token_env)
