"""The log's interface: topics of partitioned, append-only record batches with offsets.

Backends store *segments* — one Arrow IPC record batch per partition per append — rather than
one row per event, which is what lets a single SQLite file take a million events a second.
Offsets still address single records: a segment holds records ``base .. base + count - 1``.

A backend implements the small set of abstract primitives below; validation, partitioning,
serialization and slicing are shared, so every backend behaves alike (the contract suite in
``tests/log`` runs over each).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from keel.errors import ValidationError
from keel.log.schema import Topic, partition_for, to_table

__all__ = [
    "OFFSET",
    "PARTITION",
    "Appended",
    "Consumer",
    "Log",
    "PartitionStats",
    "Segment",
    "TopicStats",
]

OFFSET = "_offset"
RETENTION_CHECK_S = 1.0
PARTITION = "_partition"


@dataclass(frozen=True, slots=True)
class Segment:
    """One stored record batch: ``count`` records of one partition starting at ``base``."""

    partition: int
    base: int
    count: int
    min_ts: int  # event time, microseconds since the epoch
    max_ts: int
    data: bytes
    appended_at: float = 0.0
    nbytes: int = 0

    def table(self) -> pa.Table:
        return pa.ipc.open_stream(self.data).read_all()


@dataclass(frozen=True, slots=True)
class Appended:
    """Where one ``append`` call put its records, row for row in input order."""

    partitions: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def ranges(self) -> dict[int, tuple[int, int]]:
        """Partition → (first offset, last offset + 1) written by the call."""
        out: dict[int, tuple[int, int]] = {}
        for p in np.unique(self.partitions):
            mask = self.partitions == p
            out[int(p)] = (int(self.offsets[mask].min()), int(self.offsets[mask].max()) + 1)
        return out


@dataclass(frozen=True, slots=True)
class PartitionStats:
    partition: int
    start: int
    end: int
    segments: int
    bytes: int
    min_ts: int | None
    max_ts: int | None

    @property
    def records(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class TopicStats:
    topic: Topic
    partitions: list[PartitionStats]
    lag: dict[str, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(p.records for p in self.partitions)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions)

    @property
    def segments(self) -> int:
        return sum(p.segments for p in self.partitions)

    @property
    def time_range(self) -> tuple[datetime, datetime] | None:
        lows = [p.min_ts for p in self.partitions if p.min_ts is not None]
        highs = [p.max_ts for p in self.partitions if p.max_ts is not None]
        if not lows:
            return None
        return from_micros(min(lows)), from_micros(max(highs))


def from_micros(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=UTC)


def to_micros(when: datetime | float | int) -> int:
    """A datetime (naive = UTC) or epoch seconds, as microseconds since the epoch."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return round(when.timestamp() * 1_000_000)
    if isinstance(when, int | float) and not isinstance(when, bool):
        return round(when * 1_000_000)
    raise ValidationError(f"expected a datetime or epoch seconds, got {type(when).__name__}")


