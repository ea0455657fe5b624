"""The materializer: log → tiles → online store, one feature view at a time.

It reads the view's source topic from the offsets stored *in the online store*, drops late
events by the same rule the offline path uses, runs the source transform, turns events into
tile rows, merges them with the stored states of the entities they touch, and commits the new
states together with the new offsets and watermarks in one atomic step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from keel.features.definitions import FeatureView
from keel.features.online.base import OnlineStore, Progress
from keel.features.tiles import SEQ_BITS, Layout, TileState, concat
from keel.log import OFFSET, PARTITION, Log

__all__ = ["NO_WATERMARK", "MaterializeStats", "Materializer", "late_mask"]

logger = logging.getLogger(__name__)

NO_WATERMARK = np.iinfo(np.int64).min


@dataclass
class MaterializeStats:
    events: int = 0
    late: int = 0
    entities: int = 0
    seconds: float = 0.0


def late_mask(ts: np.ndarray, watermark: int, lateness_us: int) -> tuple[np.ndarray, int]:
    """Which events (in log order, one partition) are late, and the new watermark.

    An event is late when its time is older than the newest event time seen *before* it in
    its partition, minus the allowed lateness.
    """
    if len(ts) == 0:
        return np.zeros(0, dtype=bool), watermark
    before = np.empty(len(ts), dtype=np.int64)
    before[0] = watermark
    if len(ts) > 1:
        before[1:] = np.maximum(np.maximum.accumulate(ts[:-1]), watermark)
    seen = before != NO_WATERMARK
    late = np.zeros(len(ts), dtype=bool)
    late[seen] = ts[seen] < before[seen] - lateness_us
    return late, int(max(watermark, ts.max()))


class Materializer:
    """Keeps one view's online state up to date with its source topic."""

    def __init__(
        self,
        log: Log,
        store: OnlineStore,
        view: FeatureView,
        layout: Layout,
        *,
        on_commit: Callable[[list[TileState], np.ndarray, TileState], None] | None = None,
        group: str | None = None,
    ) -> None:
        self.on_commit = on_commit
        self.log = log
        self.store = store
        self.view = view
        self.layout = layout
        self.topic = log.topic(view.source.topic)
        # The consumer group its progress is mirrored to (for `keel log stats`); a replica
        # names its own, so the main materializer's lag stays its own.
        self.group = group or f"keel-features.{view.name}"
        # Once: hashing the definition reads the transform's source code, and a follower
        # polling every 0.2 s would otherwise do it on every poll, beside a serving thread.
        self.fingerprint = view.fingerprint
        self.log_identity = log.identity

    def step(self, max_records: int = 200_000) -> MaterializeStats:
        """Consume what is available (up to ``max_records`` per partition) and commit it."""
        progress = self._progress()
        ends = self.log.end_offsets(self.topic.name)
        if all(progress.offsets.get(p, 0) >= end for p, end in enumerate(ends)):
            return MaterializeStats()  # nothing new: no reads
        batches = {}
        for p in range(self.topic.partitions):
            batch = self.log.read(self.topic.name, p, progress.offsets.get(p, 0), max_records)
            if batch.num_rows:
                batches[p] = batch
        return self.apply(batches, progress)

    def backfill(self, history: pa.Table, chunk: int = 500_000) -> MaterializeStats:
        """Rebuild the view's state from landed history (with ``_partition``/``_offset``),
        then leave the offsets where the history ends so :meth:`step` continues from there."""
        self.store.clear(self.view.name)
        total = MaterializeStats()
        parts = history.column(PARTITION).to_numpy()
        for p in range(self.topic.partitions):
            mine = history.filter(pa.array(parts == p)).sort_by(OFFSET)
            for start in range(0, mine.num_rows, chunk):
                stats = self.apply({p: mine.slice(start, chunk)}, self._progress())
                total.events += stats.events
                total.late += stats.late
                total.entities += stats.entities
                total.seconds += stats.seconds
        return total

    def _progress(self) -> Progress:
        progress = self.store.progress(self.view.name)
        if progress.fingerprint and progress.fingerprint != self.fingerprint:
            # The definition changed: the stored tiles mean something else now.
            self.store.clear(self.view.name)
            progress = Progress()
        if progress.log and progress.log != self.log_identity:
            # Offsets into another log (an online store kept while the log was replaced):
            # its states are that log's aggregates. Rebuild from this one.
            logger.warning(
                "view %s: the online store was materialized from another log (%s, not %s); "
                "rebuilding it from this log",
                self.view.name,
                progress.log,
                self.log_identity,
            )
            self.store.clear(self.view.name)
            progress = Progress()
        progress.fingerprint = self.fingerprint
        progress.log = self.log_identity
        return progress

    def apply(self, batches: dict[int, pa.Table], progress: Progress) -> MaterializeStats:
        """Fold one batch per partition (in offset order, starting at the stored offset) into
        the online state, and commit states and progress together."""
        started = time.perf_counter()
        view, topic = self.view, self.topic
        kept: list[pa.Table] = []
        seqs: list[np.ndarray] = []
        stats = MaterializeStats()
        for p, batch in batches.items():
            offsets = batch.column(OFFSET).to_numpy()
            fresh = offsets >= progress.offsets.get(p, 0)
            if not fresh.all():  # already folded in: never count an event twice
                batch = batch.filter(pa.array(fresh))
                offsets = offsets[fresh]
            if batch.num_rows == 0:
                continue
            ts = batch.column(topic.event_time).cast(pa.int64()).to_numpy()
            late, progress.watermarks[p] = late_mask(
                ts, progress.watermarks.get(p, NO_WATERMARK), view.source.lateness_us
            )
            progress.offsets[p] = int(offsets[-1]) + 1
            stats.late += int(late.sum())
            stats.events += batch.num_rows
            if late.any():
                batch = batch.filter(pa.array(~late))
                offsets = offsets[~late]
            kept.append(batch.select([*topic.fields, OFFSET]))
            seqs.append((np.int64(p) << SEQ_BITS) | offsets)
        if stats.events == 0:
            return stats
        events = pa.concat_tables(kept) if len(kept) > 1 else kept[0]
        states: dict[Any, TileState] = {}
        if events.num_rows:
            states, owner, merged = self._merge(events.drop_columns([OFFSET]), np.concatenate(seqs))
        progress.events += stats.events
        progress.late += stats.late
        self.store.commit(view.name, states, progress.touched())
        if self.on_commit is not None and states:
            self.on_commit(list(states.values()), owner, merged)
        # Mirror progress into the log's consumer group so `keel log stats` shows the lag.
        self.log.commit(self.group, topic.name, progress.offsets)
        stats.entities = len(states)
        stats.seconds = time.perf_counter() - started
        return stats

    def _merge(
        self, events: pa.Table, seq: np.ndarray
    ) -> tuple[dict[Any, TileState], np.ndarray, TileState]:
        """New states of the touched entities (in key order), plus their rows stacked:
        the owner of each row (an index into the states) and the rows."""
        events = self.view.source.apply(events)
        key = self.view.entity.join_key
        keys, rows = self.layout.lift(events, key, self.topic.event_time, seq)
        uniq, owner = np.unique(keys, return_inverse=True)
        uniq_list = uniq.tolist()
        old_owner, old = self.store.read_stacked(self.view.name, self.layout, uniq_list)
        merged_owner, merged = self.layout.combine(
            np.concatenate([owner, old_owner]), concat([rows, old], self.layout)
        )
        merged_owner, merged = self.layout.prune(merged_owner, merged)
        cuts = np.flatnonzero(np.diff(merged_owner)) + 1
        starts = np.r_[0, cuts]
        ends = np.r_[cuts, len(merged_owner)]
        out: dict[Any, TileState] = {}
        k, ints, floats, vecs, strs = (
            merged.k,
            merged.ints,
            merged.floats,
            merged.vecs,
            merged.strs,
        )
        no_vecs, no_strs = vecs.shape[1] == 0, strs.shape[1] == 0
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            # Copies, so a state does not keep the whole batch's arrays alive.
            out[uniq_list[merged_owner[s]]] = TileState(
                k[s:e].copy(),
                ints[s:e].copy(),
                floats[s:e].copy(),
                vecs[s:e] if no_vecs else vecs[s:e].copy(),
                strs[s:e] if no_strs else strs[s:e].copy(),
            )
        return out, merged_owner, merged

    def run_until_caught_up(self, max_records: int = 200_000) -> MaterializeStats:
        """Step until nothing is left to read; return the totals."""
        total = MaterializeStats()
        while True:
            stats = self.step(max_records)
            if stats.events == 0:
                return total
            total.events += stats.events
            total.late += stats.late
            total.entities += stats.entities
            total.seconds += stats.seconds

    def run_forever(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Follow the log until ``stop`` is set."""
        while not stop.is_set():
            if self.step().events == 0:
                stop.wait(interval_s)
