"""Local users, sessions and CSRF tokens of the console and the REST API.

Passwords are stored as ``scrypt$n$r$p$salt$hash`` (:func:`hashlib.scrypt`, a memory-hard KDF
in the standard library; nothing to hand-write but the encoding). Sessions are random
256-bit ids kept in memory (:class:`Sessions`): nothing to forge, logout and expiry are real,
and a node restart logs everyone out (a cookie signed with a key on disk would survive it, at
the price of revocation). Each session has its own CSRF token, required on every
state-changing request (hidden form field or ``X-CSRF-Token`` header). Why not a library:
Starlette's ``SessionMiddleware`` needs ``itsdangerous`` (not installed) and keeps the whole
session in a client-side cookie.

Run ``python -m node.api.auth`` to hash a password for the config.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import secrets
import sys
import threading
import time
from dataclasses import dataclass

from node.config.console import ConsoleUser

__all__ = [
    "LoginThrottle",
    "Session",
    "Sessions",
    "authenticate",
    "hash_password",
    "verify_password",
]

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, want = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(want) // 2, maxmem=256 * 1024 * 1024)  # fmt: skip
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got.hex(), want)


_DUMMY = hash_password("-")  # compared against for unknown users: same time as a known one


def authenticate(users: tuple[ConsoleUser, ...], name: str, password: str) -> ConsoleUser | None:
    """The user if ``password`` is theirs (constant work whether or not ``name`` exists)."""
    user = next((u for u in users if u.name == name), None)
    ok = verify_password(password, user.password_hash if user else _DUMMY)
    return user if ok and user is not None else None


class LoginThrottle:
    """Refuses a user name for ``lock_seconds`` after ``max_failures`` wrong passwords within
    ``window_seconds`` (password guessing through the login form or HTTP Basic)."""

    def __init__(
        self, max_failures: int = 5, window_seconds: float = 300.0, lock_seconds: float = 300.0
    ) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self.lock = lock_seconds
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def locked(self, name: str) -> bool:
        now = time.time()
        with self._lock:
            recent = [t for t in self._failures.get(name, []) if now - t < self.window]
            self._failures[name] = recent
            return len(recent) >= self.max_failures and now - recent[-1] < self.lock

    def failed(self, name: str) -> None:
        with self._lock:
            self._failures.setdefault(name, []).append(time.time())
            if len(self._failures) > 10_000:  # bounded: forget the oldest names
                self._failures.pop(next(iter(self._failures)))

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    role: str
    csrf: str
    expires: float

    @property
    def operator(self) -> bool:
        return self.role == "operator"


class Sessions:
    """In-memory sessions with an absolute lifetime."""

    def __init__(self, lifetime_seconds: float) -> None:
        self.lifetime = lifetime_seconds
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def create(self, user: ConsoleUser) -> Session:
        s = Session(secrets.token_urlsafe(32), user.name, user.role, secrets.token_urlsafe(32),
                    time.time() + self.lifetime)  # fmt: skip
        with self._lock:
            now = time.time()
            self._by_id = {k: v for k, v in self._by_id.items() if v.expires > now}
            self._by_id[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._by_id.get(sid)
        return s if s is not None and s.expires > time.time() else None

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


def main() -> int:
    """Print the ``password_hash`` of a password read from the terminal (or stdin)."""
    pw = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(pw) < 10:
        print("password too short (10 characters at least)", file=sys.stderr)
        return 2
    print(hash_password(pw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