class Log(ABC):
    """An append-only, partitioned event log.

    Open one with :func:`keel.log.open_log`. Appends are atomic per call; reads return Arrow
    tables with two extra columns, ``_partition`` and ``_offset``.
    """

    url: str

    def __init__(self) -> None:
        self._topics: dict[str, Topic] = {}
        self._sticky = 0
        self._retention_checked: dict[str, float] = {}

    # -- backend primitives -------------------------------------------------------------
    @abstractmethod
    def _save_topic(self, topic: Topic, exist_ok: bool) -> Topic: ...

    @abstractmethod
    def _load_topics(self) -> dict[str, Topic]: ...

    @abstractmethod
    def _drop_topic(self, name: str) -> None: ...

    @abstractmethod
    def _write(self, topic: Topic, segments: list[Segment]) -> list[int]:
        """Store segments atomically; return each segment's base offset."""

    @abstractmethod
    def _segments(
        self, topic: Topic, partition: int, offset: int, max_records: int
    ) -> list[Segment]:
        """Segments covering ``offset`` onward, in order, holding at least ``max_records``."""

    @abstractmethod
    def _segment_index(self, topic: Topic, partition: int) -> list[Segment]:
        """Every stored segment of a partition, in order, without data."""

    @abstractmethod
    def _bounds(self, topic: Topic) -> list[tuple[int, int]]:
        """Per partition: (start offset, end offset)."""

    @abstractmethod
    def _commit(self, group: str, topic: Topic, offsets: Mapping[int, int]) -> None: ...

    @abstractmethod
    def _committed(self, group: str, topic: Topic) -> dict[int, int]: ...

    @abstractmethod
    def _groups(self, topic: Topic) -> list[str]: ...

    @abstractmethod
    def _delete_before(self, topic: Topic, partition: int, offset: int) -> int:
        """Delete whole segments ending at or before ``offset``; return how many."""

    @abstractmethod
    def _identity(self) -> str:
        """The log's identity, made once when the log was created and stored with it."""

    @property
    def identity(self) -> str:
        """A random id this log was given when it was created: what a consumer that keeps
        offsets elsewhere (an online store) records, to tell this log from another one."""
        if not getattr(self, "_identity_cache", None):
            self._identity_cache = self._identity()
        return self._identity_cache

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing here
        """Release connections."""

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- topics -------------------------------------------------------------------------
    def create_topic(self, topic: Topic, *, exist_ok: bool = False) -> Topic:
        """Create ``topic``. With ``exist_ok``, an identical existing topic is returned as is;
        a different one of the same name is a :class:`ConflictError` either way."""
        stored = self._save_topic(topic, exist_ok)
        self._topics[stored.name] = stored
        return stored

    def topic(self, name: str) -> Topic:
        """The topic called ``name``; :class:`TopicNotFoundError` if there is none."""
        found = self._topics.get(name)
        if found is None:
            self._topics = self._load_topics()
            found = self._topics.get(name)
        if found is None:
            from keel.errors import TopicNotFoundError

            raise TopicNotFoundError(name, self._topics)
        return found

    def topics(self) -> list[Topic]:
        self._topics = self._load_topics()
        return sorted(self._topics.values(), key=lambda t: t.name)

    def delete_topic(self, name: str) -> None:
        self.topic(name)
        self._drop_topic(name)
        self._topics.pop(name, None)

    # -- writing ------------------------------------------------------------------------
    def append(self, topic: str, records: Any) -> Appended:
        """Validate ``records`` and append them atomically; return where each row went.

        ``records`` may be a list of dicts, an Arrow table or record batch, or a pandas
        DataFrame. A record that does not fit the schema raises :class:`RecordError` naming
        the topic, row and field, and nothing from the call is appended.
        """
        t = self.topic(topic)
        table = to_table(t, records)
        n = table.num_rows
        if n == 0:
            return Appended(np.zeros(0, np.int64), np.zeros(0, np.int64))
        if t.key is None and t.partitions > 1:
            # Keyless records stay together: the whole call goes to one partition, in turn.
            self._sticky = (self._sticky + 1) % t.partitions
            parts = np.full(n, self._sticky, dtype=np.int64)
        else:
            parts = partition_for(t, table)
        ts = table.column(t.event_time).combine_chunks().cast(pa.int64()).to_numpy()
        order = np.argsort(parts, kind="stable")
        sorted_parts = parts[order]
        cuts = np.flatnonzero(np.diff(sorted_parts)) + 1
        groups = np.split(order, cuts)
        segments = []
        single = len(groups) == 1
        for rows in groups:
            p = int(parts[rows[0]])
            sub = table if single else table.take(rows)
            sub_ts = ts if single else ts[rows]
            segments.append(_segment(p, sub, sub_ts))
        bases = self._write(t, segments)
        offsets = np.empty(n, dtype=np.int64)
        for rows, base in zip(groups, bases, strict=True):
            offsets[rows] = base + np.arange(len(rows), dtype=np.int64)
        self._maybe_apply_retention(t)
        return Appended(parts, offsets)

    def _maybe_apply_retention(self, t: Topic) -> None:
        # Retention runs as a side effect of producing, at most once a second per topic and
        # process, so no background thread is needed on the embedded default.
        if t.retention_ms is None and t.retention_bytes is None:
            return
        now = time.time()
        if now - self._retention_checked.get(t.name, 0.0) >= RETENTION_CHECK_S:
            self._retention_checked[t.name] = now
            self.apply_retention(t.name, now=now)

    # -- reading ------------------------------------------------------------------------
    def read(self, topic: str, partition: int, offset: int, max_records: int = 10_000) -> pa.Table:
        """Up to ``max_records`` records of one partition from ``offset`` on, in order.

        Offsets before the partition's start (removed by retention) read from the start.
        """
        t = self.topic(topic)
        self._check_partition(t, partition)
        if max_records < 1:
            raise ValidationError(f"max_records must be at least 1, got {max_records}")
        segments = self._segments(t, partition, max(offset, 0), max_records)
        return _slice(t, partition, segments, offset, max_records)

    def end_offsets(self, topic: str) -> list[int]:
        """The next offset to be written in each partition."""
        return [end for _, end in self._bounds(self.topic(topic))]

    def start_offsets(self, topic: str) -> list[int]:
        """The oldest offset still stored in each partition."""
        return [start for start, _ in self._bounds(self.topic(topic))]

    def seek(self, topic: str, partition: int, when: datetime | float) -> int:
        """The first offset whose event time is at or after ``when`` (the end if none).

        Like Kafka's offsets-for-times: the first segment whose newest event reaches ``when``,
        then the first record in it that does.
        """
        t = self.topic(topic)
        self._check_partition(t, partition)
        target = to_micros(when)
        for seg in self._segment_index(t, partition):
            if seg.max_ts >= target:
                full = self._segments(t, partition, seg.base, 1)[0]
                ts = full.table().column(t.event_time).cast(pa.int64()).to_numpy()
                return seg.base + int(np.argmax(ts >= target))
        return self._bounds(t)[partition][1]

    # -- consumer groups ----------------------------------------------------------------
    def commit(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Record, atomically, the next offset ``group`` will read in each given partition."""
        t = self.topic(topic)
        _check_group(group)
        for p, off in offsets.items():
            self._check_partition(t, p)
            if not isinstance(off, int | np.integer) or off < 0:
                raise ValidationError(f"offset for partition {p} must be >= 0, got {off!r}")
        self._commit(group, t, {int(p): int(o) for p, o in offsets.items()})

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The committed next offset per partition (partitions never committed are absent)."""
        _check_group(group)
        return self._committed(group, self.topic(topic))

    def groups(self, topic: str) -> list[str]:
        return sorted(self._groups(self.topic(topic)))

    def consumer(
        self,
        group: str,
        topic: str,
        *,
        partitions: Sequence[int] | None = None,
        reset: str = "earliest",
    ) -> Consumer:
        """A consumer in ``group`` reading ``partitions`` (default: all) of ``topic``."""
        return Consumer(self, group, topic, partitions=partitions, reset=reset)

    # -- retention and stats ------------------------------------------------------------
    def apply_retention(self, topic: str | None = None, *, now: float | None = None) -> int:
        """Drop whole segments past each topic's retention; return how many were dropped."""
        now = time.time() if now is None else now
        names = [topic] if topic is not None else [t.name for t in self.topics()]
        dropped = 0
        for name in names:
            t = self.topic(name)
            if t.retention_ms is None and t.retention_bytes is None:
                continue
            for p in range(t.partitions):
                index = self._segment_index(t, p)
                keep_from = 0
                if t.retention_ms is not None:
                    cutoff = now - t.retention_ms / 1000
                    while keep_from < len(index) and index[keep_from].appended_at < cutoff:
                        keep_from += 1
                if t.retention_bytes is not None:
                    sizes = np.array([s.nbytes for s in index[keep_from:]], dtype=np.int64)
                    # Keep the newest segments whose total fits; drop older ones whole.
                    kept_bytes = np.cumsum(sizes[::-1])[::-1] if len(sizes) else sizes
                    over = np.flatnonzero(kept_bytes > t.retention_bytes)
                    if len(over):
                        keep_from += int(over[-1]) + 1
                if keep_from:
                    last = index[keep_from - 1]
                    dropped += self._delete_before(t, p, last.base + last.count)
        return dropped

    def stats(self, topic: str) -> TopicStats:
        t = self.topic(topic)
        bounds = self._bounds(t)
        parts = []
        for p in range(t.partitions):
            index = self._segment_index(t, p)
            parts.append(
                PartitionStats(
                    partition=p,
                    start=bounds[p][0],
                    end=bounds[p][1],
                    segments=len(index),
                    bytes=sum(s.nbytes for s in index),
                    min_ts=min((s.min_ts for s in index), default=None),
                    max_ts=max((s.max_ts for s in index), default=None),
                )
            )
        lag = {}
        for g in self._groups(t):
            done = self._committed(g, t)
            lag[g] = sum(b[1] - max(done.get(p, b[0]), b[0]) for p, b in enumerate(bounds))
        return TopicStats(t, parts, lag)

    def _check_partition(self, t: Topic, partition: int) -> None:
        if not isinstance(partition, int | np.integer) or not 0 <= partition < t.partitions:
            raise ValidationError(
                f"topic {t.name!r} has partitions 0..{t.partitions - 1}, not {partition!r}"
            )


def _check_group(group: str) -> None:
    if not isinstance(group, str) or not group or len(group) > 200:
        raise ValidationError(f"consumer group must be a non-empty name, got {group!r}")


def _segment(partition: int, table: pa.Table, ts: np.ndarray) -> Segment:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=table.num_rows or None)
    data = sink.getvalue().to_pybytes()
    return Segment(
        partition, 0, table.num_rows, int(ts.min()), int(ts.max()), data, nbytes=len(data)
    )


