"""A small world for serving tests: a log of card payments, a feature view, a registry with a
LightGBM model trained on point-in-time features, and a server on a real socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from keel.features import Aggregate, Entity, FeatureStore, FeatureView, Source
from keel.log import Topic, open_log
from keel.registry import Registry

NOW = datetime.now(UTC)


@dataclass
class World:
    log: Any
    features: FeatureStore
    registry: Registry
    rows: list[dict[str, Any]]
    tmp: Path

    def train(self, seed: int, trees: int = 20) -> Any:
        import lightgbm

        rng = np.random.default_rng(seed)
        labels = pa.table(
            {
                "card_id": rng.integers(0, 50, 400),
                "ts": pa.array(
                    [NOW - timedelta(minutes=int(m)) for m in rng.integers(0, 600, 400)],
                    pa.timestamp("us", tz="UTC"),
                ),
                "amount": np.round(rng.gamma(2, 30, 400), 2),
            }
        )
        labels = labels.append_column("y", pa.array((labels["amount"].to_numpy() > 70).astype(int)))
        train = self.features.training_set(labels, ["card"])
        x = pd.DataFrame(
            {
                "card__count_1h": train["card__count_1h"].to_numpy(),
                "card__amount_1d": train["card__amount_1d"].to_numpy(),
                "amount": train["amount"].to_numpy(),
            }
        )
        model = lightgbm.LGBMClassifier(n_estimators=trees, verbose=-1, random_state=seed)
        model.fit(x, train["y"].to_numpy())
        return model, train


@pytest.fixture
def world(tmp_path: Path) -> World:
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    log.create_topic(
        Topic(
            "pay",
            {"ts": "timestamp", "card_id": "int64", "amount": "float64"},
            event_time="ts",
            key="card_id",
            partitions=2,
        )
    )
    rng = np.random.default_rng(1)
    n = 2000
    log.append(
        "pay",
        pa.table(
            {
                "ts": pa.array(
                    [
                        NOW - timedelta(seconds=int(s))
                        for s in np.sort(rng.integers(0, 86400, n))[::-1]
                    ],
                    pa.timestamp("us", tz="UTC"),
                ),
                "card_id": rng.integers(0, 50, n),
                "amount": np.round(rng.gamma(2, 30, n), 2),
            }
        ),
    )
    view = FeatureView(
        "card",
        Entity("card", "card_id"),
        Source("pay"),
        [
            Aggregate(None, "count", timedelta(hours=1), name="count_1h"),
            Aggregate("amount", "sum", timedelta(days=1), name="amount_1d"),
        ],
        tile=timedelta(minutes=5),
    )
    features = FeatureStore(log, views=[view], offline=tmp_path / "offline")
    features.materialize()
    registry = Registry(
        f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"), log=log
    )
    w = World(
        log,
        features,
        registry,
        [
            {"card_id": int(c), "amount": float(a)}
            for c, a in zip(rng.integers(0, 50, 64), rng.gamma(2, 30, 64), strict=True)
        ],
        tmp_path,
    )
    model, train = w.train(seed=1)
    registry.register("fraud", model, training_set=train)
    registry.set_alias("fraud", "champion", 1)
    return w


class Running:
    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def running() -> Iterator[type[Running]]:
    yield Running
