"""The online store on Redis (``redis://host:port/db?prefix=keel``).

Each entity's state is one string key; a commit is one MULTI/EXEC transaction that sets the
states and the view's progress together. A read of many keys is one MGET.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from keel.features.online.base import EncodedStore, Progress
from keel.features.tiles import TileState
from keel.urls import connect_redis

__all__ = ["RedisStore"]


class RedisStore(EncodedStore):
    def __init__(self, url: str) -> None:
        self.url = url
        self._redis, self.prefix = connect_redis(url, "online store")

    def _key(self, view: str, key: Any) -> str:
        return f"{self.prefix}:fv:{view}:{key}"

    def _progress_key(self, view: str) -> str:
        return f"{self.prefix}:fvp:{view}"

    def _blobs(self, view: str, keys: Sequence[Any]) -> list[bytes | None]:
        return self._redis.mget([self._key(view, k) for k in keys]) if len(keys) else []

    def commit(self, view: str, states: Mapping[Any, TileState], progress: Progress) -> None:
        pipe = self._redis.pipeline(transaction=True)
        if states:
            pipe.mset({self._key(view, k): s.encode() for k, s in states.items()})
        pipe.set(self._progress_key(view), progress.encode())
        pipe.execute()

    def progress(self, view: str) -> Progress:
        return Progress.decode(self._redis.get(self._progress_key(view)))

    def clear(self, view: str) -> None:
        pattern = self._key(view, "*")
        keys = list(self._redis.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 1000):
            self._redis.delete(*keys[i : i + 1000])
        self._redis.delete(self._progress_key(view))

    def count(self, view: str) -> int:
        return sum(1 for _ in self._redis.scan_iter(match=self._key(view, "*"), count=1000))

    def close(self) -> None:
        self._redis.close()
