"""The fast path: its own model, following its own alias, and kept apart from what the
route's prediction log, monitor and shadow are about."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from datetime import UTC, datetime

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


def _fast_server(world, fraud_server):
    """The fraud route with a fast path of fraud_small@1 on the card view."""
    _small(world, 4, ["card__count_1h", "card__amount_1d", "amount"])
    return fraud_server(
        fast_path=FastPathConfig(model="fraud_small@1", features=["card"], below_ms=20)
    )


def test_the_fast_path_reads_its_own_replica_kept_current_from_the_log(
    fraud_server, world, running, wait_until
) -> None:
    server = _fast_server(world, fraud_server)
    fast = server.routes["fraud"].fast_path
    assert fast.features is not None and fast.features is not server.features
    card = world.rows[0]["card_id"]
    # Caught up at load: the replica holds what the shared store holds.
    ours = fast.features.get_online(["card"], [card]).values
    shared = server.features.get_online(["card"], [card]).values
    assert ours == shared
    main_group = world.log.committed("keel-features.card", "pay")
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        before = client.post(
            "/v1/routes/fraud/predict", json={"rows": [world.rows[0]]}, headers=STRICT
        ).json()
        assert before["version"] == "fraud_small@1"
        now = datetime.now(UTC)
        world.log.append("pay", [{"ts": now, "card_id": card, "amount": 5_000.0}] * 3)
        # The server keeps the replica current; the shared store is nobody's to follow here.
        wait_until(
            lambda: (
                fast.features.get_online(["card"], [card]).values["card__count_1h"][0]
                == ours["card__count_1h"][0] + 3
            ),
            "the replica to fold in the new payments",
        )
        assert server.features.get_online(["card"], [card]).values == shared
    # Its progress is its own consumer group's: the shared materializer's lag is untouched.
    assert world.log.committed("keel-features.card", "pay") == main_group
    assert sum(world.log.committed("keel-replica.fraud.card", "pay").values()) == sum(
        world.log.end_offsets("pay")
    )


def test_a_stalled_main_route_does_not_hold_up_the_fast_path(
    fraud_server, world, running, wait_until
) -> None:
    server = _fast_server(world, fraud_server)
    # The shared online store stalls (a Redis under load, a locked SQLite file): every
    # lookup of the main route waits on it.
    release, entered = threading.Event(), threading.Event()
    shared_get = server.features.get_online

    def stalled(*args, **kwargs):
        entered.set()
        release.wait(30)
        return shared_get(*args, **kwargs)

    server.features.get_online = stalled
    rows = {"rows": [world.rows[0]]}
    with (
        running(create_app(server)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        slow = pool.submit(c.post, "/v1/routes/fraud/predict", json=rows)
        wait_until(entered.is_set, "the main route to reach the stalled store")
        for _ in range(5):
            r = c.post("/v1/routes/fraud/predict", json=rows, headers=STRICT)
            assert r.status_code == 200 and r.json()["version"] == "fraud_small@1"
        assert not slow.done()  # the main route is still held
        release.set()
        assert slow.result(30).json()["version"] == "fraud@1"
