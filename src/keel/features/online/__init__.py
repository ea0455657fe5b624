"""Online stores: ``memory://`` (in-process), ``sqlite://`` and ``redis://``."""

from __future__ import annotations

from keel.errors import ConfigError
from keel.features.online.base import OnlineStore, Progress

__all__ = ["OnlineStore", "Progress", "open_online_store"]


def open_online_store(url: str) -> OnlineStore:
    """Open the online store named by ``url``'s scheme."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "memory":
        from keel.features.online.memory import MemoryStore

        return MemoryStore(url)
    if scheme == "sqlite":
        from keel.features.online.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("redis", "rediss"):
        from keel.features.online.redis import RedisStore

        return RedisStore(url)
    raise ConfigError(
        f"online store URL {url!r} has no known scheme; expected memory://, "
        "sqlite:///path/online.db or redis://host:6379/0 (KEEL_ONLINE_URL or online_url)"
    )
