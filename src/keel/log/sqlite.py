"""The embedded log: one SQLite file in WAL mode.

Each append is one ``BEGIN IMMEDIATE`` transaction that inserts one row per partition (an
Arrow IPC record batch) and advances that partition's end offset, so several processes can
produce and consume the same file at once and a call is appended whole or not at all.
The standard library's ``sqlite3`` is used directly rather than through SQLAlchemy: this is
the hot path, and the statements are few and fixed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from keel.errors import ConflictError, UnavailableError
from keel.log.base import Log, Segment
from keel.log.schema import Topic
from keel.urls import sqlite_path

__all__ = ["SQLiteLog"]

_DDL = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    definition BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    base INTEGER NOT NULL,
    count INTEGER NOT NULL,
    min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    appended_at REAL NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (topic, partition, base)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
"""


class SQLiteLog(Log):
    """A log in one SQLite file (``sqlite:///path/log.db``), or in memory (``sqlite://``)."""

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        super().__init__()
        self.url = url
        self.path = path = sqlite_path(url)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise UnavailableError(f"cannot open the log at {url!r}: {exc}") from exc
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of the process; only a power loss can
        # lose the last transactions, and never corrupts the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._tx():
            for stmt in _DDL.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)

    @contextmanager
    def _tx(self, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _identity(self) -> str:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('identity', ?)",
                (uuid.uuid4().hex,),
            )
            return db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()[0]

    # -- topics -------------------------------------------------------------------------
    def _save_topic(self, topic: Topic, exist_ok: bool) -> Topic:
        with self._tx() as db:
            row = db.execute(
                "SELECT definition FROM topics WHERE name = ?", (topic.name,)
            ).fetchone()
            if row is not None:
                existing = Topic.from_json(row[0])
                if exist_ok and existing == topic:
                    return existing
                raise ConflictError(
                    f"topic {topic.name!r} already exists"
                    + ("" if existing == topic else " with a different definition")
                )
            db.execute(
                "INSERT INTO topics (name, definition, created_at) VALUES (?, ?, ?)",
                (topic.name, topic.to_json(), time.time()),
            )
            db.executemany(
                "INSERT OR REPLACE INTO partitions VALUES (?, ?, 0, 0)",
                [(topic.name, p) for p in range(topic.partitions)],
            )
        return topic

    def _load_topics(self) -> dict[str, Topic]:
        with self._lock:
            rows = self._db.execute("SELECT definition FROM topics").fetchall()
        return {t.name: t for t in (Topic.from_json(r[0]) for r in rows)}

    def _drop_topic(self, name: str) -> None:
        with self._tx() as db:
            for table in ("topics", "partitions", "segments", "group_offsets"):
                column = "name" if table == "topics" else "topic"
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))

    # -- data ---------------------------------------------------------------------------
    def _write(self, topic: Topic, segments: list[Segment]) -> list[int]:
        now = time.time()
        bases = []
        with self._tx() as db:
            for seg in segments:
                (end,) = db.execute(
                    "SELECT end_offset FROM partitions WHERE topic = ? AND partition = ?",
                    (topic.name, seg.partition),
                ).fetchone()
                db.execute(
                    "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        topic.name,
                        seg.partition,
                        end,
                        seg.count,
                        seg.min_ts,
                        seg.max_ts,
                        seg.nbytes,
                        now,
                        seg.data,
                    ),
                )
                db.execute(
                    "UPDATE partitions SET end_offset = ? WHERE topic = ? AND partition = ?",
                    (end + seg.count, topic.name, seg.partition),
                )
                bases.append(end)
        return bases

    def _segments(
        self, topic: Topic, partition: int, offset: int, max_records: int
    ) -> list[Segment]:
        out: list[Segment] = []
        with self._lock:
            (first,) = self._db.execute(
                "SELECT max(base) FROM segments WHERE topic = ? AND partition = ? AND base <= ?",
                (topic.name, partition, offset),
            ).fetchone()
            cursor = self._db.execute(
                "SELECT base, count, min_ts, max_ts, appended_at, nbytes, data FROM segments "
                "WHERE topic = ? AND partition = ? AND base >= ? ORDER BY base",
                (topic.name, partition, first or 0),
            )
            have = 0
            for base, count, lo, hi, at, nbytes, data in cursor:
                out.append(Segment(partition, base, count, lo, hi, data, at, nbytes))
                have += base + count - max(offset, base)
                if have >= max_records:
                    break
            cursor.close()
        return out

    def _segment_index(self, topic: Topic, partition: int) -> list[Segment]:
        with self._lock:
            rows = self._db.execute(
                "SELECT base, count, min_ts, max_ts, appended_at, nbytes FROM segments "
                "WHERE topic = ? AND partition = ? ORDER BY base",
                (topic.name, partition),
            ).fetchall()
        return [Segment(partition, b, c, lo, hi, b"", at, nb) for b, c, lo, hi, at, nb in rows]

    def _bounds(self, topic: Topic) -> list[tuple[int, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT start_offset, end_offset FROM partitions WHERE topic = ? "
                "ORDER BY partition",
                (topic.name,),
            ).fetchall()
        return [(s, e) for s, e in rows]

    def _delete_before(self, topic: Topic, partition: int, offset: int) -> int:
        with self._tx() as db:
            n = db.execute(
                "DELETE FROM segments WHERE topic = ? AND partition = ? AND base + count <= ?",
                (topic.name, partition, offset),
            ).rowcount
            db.execute(
                "UPDATE partitions SET start_offset = max(start_offset, ?) "
                "WHERE topic = ? AND partition = ?",
                (offset, topic.name, partition),
            )
        return n

    # -- consumer groups ----------------------------------------------------------------
    def _commit(self, group: str, topic: Topic, offsets: Mapping[int, int]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO group_offsets VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (grp, topic, partition) DO UPDATE SET "
                "next_offset = excluded.next_offset, updated_at = excluded.updated_at",
                [(group, topic.name, p, off, now) for p, off in offsets.items()],
            )

    def _committed(self, group: str, topic: Topic) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, next_offset FROM group_offsets WHERE grp = ? AND topic = ?",
                (group, topic.name),
            ).fetchall()
        return {p: off for p, off in rows}

    def _groups(self, topic: Topic) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT grp FROM group_offsets WHERE topic = ?", (topic.name,)
            ).fetchall()
        return [r[0] for r in rows]
