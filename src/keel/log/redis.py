"""The scale-out log on Redis Streams (``redis://host:port/db?prefix=keel``).

Each partition is one stream whose entries are Arrow IPC record batches; an entry's ID is
``<base offset>-1``, so offsets map straight onto stream IDs and ``XRANGE`` reads from an offset.
A small sorted set per partition indexes the segments (base, count, event-time range, size,
append time) so retention, seek and stats never fetch the data. An append runs as one Lua
script, which Redis executes atomically: every partition's batch is stored, or none.
All keys of a topic share one hash tag, so the scheme also works on Redis Cluster.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from keel.errors import ConflictError
from keel.log.base import Log, Segment
from keel.log.schema import Topic
from keel.urls import connect_redis

__all__ = ["RedisLog"]

_APPEND = """
local bounds = KEYS[1]
local now = ARGV[1]
local n = tonumber(ARGV[2])
local bases = {}
for i = 0, n - 1 do
  local a = 3 + i * 6
  local p = ARGV[a]
  local count = tonumber(ARGV[a + 1])
  local base = tonumber(redis.call('HGET', bounds, 'e:' .. p) or '0')
  local id = string.format('%d', base)
  redis.call('XADD', KEYS[2 + i * 2], id .. '-1', 'd', ARGV[a + 5])
  redis.call('ZADD', KEYS[3 + i * 2], base, table.concat(
    {id, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], now}, ':'))
  redis.call('HSET', bounds, 'e:' .. p, string.format('%d', base + count))
  bases[#bases + 1] = id
end
return bases
"""

_TRIM = """
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1] .. '-0')
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
local start = tonumber(redis.call('HGET', KEYS[3], 's:' .. ARGV[2]) or '0')
if start < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[3], 's:' .. ARGV[2], ARGV[1])
end
return removed
"""


class RedisLog(Log):
    """A log on Redis Streams. ``prefix`` (default ``keel``) namespaces every key."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._redis, self.prefix = connect_redis(url, "log")
        self._append = self._redis.register_script(_APPEND)
        self._trim = self._redis.register_script(_TRIM)

    def close(self) -> None:
        self._redis.close()

    def _identity(self) -> str:
        key = f"{self.prefix}:identity"
        self._redis.set(key, uuid.uuid4().hex, nx=True)
        return self._redis.get(key).decode()

    # -- keys ---------------------------------------------------------------------------
    def _k(self, topic: str, suffix: str) -> str:
        return f"{self.prefix}:{{t:{topic}}}:{suffix}"

    @property
    def _topics_key(self) -> str:
        return f"{self.prefix}:topics"

    # -- topics -------------------------------------------------------------------------
    def _save_topic(self, topic: Topic, exist_ok: bool) -> Topic:
        created = self._redis.hsetnx(self._topics_key, topic.name, topic.to_json())
        if not created:
            existing = Topic.from_json(self._redis.hget(self._topics_key, topic.name))
            if exist_ok and existing == topic:
                return existing
            raise ConflictError(
                f"topic {topic.name!r} already exists"
                + ("" if existing == topic else " with a different definition")
            )
        return topic

    def _load_topics(self) -> dict[str, Topic]:
        raw = self._redis.hgetall(self._topics_key)
        return {k.decode(): Topic.from_json(v) for k, v in raw.items()}

    def _drop_topic(self, name: str) -> None:
        keys = list(
            self._redis.scan_iter(
                match=self._k(name, "*").replace("{", "\\{").replace("}", "\\}"), count=1000
            )
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._topics_key, name)
        if keys:
            pipe.delete(*keys)
        pipe.execute()

    # -- data ---------------------------------------------------------------------------
    def _write(self, topic: Topic, segments: list[Segment]) -> list[int]:
        keys = [self._k(topic.name, "bounds")]
        args: list[Any] = [repr(time.time()), len(segments)]
        for seg in segments:
            keys += [
                self._k(topic.name, f"p:{seg.partition}"),
                self._k(topic.name, f"i:{seg.partition}"),
            ]
            args += [seg.partition, seg.count, seg.min_ts, seg.max_ts, seg.nbytes, seg.data]
        return [int(b) for b in self._append(keys=keys, args=args)]

    def _index(
        self,
        topic: Topic,
        partition: int,
        lo: str = "-inf",
        hi: str = "+inf",
        limit: int | None = None,
    ) -> list[Segment]:
        key = self._k(topic.name, f"i:{partition}")
        if limit is None:
            members = self._redis.zrangebyscore(key, lo, hi)
        else:
            members = self._redis.zrangebyscore(key, lo, hi, start=0, num=limit)
        out = []
        for m in members:
            base, count, lo_ts, hi_ts, nbytes, at = m.decode().split(":")
            out.append(
                Segment(
                    partition,
                    int(base),
                    int(count),
                    int(lo_ts),
                    int(hi_ts),
                    b"",
                    float(at),
                    int(nbytes),
                )
            )
        return out

    def _segments(
        self, topic: Topic, partition: int, offset: int, max_records: int
    ) -> list[Segment]:
        idx_key = self._k(topic.name, f"i:{partition}")
        first = self._redis.zrevrangebyscore(
            idx_key, offset, "-inf", start=0, num=1, withscores=True
        )
        start = int(first[0][1]) if first else 0
        chosen: list[Segment] = []
        have = 0
        page = 64
        cursor = str(start)
        while have < max_records:
            batch = self._index(topic, partition, cursor, "+inf", limit=page)
            for seg in batch:
                chosen.append(seg)
                have += seg.base + seg.count - max(offset, seg.base)
                if have >= max_records:
                    break
            if len(batch) < page:
                break
            cursor = f"({batch[-1].base}"
        if not chosen:
            return []
        entries = self._redis.xrange(
            self._k(topic.name, f"p:{partition}"), f"{chosen[0].base}-1", f"{chosen[-1].base}-1"
        )
        data = {int(eid.split(b"-")[0]): fields[b"d"] for eid, fields in entries}
        return [
            Segment(
                s.partition,
                s.base,
                s.count,
                s.min_ts,
                s.max_ts,
                data[s.base],
                s.appended_at,
                s.nbytes,
            )
            for s in chosen
            if s.base in data
        ]

    def _segment_index(self, topic: Topic, partition: int) -> list[Segment]:
        return self._index(topic, partition)

    def _bounds(self, topic: Topic) -> list[tuple[int, int]]:
        raw = self._redis.hgetall(self._k(topic.name, "bounds"))
        values = {k.decode(): int(v) for k, v in raw.items()}
        return [(values.get(f"s:{p}", 0), values.get(f"e:{p}", 0)) for p in range(topic.partitions)]

    def _delete_before(self, topic: Topic, partition: int, offset: int) -> int:
        keys = [
            self._k(topic.name, f"p:{partition}"),
            self._k(topic.name, f"i:{partition}"),
            self._k(topic.name, "bounds"),
        ]
        return int(self._trim(keys=keys, args=[offset, partition]))

    # -- consumer groups ----------------------------------------------------------------
    def _commit(self, group: str, topic: Topic, offsets: Mapping[int, int]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(self._k(topic.name, "groups"), group)
        pipe.hset(
            self._k(topic.name, f"g:{group}"), mapping={str(p): o for p, o in offsets.items()}
        )
        pipe.execute()

    def _committed(self, group: str, topic: Topic) -> dict[int, int]:
        raw = self._redis.hgetall(self._k(topic.name, f"g:{group}"))
        return {int(k): int(v) for k, v in raw.items()}

    def _groups(self, topic: Topic) -> list[str]:
        return [g.decode() for g in self._redis.smembers(self._k(topic.name, "groups"))]
