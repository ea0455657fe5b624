"""Online == offline: for random event streams the online value read at t equals the
point-in-time training-set value at t, on every online backend."""

from __future__ import annotations

import tempfile
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.features import Aggregate, Entity, FeatureStore, FeatureView, Last, Source
from keel.log import Topic, open_log

T0 = datetime(2026, 11, 1, tzinfo=UTC)
MIN = 60


def double(table: pa.Table) -> pa.Table:
    amount = table.column("amount")
    emb = pa.FixedSizeListArray.from_arrays(
        pa.array(
            np.repeat(amount.to_numpy(zero_copy_only=False), 2).astype(np.float32)
            * np.tile([1.0, -1.0], len(amount)).astype(np.float32)
        ),
        2,
    )
    return table.append_column("emb", emb)


def make_views(topic: str, tile_min: int, ttl_min: int | None) -> list[FeatureView]:
    user = Entity("user", "user_id")
    src = Source(
        topic,
        transform=double,
        fields={"emb": "vector[float32, 2]"},
        allowed_lateness=timedelta(minutes=30),
    )
    tile = timedelta(minutes=tile_min)
    feats = [
        Aggregate(None, "count", tile * 1),
        Aggregate("amount", "sum", tile * 3),
        Aggregate("amount", "mean", tile * 4),
        Aggregate("amount", "min", tile * 2),
        Aggregate("amount", "max", tile * 6),
        Aggregate("amount", "last", tile * 2),
        Aggregate("note", "count", tile * 5),
        Aggregate("emb", "vector_mean", tile * 3),
        Last("country"),
        Last("amount", name="amount_ever"),
    ]
    ttl = None if ttl_min is None else timedelta(minutes=ttl_min)
    return [FeatureView("u", user, src, feats, tile=tile, ttl=ttl)]


event = st.tuples(
    st.integers(0, 4),  # user
    st.integers(-40, 40),  # minutes relative to the cursor
    st.floats(-1e3, 1e3, allow_nan=False).map(lambda x: round(x, 3)),
    st.sampled_from(["DE", "FR", None]),
    st.booleans(),
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(st.lists(event, min_size=0, max_size=25), min_size=1, max_size=4),
    gaps=st.lists(st.integers(0, 300), min_size=4, max_size=4),
    tile_min=st.sampled_from([5, 15, 60]),
    ttl_min=st.sampled_from([None, 45, 600]),
)
def test_online_equals_offline(online_url, batches, gaps, tile_min, ttl_min) -> None:
    topic = f"pay-{uuid.uuid4().hex[:8]}"
    log = open_log("sqlite://")
    log.create_topic(
        Topic(
            topic,
            {
                "ts": "timestamp",
                "user_id": "int64",
                "amount": "float64",
                "note": "string?",
                "country": "string?",
            },
            event_time="ts",
            key="user_id",
            partitions=2,
        )
    )
    from keel.features import open_online_store

    online = open_online_store(online_url)
    views = make_views(topic, tile_min, ttl_min)
    with tempfile.TemporaryDirectory() as offline:
        store = FeatureStore(log, views=views, online=online, offline=offline)
        cursor = 0
        newest = T0
        for batch, gap in zip(batches, gaps, strict=False):
            rows = []
            for user, minutes, amount, country, has_note in batch:
                ts = T0 + timedelta(minutes=cursor + minutes)
                rows.append(
                    {
                        "ts": ts,
                        "user_id": user,
                        "amount": amount,
                        "note": "x" if has_note else None,
                        "country": country,
                    }
                )
                newest = max(newest, ts)
            if rows:
                log.append(topic, rows)
            cursor += 60
            store.materialize()
            at = newest + timedelta(minutes=gap)
            users = list(range(5))
            online_vals = store.get_online(["u"], users, at=at)
            again = store.get_online(["u"], users, at=at)  # served from what the first kept
            for name, got in again.values.items():
                _assert_same(name, got, [_none(v) for v in online_vals.values[name]])
            labels = pa.table(
                {"user_id": users, "ts": pa.array([at] * 5, pa.timestamp("us", tz="UTC"))}
            )
            offline_vals = store.training_set(labels, ["u"])
            for name, got in online_vals.values.items():
                want = offline_vals.column(name).to_pylist()
                _assert_same(name, got, want)
    online.close()
    log.close()


def _assert_same(name: str, online, offline) -> None:
    for i, (a, b) in enumerate(zip(online, offline, strict=True)):
        if isinstance(a, np.ndarray):
            if b is None:
                assert np.isnan(a).all(), (name, i, a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{name}[{i}]")
            continue
        if isinstance(a, float | np.floating) and np.isnan(a):
            assert b is None, (name, i, a, b)
        elif isinstance(a, float | np.floating):
            assert b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b)), (name, i, a, b)
        else:
            assert a == b, (name, i, a, b)


def _none(v):
    if isinstance(v, np.ndarray):
        return None if np.isnan(v).all() else v
    if isinstance(v, float | np.floating) and np.isnan(v):
        return None
    return v
