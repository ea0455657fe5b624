"""The feature store: one set of definitions, served offline and online.

Example
-------
>>> from datetime import datetime, timedelta, UTC
>>> from keel.log import Topic, open_log
>>> from keel.features import Aggregate, Entity, FeatureStore, FeatureView, Source
>>> log = open_log("sqlite://")
>>> _ = log.create_topic(Topic("pay", {"ts": "timestamp", "user_id": "int64",
...                                    "amount": "float64"}, event_time="ts", key="user_id"))
>>> t0 = datetime(2026, 11, 1, tzinfo=UTC)
>>> _ = log.append("pay", [{"ts": t0, "user_id": 1, "amount": 5.0},
...                        {"ts": t0 + timedelta(minutes=5), "user_id": 1, "amount": 7.0}])
>>> view = FeatureView("user_pay", Entity("user", "user_id"), Source("pay"),
...                    [Aggregate("amount", "sum", timedelta(hours=1))],
...                    tile=timedelta(minutes=5))
>>> import tempfile; store = FeatureStore(log, views=[view], offline=tempfile.mkdtemp())
>>> _ = store.materialize()
>>> store.get_online(["user_pay:amount_sum_1h"], [1], at=t0 + timedelta(minutes=10)).row(0)
{'user_id': 1, 'user_pay__amount_sum_1h': 12.0}
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from keel.errors import ValidationError, did_you_mean
from keel.features.definitions import Feature, FeatureView
from keel.features.materializer import Materializer, MaterializeStats
from keel.features.offline import OfflineStore
from keel.features.online import OnlineStore, open_online_store
from keel.features.plan import Plan, Raw
from keel.features.tiles import Layout, TileState, concat
from keel.features.training import (
    TRAINING_SET_KEY,
    check_labels,
    point_in_time,
    table_sha256,
    view_events,
)
from keel.log import OFFSET, PARTITION, Log, Topic
from keel.log.base import to_micros
from keel.log.schema import parse_type

__all__ = ["FeatureStore", "OnlineResult"]

logger = logging.getLogger(__name__)


@dataclass
class OnlineResult:
    """Online feature values for a batch of keys, with staleness and missing flags."""

    keys: dict[str, list[Any]]
    values: dict[str, Any] = field(default_factory=dict)
    staleness_s: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.keys.values())))

    def row(self, i: int, *, with_meta: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {k: v[i] for k, v in self.keys.items()}
        for name, vals in self.values.items():
            v = vals[i]
            out[name] = v.tolist() if isinstance(v, np.ndarray) else _py(v)
            if with_meta:
                s = self.staleness_s[name][i]
                out[f"{name}.staleness_s"] = None if np.isnan(s) else float(s)
                out[f"{name}.missing"] = bool(self.missing[name][i])
        return out

    def to_pylist(self, *, with_meta: bool = False) -> list[dict[str, Any]]:
        return [self.row(i, with_meta=with_meta) for i in range(len(self))]


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


def column_name(view: str, feature: str) -> str:
    return f"{view}__{feature}"


class FeatureStore:
    """Feature views over a log, with an online store and a Parquet offline store.

    Parameters
    ----------
    log
        The event log the views' sources read.
    views
        The project's feature views (names must be unique).
    online
        An online store, or its URL (default ``memory://``).
    offline
        The offline store's folder (or an :class:`OfflineStore`).
    """

    def __init__(
        self,
        log: Log,
        *,
        views: Sequence[FeatureView],
        online: OnlineStore | str = "memory://",
        offline: OfflineStore | str | os.PathLike[str],
        group_prefix: str = "keel-features",
    ) -> None:
        self.log = log
        self.group_prefix = group_prefix
        self.online = open_online_store(online) if isinstance(online, str) else online
        self.offline = offline if isinstance(offline, OfflineStore) else OfflineStore(offline)
        self._views: dict[str, FeatureView] = {}
        for v in views:
            if v.name in self._views:
                raise ValidationError(f"feature view name {v.name!r} is used twice")
            self._views[v.name] = v
        self._layouts: dict[str, Layout] = {}
        self._materializers: dict[str, Materializer] = {}
        self._plans: dict[str, Plan] = {}
        self._resolved: dict[tuple[str, ...], list[tuple[FeatureView, list[Feature]]]] = {}

    # -- definitions ----------------------------------------------------------------------
    @property
    def views(self) -> list[FeatureView]:
        return list(self._views.values())

    def view(self, name: str) -> FeatureView:
        try:
            return self._views[name]
        except KeyError:
            raise ValidationError(
                f"no feature view {name!r}{did_you_mean(name, self._views)}; views: "
                f"{', '.join(self._views) or 'none'}"
            ) from None

    def layout(self, view: FeatureView | str) -> Layout:
        """Check ``view`` against its topic (columns, key, types) and return its layout."""
        v = self.view(view) if isinstance(view, str) else view
        if v.name not in self._layouts:
            topic = self.log.topic(v.source.topic)
            types = {f.name: f.type for f in topic.schema}
            for name, spec in v.source.fields.items():
                types[name] = parse_type(spec)[0]
            key = v.entity.join_key
            if key not in types:
                raise ValidationError(
                    f"feature view {v.name!r}: topic {topic.name!r} has no column {key!r} "
                    f"(the join key of entity {v.entity.name!r})"
                    f"{did_you_mean(key, types)}"
                )
            for f in v.features:
                if f.column is not None and f.column not in types:
                    raise ValidationError(
                        f"feature view {v.name!r}, feature {f.name!r}: topic {topic.name!r} "
                        f"has no column {f.column!r}{did_you_mean(f.column, types)}"
                    )
            bind = getattr(v.source.transform, "bind", None)
            if callable(bind):
                bind(self.log)
            self._layouts[v.name] = Layout(v, types)
        return self._layouts[v.name]

    def validate(self) -> dict[str, str]:
        """Check every view; return view name → fingerprint."""
        return {v.name: (self.layout(v), v.fingerprint)[1] for v in self.views}

    def columns(self, features: Sequence[str]) -> list[str]:
        """The column names (``view__feature``) that ``features`` resolve to, in order."""
        return [column_name(v.name, f.name) for v, feats in self.resolve(features) for f in feats]

    def resolve(self, features: Sequence[str]) -> list[tuple[FeatureView, list[Feature]]]:
        """``["view:feature", "view"]`` → views with their chosen features, in order."""
        if isinstance(features, str):
            features = [features]
        key = tuple(features)
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        chosen: dict[str, list[Feature]] = {}
        for ref in features:
            view_name, _, feat = ref.partition(":")
            view = self.view(view_name)
            picked = list(view.features) if not feat else [view.feature(feat)]
            bucket = chosen.setdefault(view_name, [])
            bucket.extend(f for f in picked if f not in bucket)
        if not chosen:
            raise ValidationError("no features requested")
        out = [(self._views[n], fs) for n, fs in chosen.items()]
        if len(self._resolved) < 1024:
            self._resolved[key] = out
        return out

    # -- online ---------------------------------------------------------------------------
    def materializer(self, view: str) -> Materializer:
        if view not in self._materializers:
            v = self.view(view)
            warm = (
                (lambda *merged, v=v: self._warm(v, *merged)) if self.online.keeps_objects else None
            )
            self._materializers[view] = Materializer(
                self.log,
                self.online,
                v,
                self.layout(v),
                on_commit=warm,
                group=f"{self.group_prefix}.{v.name}",
            )
        return self._materializers[view]

    def materialize(self, views: Sequence[str] | None = None) -> dict[str, MaterializeStats]:
        """Bring the online store up to date with the log; return what each view consumed."""
        names = list(views) if views is not None else list(self._views)
        return {n: self.materializer(n).run_until_caught_up() for n in names}

    def replica(self, features: Sequence[str], *, name: str) -> FeatureStore:
        """An in-process copy of the views ``features`` read: the same definitions over the
        same log, materialized into its own ``memory://`` online store (progress mirrored to
        the consumer groups ``keel-replica.NAME.VIEW``). A path that must not wait on the
        shared online store — a remote Redis, a SQLite file under load — reads this; keep it
        current with :meth:`follow`."""
        views = list(dict.fromkeys(v.name for v, _ in self.resolve(features)))
        return FeatureStore(
            self.log,
            views=[self.view(v) for v in views],
            online="memory://",
            offline=self.offline,
            group_prefix=f"keel-replica.{name}",
        )

    def follow(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Materialize every view until ``stop`` is set (for servers on ``memory://``)."""
        while not stop.is_set():
            try:
                moved = sum(s.events for s in self.materialize().values())
            except Exception:
                logger.exception("background materialization failed; retrying")
                moved = 0
            if not moved:
                stop.wait(interval_s)

    def backfill(self, views: Sequence[str] | None = None) -> dict[str, MaterializeStats]:
        """Rebuild each view's online state from the offline history, then catch up with
        what the log holds beyond it."""
        names = list(views) if views is not None else list(self._views)
        self.land()
        out = {}
        for n in names:
            v = self.view(n)
            topic = self.log.topic(v.source.topic)
            history = self.offline.read(topic.name, schema=_landed_schema(topic))
            stats = self.materializer(n).backfill(history)
            more = self.materializer(n).run_until_caught_up()
            stats.events += more.events
            stats.late += more.late
            stats.seconds += more.seconds
            out[n] = stats
        return out

    def get_online(
        self,
        features: Sequence[str],
        keys: Sequence[Any] | Mapping[str, Sequence[Any]],
        *,
        at: datetime | float | None = None,
    ) -> OnlineResult:
        """Feature values for ``keys`` as of ``at`` (default now), rolled forward to that time.

        ``keys`` is a list of entity keys when every feature's view shares one entity, or a
        mapping join key → list of keys (all the same length) otherwise.
        """
        resolved = self.resolve(features)
        key_map = self._key_map(keys, resolved)
        n = len(next(iter(key_map.values())))
        at_us = to_micros(datetime.now(UTC) if at is None else at)
        result = OnlineResult(keys={k: list(v) for k, v in key_map.items()})
        at_arr = np.full(n, at_us, dtype=np.int64)
        for view, feats in resolved:
            layout = self.layout(view)
            full = self._full_plan(view)
            keys = key_map[view.entity.join_key]
            states = (
                self.online.read(view.name, layout, keys)
                if self.online.keeps_objects
                else self.online.read_stacked(view.name, layout, keys)
            )
            raw = self._aggregates(full, states, len(keys), at_us // layout.tile)
            res = full.finish(raw, at_arr)
            for f in feats:
                name = column_name(view.name, f.name)
                result.values[name] = res.values[f.name]
                result.staleness_s[name] = res.staleness_s[f.name]
                result.missing[name] = res.missing[f.name]
        return result

    def _full_plan(self, view: FeatureView) -> Plan:
        plan = self._plans.get(view.name)
        if plan is None:
            plan = self._plans[view.name] = Plan(self.layout(view), list(view.features))
        return plan

    def _aggregates(self, plan: Plan, states: Any, n: int, big_k: int) -> Raw:
        """Every feature's aggregates for ``n`` keys in tile ``big_k``: from their stacked rows
        (``(owner, rows)``), or from their state objects, reusing (and keeping) what an
        in-process store memoized on each state for that tile."""
        if not self.online.keeps_objects:
            owner, rows = states
            return plan.compute(owner, rows, n, np.full(n, big_k, dtype=np.int64))
        picks: list[tuple[Raw, int] | None] = [None] * n
        todo = []
        for i, s in enumerate(states):
            if s is None:
                continue
            if s.memo is not None and s.memo[0] == big_k:
                picks[i] = s.memo[1]
            else:
                todo.append(i)
        if todo:
            fresh = [states[i] for i in todo]
            owner, rows = _stack(fresh, plan.layout)
            self._memoize(plan, fresh, owner, rows, big_k)
            for i in todo:
                picks[i] = states[i].memo[1]
        return plan.gather(picks)

    @staticmethod
    def _memoize(
        plan: Plan, states: list[TileState], owner: np.ndarray, rows: TileState, big_k: int
    ) -> None:
        # Each state keeps (tile, (batch result, its row)): one shared result per batch.
        raw = plan.compute(owner, rows, len(states), np.full(len(states), big_k, np.int64))
        for i, s in enumerate(states):
            s.memo = (big_k, (raw, i))

    def _warm(
        self, view: FeatureView, states: list[TileState], owner: np.ndarray, rows: TileState
    ) -> None:
        """After a commit to an in-process store: compute the current tile's aggregates for
        the touched entities in one batch (from the merged rows), so lookups find them ready."""
        if states:
            plan = self._full_plan(view)
            now_k = to_micros(datetime.now(UTC)) // plan.layout.tile
            self._memoize(plan, states, owner, rows, now_k)

    def _key_map(
        self,
        keys: Sequence[Any] | Mapping[str, Sequence[Any]],
        resolved: list[tuple[FeatureView, list[Feature]]],
    ) -> dict[str, list[Any]]:
        needed = {v.entity.join_key for v, _ in resolved}
        if isinstance(keys, Mapping):
            missing = needed - set(keys)
            if missing:
                raise ValidationError(f"keys has no entry for join key {sorted(missing)[0]!r}")
            lengths = {len(keys[k]) for k in needed}
            if len(lengths) > 1:
                raise ValidationError("every join key needs the same number of keys")
            return {k: list(keys[k]) for k in needed}
        if len(needed) > 1:
            raise ValidationError(
                f"these features belong to several entities ({', '.join(sorted(needed))}): "
                "pass keys as a mapping join key → list of keys"
            )
        if isinstance(keys, str | bytes):
            raise ValidationError("keys must be a list of entity keys, not one string")
        return {needed.pop(): list(keys)}

    # -- offline --------------------------------------------------------------------------
    def land(self) -> dict[str, int]:
        """Copy new log records of every source topic into the offline store."""
        topics = sorted({v.source.topic for v in self.views})
        return {t: self.offline.land(self.log, t) for t in topics}

    def training_set(
        self,
        labels: Any,
        features: Sequence[str],
        *,
        timestamp: str = "ts",
        land: bool = True,
        until: Mapping[str, Mapping[int, int]] | None = None,
    ) -> pa.Table:
        """Each label row with every requested feature's value as of the row's timestamp.

        ``labels`` (Arrow table or pandas DataFrame) needs the entity join key(s) and a
        time-zone-aware ``timestamp`` column. Feature columns are named ``view__feature``.
        ``until`` bounds the history per topic and partition (next offset not to read), to
        rebuild an earlier training set exactly; by default everything landed is read.
        The table's schema metadata records how it was built (views and fingerprints,
        offsets, time range, the labels' hash), which the registry keeps as lineage.
        """
        if land:
            self.land()
        table = _to_arrow(labels)
        resolved = self.resolve(features)
        check_labels(table, sorted({v.entity.join_key for v, _ in resolved}), timestamp)
        at_us = (
            table.column(timestamp).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
        )
        latest = int(at_us.max()) if len(at_us) else None
        bounds: dict[str, dict[int, int]] = {}
        out = table
        for view, feats in resolved:
            self.layout(view)
            topic = self.log.topic(view.source.topic)
            history = self.offline.read(view.source.topic, schema=_landed_schema(topic))
            if until is not None:
                history = _bounded(history, until.get(topic.name, {}))
                bounds[topic.name] = {int(p): int(o) for p, o in until.get(topic.name, {}).items()}
            else:
                bounds[topic.name] = self.offline.landed(topic.name)
            events = view_events(view, history, topic.event_time, until_us=latest)
            keys = table.column(view.entity.join_key).combine_chunks()
            values = point_in_time(view, feats, events, keys, at_us)
            for f in feats:
                vals = values[f.name][0]
                out = out.append_column(column_name(view.name, f.name), _arrow(vals))
        info = {
            "features": list(features),
            "views": {
                v.name: {
                    "fingerprint": v.fingerprint,
                    "topic": v.source.topic,
                    "features": [f.name for f in fs],
                }
                for v, fs in resolved
            },
            "offsets": bounds,
            "timestamp": timestamp,
            "time_range": None
            if latest is None
            else [
                datetime.fromtimestamp(int(at_us.min()) / 1e6, UTC).isoformat(),
                datetime.fromtimestamp(latest / 1e6, UTC).isoformat(),
            ],
            "label_columns": table.column_names,
            "labels_sha256": table_sha256(table),
        }
        return out.replace_schema_metadata({TRAINING_SET_KEY: json.dumps(info)})


def _bounded(history: pa.Table, offsets: Mapping[int, int]) -> pa.Table:
    """Only the records before ``offsets`` (partition → next offset not to read)."""
    parts = history.column(PARTITION).to_numpy()
    offs = history.column(OFFSET).to_numpy()
    limit = np.zeros(int(parts.max()) + 1 if len(parts) else 0, dtype=np.int64)
    for p, o in offsets.items():
        if int(p) < len(limit):
            limit[int(p)] = int(o)
    return history.filter(pa.array(offs < limit[parts])) if len(parts) else history


def _landed_schema(topic: Topic) -> pa.Schema:
    return topic.schema.append(pa.field(PARTITION, pa.int32())).append(pa.field(OFFSET, pa.int64()))


def _stack(states: list[TileState | None], layout: Layout) -> tuple[np.ndarray, TileState]:
    if len(states) == 1 and states[0] is not None:  # one key: no copy
        return np.zeros(len(states[0]), dtype=np.int64), states[0]
    present = [(i, s) for i, s in enumerate(states) if s is not None and len(s)]
    owner = (
        np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in present])
        if present
        else np.zeros(0, np.int64)
    )
    return owner, concat([s for _, s in present], layout)


def _to_arrow(labels: Any) -> pa.Table:
    if isinstance(labels, pa.Table):
        return labels
    if type(labels).__name__ == "DataFrame":
        return pa.Table.from_pandas(labels, preserve_index=False)
    raise ValidationError(
        f"labels must be an Arrow table or a pandas DataFrame, not {type(labels).__name__}"
    )


def _arrow(values: Any) -> pa.Array:
    if isinstance(values, np.ndarray) and values.ndim == 2:
        flat = pa.array(values.ravel().astype(np.float32))
        arr = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        # numpy's stubs type any reduction as possibly a scalar; over a 2-d array it is a row.
        mask: np.ndarray = np.isnan(values).all(axis=1)  # type: ignore[assignment]
        if mask.any():
            arr = pa.array(
                [None if m else v for m, v in zip(mask, arr.to_pylist(), strict=True)],
                type=arr.type,
            )
        return arr
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pa.array(values.tolist())
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return pa.array(values, mask=np.isnan(values))
    return pa.array(values)