def _slice(
    t: Topic, partition: int, segments: list[Segment], offset: int, max_records: int
) -> pa.Table:
    pieces = []
    offsets = []
    remaining = max_records
    for seg in segments:
        if remaining <= 0:
            break
        start = max(offset - seg.base, 0)
        if start >= seg.count:
            continue
        take = min(seg.count - start, remaining)
        table = seg.table()
        pieces.append(table.slice(start, take))
        offsets.append(np.arange(seg.base + start, seg.base + start + take, dtype=np.int64))
        remaining -= take
    if not pieces:
        return _with_position(t.schema.empty_table(), partition, np.zeros(0, np.int64))
    table = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
    return _with_position(table, partition, np.concatenate(offsets))


def _with_position(table: pa.Table, partition: int, offsets: np.ndarray) -> pa.Table:
    n = table.num_rows
    table = table.append_column(PARTITION, pa.array(np.full(n, partition, dtype=np.int32)))
    return table.append_column(OFFSET, pa.array(offsets, type=pa.int64()))


class Consumer:
    """Reads a topic's partitions from a group's committed offsets and commits progress.

    Positions start at the group's committed offset, or, for a partition never committed, at
    the earliest stored record (``reset="earliest"``) or the end (``reset="latest"``).

    Example
    -------
    >>> from keel.log import open_log, Topic
    >>> log = open_log("sqlite://")
    >>> _ = log.create_topic(Topic("t", {"ts": "timestamp", "x": "int64"}, event_time="ts"))
    >>> from datetime import datetime
    >>> _ = log.append("t", [{"ts": datetime(2026, 1, 1), "x": 7}])
    >>> c = log.consumer("g", "t")
    >>> c.poll()["x"].to_pylist()
    [7]
    >>> c.commit(); log.committed("g", "t")
    {0: 1}
    """

    def __init__(
        self,
        log: Log,
        group: str,
        topic: str,
        *,
        partitions: Sequence[int] | None = None,
        reset: str = "earliest",
    ) -> None:
        if reset not in ("earliest", "latest"):
            raise ValidationError(f"reset must be 'earliest' or 'latest', got {reset!r}")
        _check_group(group)
        self._log = log
        self.group = group
        self.topic = log.topic(topic)
        parts = list(range(self.topic.partitions)) if partitions is None else list(partitions)
        for p in parts:
            log._check_partition(self.topic, p)
        committed = log.committed(group, topic)
        bounds = log._bounds(self.topic)
        self._positions = {
            p: committed.get(p, bounds[p][0] if reset == "earliest" else bounds[p][1])
            for p in parts
        }
        self._next = 0

    @property
    def positions(self) -> dict[int, int]:
        """The next offset this consumer will read, per partition."""
        return dict(self._positions)

    def lag(self) -> int:
        """Records stored but not yet read by this consumer."""
        ends = self._log.end_offsets(self.topic.name)
        return sum(max(ends[p] - pos, 0) for p, pos in self._positions.items())

    def poll(self, max_records: int = 10_000) -> pa.Table:
        """Up to ``max_records`` new records, taken from the partitions in turn."""
        return self._poll(max_records, None)

    def _poll(self, max_records: int, until: list[int] | None) -> pa.Table:
        """As :meth:`poll`, reading no partition past ``until`` (end offsets), if given."""
        parts = list(self._positions)
        tables = []
        remaining = max_records
        for i in range(len(parts)):
            if remaining <= 0:
                break
            p = parts[(self._next + i) % len(parts)]
            wanted = remaining if until is None else min(remaining, until[p] - self._positions[p])
            if wanted <= 0:
                continue
            table = self._log.read(self.topic.name, p, self._positions[p], wanted)
            if table.num_rows:
                self._positions[p] = int(table.column(OFFSET)[-1].as_py()) + 1
                tables.append(table)
                remaining -= table.num_rows
        self._next = (self._next + 1) % max(len(parts), 1)
        if not tables:
            return _with_position(self.topic.schema.empty_table(), 0, np.zeros(0, np.int64))
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def __iter__(self) -> Iterator[pa.Table]:
        """Poll until caught up with the end of the log as it was when iteration began:
        records appended meanwhile are left for the next poll."""
        ends = self._log.end_offsets(self.topic.name)
        while True:
            batch = self._poll(10_000, ends)
            if batch.num_rows == 0:
                return
            yield batch

    def commit(self) -> None:
        """Commit the current positions for the group."""
        self._log.commit(self.group, self.topic.name, self._positions)

    def seek(self, when: datetime | float) -> None:
        """Move every partition to the first record at or after ``when``."""
        for p in self._positions:
            self._positions[p] = self._log.seek(self.topic.name, p, when)

    def seek_to(self, offsets: Mapping[int, int]) -> None:
        for p, off in offsets.items():
            if p not in self._positions:
                raise ValidationError(f"this consumer does not read partition {p}")
            self._positions[p] = int(off)
