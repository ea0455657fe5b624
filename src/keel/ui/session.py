"""Who is at the console: sign-in with a bearer token, sessions, what each role may do.

A person signs in with one of the project's tokens (``[[auth.tokens]]`` in ``keel.toml`` and
``KEEL_AUTH_TOKENS``), checked by the server's own :class:`~keel.serving.auth.Authenticator`.
The browser then holds only a random session id, in an HTTP-only, ``SameSite=Strict``
cookie: the token itself never goes back to the browser, nor into a log. The console keeps
the token in its memory for the session's life, because an action on a running server is
made through the server's control API with that token, so the server's audit trail names the
same person as the console's.

Pages need the ``read`` level, actions ``operate`` (``GRANTS`` of :mod:`keel.serving.auth`:
reader, operator and admin read; operator and admin act). With no token configured at all the
pages are open to read, as the server is, but an action is refused whoever asks: the console
never lets an anonymous person act. Every POST carries the session's CSRF token, and an
``Origin`` other than the console's own is refused.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from keel.config import ROLES, AuthConfig
from keel.errors import KeelError
from keel.serving.auth import GRANTS, Authenticator

__all__ = [
    "COOKIE",
    "Forbidden",
    "Session",
    "Sessions",
    "SignInRequired",
    "check_csrf",
    "check_origin",
    "require",
]

COOKIE = "keel_session"
#: How long a session lasts from sign-in.
TTL_S = 8 * 3600.0
HOW_TO_OPERATE = (
    "make an operator token with `keel token new NAME --role operator`, add the "
    "[[auth.tokens]] entry it prints to keel.toml (or to KEEL_AUTH_TOKENS), restart "
    "keel ui and sign in with the token"
)


class SignInRequired(KeelError):
    """The page or action needs a signed-in person."""

    status_code = 401


class Forbidden(KeelError):
    """The signed-in person's role does not reach what was asked, or the request is not the
    console's own (CSRF, another origin)."""

    status_code = 403


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    who: str
    role: str
    csrf: str
    token: str
    expires: float


class Sessions:
    """The signed-in sessions of one console process, in memory (a restart signs everyone
    out, and nothing about a session is written anywhere)."""

    def __init__(self, auth: AuthConfig, *, ttl_s: float = TTL_S) -> None:
        self.auth = auth
        self.authenticator = Authenticator(auth)
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._flashes: dict[str, tuple[str, str]] = {}  # id -> (session id, message)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether the project has tokens (else pages are open and actions refused)."""
        return self.authenticator.enabled

    def sign_in(self, token: str) -> Session | None:
        """A new session for ``token``, or None if it is not a token of the project. Runs
        scrypt the first time a token is seen: call it off the event loop."""
        found = self.authenticator.verify(token.strip()) if token.strip() else None
        if found is None:
            return None
        session = Session(
            id=secrets.token_urlsafe(32),
            who=found.name,
            role=found.role,
            csrf=secrets.token_urlsafe(32),
            token=token.strip(),
            expires=time.monotonic() + self.ttl_s,
        )
        with self._lock:
            self._drop_expired()
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires < time.monotonic():
                del self._sessions[session_id]
                return None
            return session

    def sign_out(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def flash(self, session: Session, message: str) -> str:
        """Keep ``message`` for the session's next page; the id that page is given."""
        key = secrets.token_urlsafe(12)
        with self._lock:
            if len(self._flashes) > 1000:
                self._flashes.clear()
            self._flashes[key] = (session.id, message)
        return key

    def pop_flash(self, session: Session | None, key: str | None) -> str | None:
        """The message left under ``key`` for this session (once), else None."""
        if session is None or not key:
            return None
        with self._lock:
            held = self._flashes.get(key)
            if held is None or held[0] != session.id:
                return None
            del self._flashes[key]
        return held[1]

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]


def _roles(level: str) -> str:
    return " or ".join(r for r in ROLES if level in GRANTS[r])


def require(sessions: Sessions, session: Session | None, level: str) -> None:
    """Refuse, with what to do about it, unless ``session`` reaches ``level`` (``read`` for
    a page, ``operate`` for an action)."""
    if level == "operate" and not sessions.enabled:
        raise Forbidden(
            f"this project has no tokens, so nobody may act from the console: {HOW_TO_OPERATE}"
        )
    if not sessions.auth.needs_token(level) or (level == "read" and not sessions.enabled):
        return
    if session is None:
        raise SignInRequired(f"sign in with a token whose role is {_roles(level)}")
    if level not in GRANTS[session.role]:
        raise Forbidden(
            f"token {session.who!r} has role {session.role}; this needs {_roles(level)}"
            + (f" ({HOW_TO_OPERATE})" if level == "operate" else "")
        )


def check_origin(origin: str | None, own: str) -> None:
    """A POST whose ``Origin`` (when the browser sends one) is not the console's ``own`` is
    refused."""
    if origin is not None and origin.rstrip("/") != own.rstrip("/"):
        raise Forbidden(f"a request from {origin} is not the console's own; nothing was done")


def check_csrf(session: Session | None, form: Any, origin: str | None, own: str) -> None:
    """A POST is the console's own: its form carries the session's CSRF token and its
    ``Origin`` (when the browser sends one) is the console's ``own``."""
    check_origin(origin, own)
    given = form.get("csrf") if form is not None else None
    if (
        session is None
        or not isinstance(given, str)
        or not hmac.compare_digest(given, session.csrf)
    ):
        raise Forbidden(
            "the form's security token is missing or stale (was it opened in another "
            "session?); reload the page and try again"
        )
