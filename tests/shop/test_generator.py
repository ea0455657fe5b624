from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from keel.errors import ValidationError
from keel.log import open_log
from keel.shop import EVENTS, LABELS, PAYMENTS, TOPICS, Shop

START = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def week() -> dict[str, pa.Table]:
    return Shop(seed=3, n_users=2_000, n_items=800, start=START).history(days=7)


def test_tables_fit_their_topics_and_append_to_a_log(week) -> None:
    shop = Shop(seed=3, n_users=50, n_items=40, start=START)
    log = open_log("sqlite://")
    for t in TOPICS:
        log.create_topic(t)
    for name, table in {**shop.catalog(), **shop.history(days=1)}.items():
        assert table.schema == log.topic(name).schema
        assert len(log.append(name, table)) == table.num_rows


def test_same_seed_same_tables() -> None:
    a = Shop(seed=5, n_users=100, n_items=60, start=START).history(days=1)
    b = Shop(seed=5, n_users=100, n_items=60, start=START).history(days=1)
    c = Shop(seed=6, n_users=100, n_items=60, start=START).history(days=1)
    assert all(a[k].equals(b[k]) for k in a)
    assert not a[EVENTS.name].equals(c[EVENTS.name])


def test_times_sorted_and_inside_the_range(week) -> None:
    lo = pa.scalar(START, pa.timestamp("us", tz="UTC"))
    hi = pa.scalar(datetime(2026, 11, 8, tzinfo=UTC), pa.timestamp("us", tz="UTC"))
    for name in (EVENTS.name, PAYMENTS.name):
        ts = week[name]["ts"]
        assert pc.all(pc.greater_equal(ts, lo)).as_py() and pc.all(pc.less(ts, hi)).as_py()
        values = ts.cast(pa.int64()).to_numpy()
        assert (np.diff(values) >= 0).all()


def test_popularity_is_zipf_like(week) -> None:
    views = week[EVENTS.name].filter(pc.equal(week[EVENTS.name]["event_type"], "view"))
    counts = np.sort(np.bincount(views["item_id"].to_numpy()))[::-1]
    top = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top > 0.08  # the top 1% of items take far more than 1% of views


def test_daily_cycle(week) -> None:
    hours = pc.hour(week[EVENTS.name]["ts"]).to_numpy()
    evening = np.isin(hours, [18, 19, 20, 21]).sum()
    night = np.isin(hours, [2, 3, 4, 5]).sum()
    assert evening > 5 * night


def test_fraud_share_and_patterns(week) -> None:
    labels = week[LABELS.name]
    pay = week[PAYMENTS.name]
    joined = pay.join(labels.select(["payment_id", "is_fraud"]), "payment_id")
    fraud = joined.filter(joined["is_fraud"])
    legit = joined.filter(pc.invert(joined["is_fraud"]))
    share = fraud.num_rows / joined.num_rows
    assert 0.004 < share < 0.025
    assert pc.mean(fraud["new_device"].cast(pa.float64())).as_py() > 0.9
    assert pc.mean(legit["new_device"].cast(pa.float64())).as_py() < 0.1
    assert np.median(fraud["amount"].to_numpy()) > 2 * np.median(legit["amount"].to_numpy())


def test_labels_one_per_payment_and_later(week) -> None:
    pay = week[PAYMENTS.name]
    labels = week[LABELS.name]
    assert sorted(labels["payment_id"].to_pylist()) == sorted(pay["payment_id"].to_pylist())
    joined = pay.select(["payment_id", "ts"]).join(
        labels.select(["payment_id", "ts"]).rename_columns(["payment_id", "label_ts"]), "payment_id"
    )
    assert pc.all(pc.greater(joined["label_ts"], joined["ts"])).as_py()


def test_shift_changes_distributions(week) -> None:
    base = Shop(seed=3, n_users=2_000, n_items=800, start=START)
    pricey = base.shift(price_scale=2.0).history(days=7)
    a = np.median(week[PAYMENTS.name]["amount"].to_numpy())
    b = np.median(pricey[PAYMENTS.name]["amount"].to_numpy())
    assert 1.6 < b / a < 2.4
    risky = base.shift(fraud_rate=0.05).history(days=7)[LABELS.name]
    assert pc.mean(risky["is_fraud"].cast(pa.float64())).as_py() > 0.03
    with pytest.raises(ValidationError, match="did you mean 'price_scale'"):
        base.shift(price_scal=2)
    with pytest.raises(ValidationError, match="fraud_rate"):
        base.shift(fraud_rate=1.5)


def test_stream_ticks_at_the_rate_in_time_order() -> None:
    shop = Shop(seed=1, n_users=500, n_items=100, start=START)
    last = None
    counts = []
    for tick in shop.stream(rate=1_000, tick_s=1.0, duration_s=5):
        ts = tick[EVENTS.name]["ts"].cast(pa.int64()).to_numpy()
        counts.append(len(ts))
        assert (np.diff(ts) >= 0).all()
        if last is not None and len(ts):
            assert ts[0] >= last
        if len(ts):
            last = ts[-1]
    assert 600 < np.median(counts) < 1_400


@pytest.mark.parametrize(
    "kwargs",
    [{"n_users": 0}, {"n_items": 3}, {"sessions_per_user_day": 0}],
    ids=["users", "items", "sessions"],
)
def test_bad_arguments(kwargs) -> None:
    with pytest.raises(ValidationError):
        Shop(**kwargs)
    with pytest.raises(ValidationError, match="days"):
        Shop().history(days=-1)
