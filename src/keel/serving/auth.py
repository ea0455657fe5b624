"""Bearer tokens with roles for the server, and an audit trail of every control-plane call.

Tokens are random (``keel token new NAME --role operator`` makes one); the server keeps only
their salted scrypt hashes, from ``[[auth.tokens]]`` in ``keel.toml`` and from
``KEEL_AUTH_TOKENS`` (``name:role:hash`` entries separated by spaces), and compares digests in
constant time. A verified token is remembered (by its SHA-256) so that scrypt's cost is paid
once per token, not per request; scrypt runs off the event loop.

Each HTTP route has an access level (see ``ACCESS`` in :mod:`keel.serving.app`):

========  ==========================================  =========================
level     endpoints                                   roles
========  ==========================================  =========================
health    ``/v2/health/*``                            open unless ``health_token``
metrics   ``/metrics``, ``/v2``, ``/openapi.json``    open unless ``metrics_token``
data      infer, predict, explain, model metadata      open unless ``data_token``;
                                                      client, operator, admin
read      ``GET /v1/routes``, ``GET …/traffic``        reader, operator, admin
operate   reload, traffic, decisions                  operator, admin
admin     ``POST /v1/routes`` (define a route)        admin
========  ==========================================  =========================

With no token configured, the server is open (a development default) and says so at start.
Every call to an ``operate`` or ``admin`` endpoint — accepted or refused — is an event on the
``keel.audit`` topic naming the token (``anonymous`` when the server is open), its role, the
call, the answer's status and the request body.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from keel.config import ROLES, AuthConfig, TokenConfig
from keel.log import Topic

__all__ = [
    "AUDIT",
    "LEVELS",
    "ROLES",
    "AuthConfig",
    "AuthMiddleware",
    "Authenticator",
    "TokenConfig",
    "hash_token",
    "new_token",
]

logger = logging.getLogger(__name__)

LEVELS = ("health", "metrics", "data", "read", "operate", "admin")
#: The levels each role may reach (health and metrics: any valid token, when protected).
GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset(LEVELS),
    "operator": frozenset({"health", "metrics", "data", "read", "operate"}),
    "reader": frozenset({"health", "metrics", "read"}),
    "client": frozenset({"health", "metrics", "data"}),
}
#: Control-plane calls: each one is audited.
AUDITED = frozenset({"operate", "admin"})
#: scrypt's cost: about 16 MiB and tens of milliseconds per hash, once per token.
_N, _R, _P = 2**14, 8, 1
_AUDIT_BODY = 16_384

#: Control-plane calls, accepted and refused, with who made them.
AUDIT = Topic(
    "keel.audit",
    {
        "ts": "timestamp",
        "who": "string",
        "role": "string?",
        "method": "string",
        "path": "string",
        "status": "int64",
        "body": "string?",
    },
    event_time="ts",
    key="who",
)


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return "keel_" + secrets.token_urlsafe(32)


def hash_token(token: str, salt: bytes | None = None) -> str:
    """The salted scrypt hash of ``token``, as ``[[auth.tokens]]`` takes it."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(token.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${salt.hex()}${digest.hex()}"


