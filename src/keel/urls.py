"""Connecting to the embedded and scale-out engines named by backend URLs.

Shared by every backend family (log, online store…), so that ``sqlite://`` and ``redis://``
URLs mean the same thing everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from keel.errors import UnavailableError, ValidationError

__all__ = ["connect_redis", "sqlite_path"]


def sqlite_path(url: str) -> str:
    """The file of ``sqlite:///path`` (its folder created), or ``:memory:`` for ``sqlite://``."""
    path = url[len("sqlite://") :]
    path = path[1:] if path.startswith("/") else path
    if path in ("", ":memory:"):
        return ":memory:"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


def connect_redis(url: str, what: str) -> tuple[Any, str]:
    """A connected redis-py client for ``url`` and the key prefix from its ``prefix`` query
    parameter (default ``keel``). ``what`` names the backend in error messages."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UnavailableError(
            f"the redis:// {what} needs redis-py: pip install 'keel-ml[redis]'"
        ) from exc
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", ["keel"])[0]
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValidationError(f"redis {what} prefix {prefix!r} must be non-empty, without braces")
    clean = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    client = redis.Redis.from_url(clean, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise UnavailableError(f"cannot reach Redis at {clean!r} for the {what}: {exc}") from exc
    return client, prefix
