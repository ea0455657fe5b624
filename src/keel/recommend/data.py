"""Interactions read from the log by offsets, with the user's features as of each one.

A training run and each fine-tune read exact offset ranges: a full training reads from the
offsets at the start of its window to those at its training time; a fine-tune reads from where
its parent version stopped (recorded in the parent's lineage) to the log's current end. No
interaction is read twice or skipped between two versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.errors import ValidationError, did_you_mean
from keel.features import FeatureStore
from keel.log import Log
from keel.recommend.definitions import Recommender

__all__ = [
    "Interactions",
    "check_recommender",
    "last_features",
    "offsets_at",
    "read_interactions",
]

US = 1_000_000
UNKNOWN_CATEGORY = "<unknown>"


@dataclass
class Interactions:
    """Aligned arrays, one entry per interaction, in log order within each partition."""

    users: np.ndarray  # int64 ids
    items: np.ndarray  # int64 ids
    ts: np.ndarray  # int64 µs
    weight: np.ndarray  # float32
    category: np.ndarray  # str
    purchase: np.ndarray  # bool
    features: np.ndarray  # float32 (n, features), NaN: missing
    feature_names: list[str]
    topic: str
    start: dict[int, int]
    end: dict[int, int]
    _sha256: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def sha256(self) -> str:
        """A content hash of the interactions (what a checkpoint is tied to)."""
        if self._sha256 is None:
            h = hashlib.sha256()
            for a in (self.users, self.items, self.ts, self.weight, self.features):
                h.update(np.ascontiguousarray(a).tobytes())
            h.update(
                repr((self.topic, sorted(self.start.items()), sorted(self.end.items()))).encode()
            )
            self._sha256 = h.hexdigest()
        return self._sha256

    def select(self, mask: np.ndarray) -> Interactions:
        return Interactions(
            self.users[mask],
            self.items[mask],
            self.ts[mask],
            self.weight[mask],
            self.category[mask],
            self.purchase[mask],
            self.features[mask],
            self.feature_names,
            self.topic,
            self.start,
            self.end,
        )

    def time_range(self) -> list[str]:
        if not len(self.ts):
            return []
        return [_iso(int(self.ts.min())), _iso(int(self.ts.max()))]


def check_recommender(rec: Recommender, log: Log, features: FeatureStore) -> None:
    """Everything the declaration names exists: the topic and its columns, the user
    features (views or ``view:feature``, keyed by the user column)."""
    known = [t.name for t in log.topics()]
    if rec.interactions not in known:
        raise ValidationError(
            f"recommender {rec.name!r}: topic {rec.interactions!r} is not in the log"
            f"{did_you_mean(rec.interactions, known)} (keel apply creates declared topics)"
        )
    names = log.topic(rec.interactions).schema.names
    for col in (rec.user, rec.item, rec.kind, rec.category):
        if col not in names:
            raise ValidationError(
                f"recommender {rec.name!r}: topic {rec.interactions!r} has no column {col!r}"
                f"{did_you_mean(col, names)}"
            )
    if rec.features:
        for view, _ in features.resolve(rec.features):
            if view.entity.join_key != rec.user:
                raise ValidationError(
                    f"recommender {rec.name!r}: feature view {view.name!r} is keyed by "
                    f"{view.entity.join_key!r}, not the user column {rec.user!r}"
                )


def offsets_at(log: Log, topic: str, when: datetime) -> dict[int, int]:
    """Per partition, the first offset at or after ``when`` (the end when none is)."""
    n = len(log.end_offsets(topic))
    return {p: int(log.seek(topic, p, when)) for p in range(n)}


def read_interactions(
    rec: Recommender,
    log: Log,
    features: FeatureStore | None,
    start: Mapping[int, int],
    end: Mapping[int, int],
    *,
    feature_names: list[str] | None = None,
) -> Interactions:
    """The interactions of ``rec.interactions`` in offsets ``[start, end)`` per partition,
    with the user's features as of each (point in time, from the feature store)."""
    topic = log.topic(rec.interactions)
    names = set(topic.schema.names)
    missing = [c for c in (rec.user, rec.item, rec.kind, rec.category) if c not in names]
    if missing:
        raise ValidationError(
            f"recommender {rec.name!r}: topic {rec.interactions!r} has no column "
            f"{missing[0]!r}{did_you_mean(missing[0], sorted(names))}"
        )
    parts = []
    for p, lo in sorted(start.items()):
        at, hi = int(lo), int(end.get(p, lo))
        while at < hi:
            chunk = log.read(rec.interactions, p, at, min(hi - at, 50_000))
            if not chunk.num_rows:
                break
            parts.append(
                chunk.select([topic.event_time, rec.user, rec.item, rec.kind, rec.category])
            )
            at += chunk.num_rows
    if parts:
        table = pa.concat_tables(parts)
    else:
        table = pa.schema(
            [
                topic.schema.field(c)
                for c in (topic.event_time, rec.user, rec.item, rec.kind, rec.category)
            ]
        ).empty_table()
    kinds = table.column(rec.kind).to_numpy(zero_copy_only=False).astype(str)
    weight_of = {k: float(w) for k, w in rec.weights.items()}
    weight = (
        np.array([weight_of.get(k, 0.0) for k in kinds], dtype=np.float32)
        if len(kinds)
        else np.zeros(0, np.float32)
    )
    keep = weight > 0
    ts = table.column(topic.event_time).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    users = table.column(rec.user).to_numpy().astype(np.int64)[keep]
    ts_us = ts.to_numpy().astype(np.int64)[keep]
    names_out = list(feature_names or [])
    feats = np.zeros((int(keep.sum()), 0), dtype=np.float32)
    if rec.features and features is not None:
        feats, names_out = _user_features(rec, features, users, ts_us, feature_names)
    return Interactions(
        users=users,
        items=table.column(rec.item).to_numpy().astype(np.int64)[keep],
        ts=ts_us,
        weight=weight[keep],
        category=table.column(rec.category).to_numpy(zero_copy_only=False).astype(str)[keep],
        purchase=(kinds == rec.purchase)[keep],
        features=feats,
        feature_names=names_out,
        topic=rec.interactions,
        start={int(p): int(o) for p, o in start.items()},
        end={int(p): int(o) for p, o in end.items()},
    )