class Authenticator:
    """Which configured token a bearer token is, if any."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.tokens = list(config.tokens)
        self._known: dict[bytes, TokenConfig] = {}
        # Unknown tokens are remembered too (bounded), so one repeated bad token costs one
        # round of scrypt, not one per request.
        self._unknown: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def cached(self, token: str) -> tuple[bool, TokenConfig | None]:
        """(whether the answer is known without hashing, the token if it is valid)."""
        key = hashlib.sha256(token.encode()).digest()
        if key in self._known:
            return True, self._known[key]
        return key in self._unknown, None

    def verify(self, token: str) -> TokenConfig | None:
        key = hashlib.sha256(token.encode()).digest()
        if key in self._known:
            return self._known[key]
        found = None
        for t in self.tokens:
            _, salt, digest = t.hash.split("$")
            got = hashlib.scrypt(
                token.encode(), salt=bytes.fromhex(salt), n=_N, r=_R, p=_P, dklen=32
            )
            if hmac.compare_digest(got, bytes.fromhex(digest)):
                found = t
        if found is not None:
            self._known[key] = found
        else:
            self._unknown[key] = None
            while len(self._unknown) > 1024:
                self._unknown.popitem(last=False)
        return found


Send = Callable[[dict[str, Any]], Any]


class AuthMiddleware:
    """Pure ASGI middleware: authenticate, authorize by the matched route's access level,
    and audit control-plane calls. ``level_of(method, path_template)`` gives a route's level;
    a route with none needs ``admin`` (refused by default)."""

    def __init__(
        self,
        app: Any,
        *,
        authenticator: Authenticator,
        level_of: Callable[[str, str], str | None],
        log_: Any = None,
    ) -> None:
        self.app = app
        self.auth = authenticator
        self.level_of = level_of
        self._templates: dict[tuple[str, str], Any] = {}
        self.log = log_  # its AUDIT topic created beforehand (Starlette builds this lazily,
        # on the event loop, where no log call belongs)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = (scope["method"], scope["path"])
        template = self._templates.get(key, _UNKNOWN)
        if template is _UNKNOWN:
            # Matching walks every route's pattern: once per distinct path, not per request.
            template = _route_template(scope)
            if len(self._templates) >= _TEMPLATES_KEPT:
                self._templates.clear()  # many distinct paths (a scan): start over
            self._templates[key] = template
        if template is None:  # 404 or 405: the router answers, nothing is reached
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        level = self.level_of(method, template) or "admin"
        who, role, refusal = "anonymous", None, None
        if self.auth.enabled:
            token = _bearer(scope)
            if token is not None:
                known, found = self.auth.cached(token)
                if not known:
                    found = await asyncio.to_thread(self.auth.verify, token)
                if found is not None:
                    who, role = found.name, found.role
            refusal = self._refusal(level, token, role, who, method, template)
        if refusal is not None:
            status, message = refusal
            if level in AUDITED:
                await self._audit(who, role, method, scope["path"], status, None)
            await _answer(send, status, message)
            return
        if level not in AUDITED:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        status = 500

        async def receive_and_keep() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request" and len(body) < _AUDIT_BODY:
                body.extend(message.get("body", b"")[: _AUDIT_BODY - len(body)])
            return message

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_and_note)
        finally:
            text = bytes(body).decode("utf-8", "replace") or None
            await self._audit(who, role, method, scope["path"], status, text)

    def _refusal(
        self,
        level: str,
        token: str | None,
        role: str | None,
        who: str,
        method: str,
        template: str,
    ) -> tuple[int, str] | None:
        if not self.auth.config.needs_token(level):
            return None
        roles = [r for r in ROLES if level in GRANTS[r]]
        call = f"{method} {template}"
        if token is None:
            return 401, (
                f"{call} needs a bearer token (Authorization: Bearer <token>) with role "
                f"{' or '.join(roles)}"
            )
        if role is None:
            return 401, "the bearer token is not one this server knows"
        if level not in GRANTS[role]:
            return 403, f"token {who!r} has role {role}; {call} needs {' or '.join(roles)}"
        return None

    async def _audit(
        self, who: str, role: str | None, method: str, path: str, status: int, body: str | None
    ) -> None:
        record = {
            "ts": datetime.now(UTC),
            "who": who,
            "role": role,
            "method": method,
            "path": path,
            "status": status,
            "body": body,
        }
        logger.info("audit: %s (%s) %s %s → %d", who, role, method, path, status)
        if self.log is not None:
            try:
                await asyncio.to_thread(self.log.append, AUDIT.name, [record])
            except Exception:
                logger.exception("could not write the audit event for %s %s", method, path)


_UNKNOWN = object()
_TEMPLATES_KEPT = 4096


def _route_template(scope: dict[str, Any]) -> str | None:
    from starlette.routing import Match

    for route in scope["app"].router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.path
    return None


def _bearer(scope: dict[str, Any]) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


async def _answer(send: Send, status: int, message: str) -> None:
    headers = [(b"content-type", b"application/json")]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="keel"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"error": message}).encode()})
