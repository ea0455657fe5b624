"""Pick the log backend from the URL's scheme."""

from __future__ import annotations

from keel.errors import ConfigError
from keel.log.base import Log

__all__ = ["SCHEMES", "open_log"]

SCHEMES = ("sqlite", "redis", "rediss")


def open_log(url: str) -> Log:
    """Open the log at ``url``.

    Example
    -------
    >>> open_log("sqlite://").topics()
    []
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "sqlite":
        from keel.log.sqlite import SQLiteLog

        return SQLiteLog(url)
    if scheme in ("redis", "rediss"):
        from keel.log.redis import RedisLog

        return RedisLog(url)
    raise ConfigError(
        f"log URL {url!r} has no known scheme; expected sqlite:///path/log.db or "
        "redis://host:6379/0 (KEEL_LOG_URL or log_url in keel.toml)"
    )
