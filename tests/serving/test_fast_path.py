"""The fast path: its own model, following its own alias, and kept apart from what the
route's prediction log, monitor and shadow are about."""

from __future__ import annotations

import time

import httpx
import lightgbm
import pandas as pd

from keel.config import FastPathConfig, MonitorConfig, ShadowConfig
from keel.prediction_log import topic_name
from keel.serving import create_app

STRICT = {"x-keel-deadline-ms": "5"}


def _small(world, seed: int, columns: list[str]) -> None:
    """Register a small fraud_small version on ``columns`` of the world's training set."""
    _, train = world.train(seed=seed, trees=3)
    x = pd.DataFrame({c: train[c].to_numpy() for c in columns})
    model = lightgbm.LGBMClassifier(n_estimators=3, verbose=-1, random_state=seed)
    model.fit(x, train["y"].to_numpy())
    world.registry.register("fraud_small", model, training_set=train)


def test_the_fast_path_follows_its_own_alias(fraud_server, world, running) -> None:
    columns = ["card__count_1h", "card__amount_1d", "amount"]
    _small(world, 4, columns)
    _small(world, 5, columns)
    world.registry.set_alias("fraud_small", "fast", 1)
    fast = FastPathConfig(model="fraud_small@fast", features=["card"], below_ms=20)
    server = fraud_server(fast_path=fast)
    rows = {"rows": world.rows[:2]}
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        first = client.post("/v1/routes/fraud/predict", json=rows, headers=STRICT).json()
        assert first["version"] == "fraud_small@1"
        world.registry.set_alias("fraud_small", "fast", 2, reason="a better small model")
        deadline = time.monotonic() + 20
        while True:
            r = client.post("/v1/routes/fraud/predict", json=rows, headers=STRICT)
            if r.json()["version"] == "fraud_small@2":
                break
            assert time.monotonic() < deadline, "the fast path never followed its alias"
            time.sleep(0.05)
        relaxed = client.post("/v1/routes/fraud/predict", json=rows)
        assert relaxed.json()["version"] == "fraud@1"


def test_fast_answers_stay_out_of_the_prediction_log_and_the_shadow(
    fraud_server, world, running
) -> None:
    _small(world, 4, ["card__count_1h", "amount"])  # other inputs than the route's model
    candidate, train = world.train(seed=2, trees=5)
    world.registry.register("fraud", candidate, training_set=train)
    cfg = {
        "fast_path": FastPathConfig(model="fraud_small@1", features=["card"], below_ms=20),
        "monitor": MonitorConfig(id="payment_id"),
        "shadow": ShadowConfig(model="fraud@2", sample=1.0),
    }
    server = fraud_server(**cfg)
    rows = [{**r, "payment_id": 5000 + i} for i, r in enumerate(world.rows[:24])]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        for i in range(0, 24, 3):
            strict = i % 2 == 1
            r = client.post(
                "/v1/routes/fraud/predict",
                json={"rows": rows[i : i + 3]},
                headers=STRICT if strict else {},
            )
            assert r.status_code == 200, r.text
            assert r.json()["version"] == ("fraud_small@1" if strict else "fraud@1")
        deadline = time.monotonic() + 10
        while not server.shadows_idle() and time.monotonic() < deadline:
            time.sleep(0.02)
        shadowed = server.routes["fraud"].shadow_state.requests
    logged = world.log.read(topic_name("fraud"), 0, 0, 10**6)  # flushed on shutdown
    relaxed = [str(r["payment_id"]) for i in range(0, 24, 3) if i % 2 == 0 for r in rows[i : i + 3]]
    assert sorted(logged["request_id"].to_pylist()) == sorted(relaxed)
    assert set(logged["version"].to_pylist()) == {"fraud@1"}
    assert shadowed == 4  # the four relaxed requests, none of the fast ones
