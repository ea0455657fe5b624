"""The online store in SQLite (``sqlite:///path/online.db``): states as blobs, one
transaction per commit together with the view's progress."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from keel.errors import UnavailableError
from keel.features.online.base import EncodedStore, Progress
from keel.features.tiles import TileState
from keel.urls import sqlite_path

__all__ = ["SQLiteStore"]

_DDL = (
    "CREATE TABLE IF NOT EXISTS states (view TEXT NOT NULL, key NOT NULL, state BLOB NOT NULL,"
    " PRIMARY KEY (view, key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS progress (view TEXT PRIMARY KEY, progress BLOB NOT NULL)",
)
_CHUNK = 500  # keys per SELECT … IN (…), well under SQLite's variable limit


class SQLiteStore(EncodedStore):
    def __init__(self, url: str) -> None:
        self.url = url
        path = sqlite_path(url)
        try:
            self._db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise UnavailableError(f"cannot open the online store at {url!r}: {exc}") from exc
        self._lock = threading.RLock()
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for stmt in _DDL:
            self._db.execute(stmt)

    def _blobs(self, view: str, keys: Sequence[Any]) -> list[bytes | None]:
        found: dict[Any, bytes] = {}
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                chunk = list(keys[i : i + _CHUNK])
                marks = ",".join("?" * len(chunk))
                found.update(
                    self._db.execute(
                        f"SELECT key, state FROM states WHERE view = ? AND key IN ({marks})",
                        [view, *chunk],
                    ).fetchall()
                )
        return [found.get(k) for k in keys]

    def commit(self, view: str, states: Mapping[Any, TileState], progress: Progress) -> None:
        rows = [(view, k, s.encode()) for k, s in states.items()]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?)", rows)
                self._db.execute(
                    "INSERT OR REPLACE INTO progress VALUES (?, ?)", (view, progress.encode())
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def progress(self, view: str) -> Progress:
        with self._lock:
            row = self._db.execute(
                "SELECT progress FROM progress WHERE view = ?", (view,)
            ).fetchone()
        return Progress.decode(None if row is None else row[0])

    def clear(self, view: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM states WHERE view = ?", (view,))
            self._db.execute("DELETE FROM progress WHERE view = ?", (view,))
            self._db.execute("COMMIT")

    def count(self, view: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT count(*) FROM states WHERE view = ?", (view,)
            ).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
