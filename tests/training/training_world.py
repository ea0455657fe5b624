"""A small payments world for training: a log with payments and their labels (arriving
later), a card feature view, a registry; fraud that amounts and card velocity predict."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from keel.features import Aggregate, Entity, FeatureStore, FeatureView, Source
from keel.log import Log, Topic, open_log
from keel.registry import Registry
from keel.training import Label, LightGBM, Model, TimeSplit

NOW = datetime(2026, 11, 20, tzinfo=UTC)
DAYS = 6
PAYMENTS = Topic(
    "pay",
    {"ts": "timestamp", "payment_id": "int64", "card_id": "int64", "amount": "float64"},
    event_time="ts",
    key="card_id",
    partitions=2,
)
LABELS = Topic(
    "labels",
    {"ts": "timestamp", "payment_id": "int64", "is_fraud": "bool"},
    event_time="ts",
    key="payment_id",
)
CARD = FeatureView(
    "card",
    Entity("card", "card_id"),
    Source("pay"),
    [
        Aggregate(None, "count", timedelta(hours=1), name="count_1h"),
        Aggregate("amount", "sum", timedelta(days=1), name="amount_1d"),
        Aggregate("amount", "max", timedelta(days=1), name="max_1d"),
    ],
    tile=timedelta(minutes=5),
)
# A view whose topic holds no events of the payments' cards: its values are missing.
RISK_TOPIC = Topic(
    "risk", {"ts": "timestamp", "card_id": "int64", "score": "float64"}, event_time="ts"
)
RISK = FeatureView(
    "card_risk",
    Entity("card", "card_id"),
    Source("risk"),
    [Aggregate("score", "max", timedelta(days=1), name="max_score_1d")],
    tile=timedelta(minutes=5),
)


@dataclass
class Payments:
    log: Log
    features: FeatureStore
    registry: Registry
    tmp: Path
    now: datetime = NOW

    def model(self, **changes: Any) -> Model:
        base: dict[str, Any] = dict(
            features=["card"],
            inputs=["amount"],
            label=Label(
                "labels", "is_fraud", id="payment_id", examples="pay", settle=timedelta(days=1)
            ),
            trainer=LightGBM(params={"num_iterations": 30, "num_leaves": 7}, seed=3),
            split=TimeSplit(holdout=timedelta(days=1)),
            metrics=["auc", "logloss", "recall@20"],
        )
        base.update(changes)
        return Model("fraud", **base)


def payments(seed: int = 1, n: int = 6_000, days: int = DAYS) -> tuple[pa.Table, pa.Table]:
    """Payments over ``days`` before NOW; fraud comes in bursts of high amounts on a card, so
    velocity and amount predict it (not perfectly: some fraud is small, some large is not)."""
    rng = np.random.default_rng(seed)
    start = NOW - timedelta(days=days)
    ts = np.sort(rng.integers(0, days * 86_400_000_000, n)) + int(start.timestamp() * 1e6)
    card = rng.integers(0, 300, n)
    amount = np.round(rng.gamma(2.0, 25.0, n), 2)
    fraud = rng.random(n) < 0.04
    amount = np.where(fraud & (rng.random(n) < 0.7), amount * 6, amount)
    # A fraud is followed by a quick second charge on the same card.
    extra = np.flatnonzero(fraud & (rng.random(n) < 0.6))
    ts = np.concatenate([ts, ts[extra] + rng.integers(1, 300_000_000, len(extra))])
    card = np.concatenate([card, card[extra]])
    amount = np.concatenate([amount, np.round(amount[extra] * 0.8, 2)])
    fraud = np.concatenate([fraud, fraud[extra]])
    order = np.argsort(ts, kind="stable")
    ts, card, amount, fraud = ts[order], card[order], amount[order], fraud[order]
    pid = np.arange(len(ts))
    pays = pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "payment_id": pid,
            "card_id": card,
            "amount": amount,
        }
    )
    # Chargebacks come within hours; legitimate payments are confirmed after about a day.
    delay = np.where(fraud, rng.integers(1, 6, len(ts)) * 3_600_000_000, 86_400_000_000)
    lorder = np.argsort(ts + delay, kind="stable")
    labels = pa.table(
        {
            "ts": pa.array((ts + delay)[lorder], pa.timestamp("us", tz="UTC")),
            "payment_id": pid[lorder],
            "is_fraud": fraud[lorder],
        }
    )
    return pays, labels


def make_world(
    tmp: Path, pays: pa.Table, labels: pa.Table, label_topic: Topic = LABELS
) -> Payments:
    log = open_log(f"sqlite:///{tmp / 'log.db'}")
    log.create_topic(PAYMENTS)
    log.create_topic(label_topic)
    log.create_topic(RISK_TOPIC)
    log.append("pay", pays)
    if labels.num_rows:
        log.append(label_topic.name, labels)
    features = FeatureStore(log, views=[CARD, RISK], offline=tmp / "offline")
    registry = Registry(f"sqlite:///{tmp / 'registry.db'}", str(tmp / "artifacts"), log=log)
    return Payments(log, features, registry, tmp)
