"""Tokens for callers that cannot use the user-only Unix socket (TCP, HTTP): each has a name and one scope,
each tier including the ones before it: `read` < `infer` < `admin` (what each front's calls need is the
front's table: api/auth.py for gRPC).

The daemon keeps only each token's SHA-256 (`tokens.json` next to the token file, 0600). The owner token
(the token file, written once for the local user's own clients) has `admin`.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from warmd.errors import Code, WarmdError
from warmd.paths import write_atomic

SCOPES = ("read", "infer", "admin")
OWNER = "owner"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def allows(scope: str, needed: str) -> bool:
    """Whether a token of `scope` may make a call that needs `needed`."""
    return SCOPES.index(scope) >= SCOPES.index(needed)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scope: str
    sha256: str
    created: float


class TokenStore:
    """Named, scoped tokens, kept as hashes in a JSON file that only this daemon writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_digest: dict[str, TokenInfo] = {}
        if path.is_file():
            try:
                entries = json.loads(path.read_text())["tokens"]
                self._by_digest = {e["sha256"]: TokenInfo(**e) for e in entries}
            except (ValueError, KeyError, TypeError) as exc:
                raise WarmdError(Code.INVALID_ARGUMENT, f"{path} is not a warmd tokens file ({exc}); "
                                 "move it away to start with no named tokens") from None

    def ensure_owner(self, token_file: Path) -> None:
        """Create the owner token file (0600, folder 0700) if missing, and trust its token as `admin`."""
        token = token_file.read_text().strip() if token_file.is_file() else ""
        if not token:
            token = secrets.token_urlsafe(32)
            token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(token_file, token + "\n", mode=0o600)
        with self._lock:
            kept = {d: t for d, t in self._by_digest.items() if t.name != OWNER}
            self._commit_locked({**kept, digest(token): TokenInfo(OWNER, "admin", digest(token), time.time())})

    def create(self, name: str, scope: str) -> str:
        """A new token `name` with `scope`. Returns the token itself, which is not kept anywhere.

        Raises:
            WarmdError: `invalid_argument` for a bad or taken name, or an unknown scope.
        """
        if not _NAME.match(name) or name == OWNER:
            raise WarmdError(Code.INVALID_ARGUMENT, f"token name {name!r}: use 1-64 letters, digits, . _ - "
                             f"(not {OWNER!r})")
        if scope not in SCOPES:
            raise WarmdError(Code.INVALID_ARGUMENT, f"scope {scope!r}: use one of {', '.join(SCOPES)}")
        token = secrets.token_urlsafe(32)
        with self._lock:
            if any(t.name == name for t in self._by_digest.values()):
                raise WarmdError(Code.INVALID_ARGUMENT, f"a token named {name!r} exists; revoke it first")
            self._commit_locked({**self._by_digest,
                                 digest(token): TokenInfo(name, scope, digest(token), time.time())})
        return token

    def revoke(self, name: str) -> None:
        """Forget token `name`; calls with it are UNAUTHENTICATED from now on."""
        with self._lock:
            kept = {d: t for d, t in self._by_digest.items() if t.name != name}
            if len(kept) == len(self._by_digest):
                raise WarmdError(Code.INVALID_ARGUMENT, f"no token named {name!r}; `warm token list` shows them")
            if name == OWNER:
                raise WarmdError(Code.INVALID_ARGUMENT, "the owner token cannot be revoked; delete the token "
                                 "file and restart the daemon to replace it")
            self._commit_locked(kept)

    def list(self) -> list[TokenInfo]:
        with self._lock:
            return sorted(self._by_digest.values(), key=lambda t: t.created)

    def lookup(self, token: str) -> TokenInfo | None:
        with self._lock:
            return self._by_digest.get(digest(token))

    def _commit_locked(self, tokens: dict[str, TokenInfo]) -> None:
        """Write the new set of tokens, then adopt it: a failed write (a full disk) changes nothing."""
        body = {"tokens": [asdict(t) for t in tokens.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, json.dumps(body, indent=1) + "\n", mode=0o600)
        self._by_digest = tokens