def _user_features(
    rec: Recommender,
    store: FeatureStore,
    users: np.ndarray,
    ts_us: np.ndarray,
    names: list[str] | None,
) -> tuple[np.ndarray, list[str]]:
    """The user's numeric features as of each interaction (one point-in-time join)."""
    rows = pa.table(
        {
            rec.user: pa.array(users, pa.int64()),
            "ts": pa.array(ts_us, pa.timestamp("us", tz="UTC")),
        }
    )
    table = store.training_set(rows, rec.features, timestamp="ts")
    if names is None:
        names = [
            c
            for c in store.columns(rec.features)
            if pa.types.is_integer(table.schema.field(c).type)
            or pa.types.is_floating(table.schema.field(c).type)
        ]
    out = np.empty((len(users), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        col = table.column(name)
        out[:, j] = pc.fill_null(col.cast(pa.float64()), float("nan")).to_numpy()
    return out, list(names)


def last_features(data: Interactions, users: np.ndarray) -> np.ndarray | None:
    """Each of ``users``' features at their last interaction in ``data`` (``None`` when the
    model reads no features)."""
    if not data.features.shape[1]:
        return None
    order = np.lexsort((data.ts, data.users))
    u = data.users[order]
    last = np.r_[u[1:] != u[:-1], True]
    table = dict(zip(u[last].tolist(), data.features[order][last], strict=True))
    return np.stack([table[int(x)] for x in users])


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / US, UTC).isoformat()
