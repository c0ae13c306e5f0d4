"""Who may see the dashboard: the holder of the operator token, then a session cookie.

The token is made at start (32 random bytes, URL-safe) and written with mode
0600 to ``dashboard-token`` in the coordinator's home, unless the operator
gives one (``DETENTE_DASHBOARD_TOKEN``, kept off the command line where any
local user could read it in the process list). Logging in with it opens a
server-side session: the browser holds only a random session id in an
``HttpOnly; SameSite=Strict`` cookie, so the token itself is never stored by
the browser and a cross-site page cannot ride the session. Tokens and session
ids are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from pathlib import Path

from protocols.errors import PolicyError
from protocols.keys import write_secret_file

TOKEN_FILE_NAME = "dashboard-token"  # noqa: S105 (a file name)
TOKEN_ENV = "DETENTE_DASHBOARD_TOKEN"  # noqa: S105 (a variable name)
MIN_TOKEN_LENGTH = 24
SESSION_COOKIE = "detente_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000


def operator_token(home: Path, given: str | None = None) -> tuple[str, Path]:
    """The token that logs in, and the 0600 file that holds it.

    ``given`` (or ``DETENTE_DASHBOARD_TOKEN``) is used if set; otherwise a new
    token is made, replacing the one of an earlier start.
    """
    token = given if given is not None else os.environ.get(TOKEN_ENV)
    if token is not None:
        token = token.strip()
        if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
            raise PolicyError(
                f"the dashboard token given in {TOKEN_ENV} is too weak: use at least "
                f"{MIN_TOKEN_LENGTH} printable characters without spaces, or unset it to "
                "have one made"
            )
    else:
        token = secrets.token_urlsafe(32)
    path = Path(home) / TOKEN_FILE_NAME
    write_secret_file(path, f"{token}\n".encode())
    return token, path


def token_matches(token: str, presented: str) -> bool:
    """Constant-time comparison of a presented token with the operator's."""
    return hmac.compare_digest(token.encode(), presented.strip().encode())


class Sessions:
    """Logged-in browser sessions, kept in memory (a restart logs everyone out)."""

    def __init__(self, seconds: float = SESSION_SECONDS) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}

    def open(self) -> str:
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
            if len(self._expiry) >= MAX_SESSIONS:  # bounded: drop the oldest
                del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]
            self._expiry[session] = now + self._seconds
        return session

    def valid(self, presented: str | None) -> bool:
        if not presented:
            return False
        now = time.monotonic()
        with self._lock:
            # Compare against every id so the time taken says nothing about which matched.
            found = False
            for session, expiry in self._expiry.items():
                if hmac.compare_digest(session.encode(), presented.encode()) and expiry > now:
                    found = True
            return found

    def close(self, presented: str | None) -> None:
        if presented:
            with self._lock:
                self._expiry.pop(presented, None)


def check_loopback(host: str) -> None:
    """The dashboard speaks plain HTTP: it listens on loopback addresses only."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise PolicyError(
            f"--dashboard {host}: the dashboard speaks plain HTTP, so it listens on a loopback "
            "address only (127.0.0.1 or ::1); reach it from elsewhere through an SSH tunnel "
            "or a TLS proxy"
        )
