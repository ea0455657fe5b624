"""The prediction log: served requests, as the model saw them, on a log topic."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pyarrow as pa
import pytest

from keel.config import MonitorConfig, RouteConfig
from keel.errors import ValidationError
from keel.prediction_log import OUTPUT_PREFIX, STALE_PREFIX, topic_name
from keel.serving import InferenceServer, create_app


def monitored(world, **monitor_kw) -> InferenceServer:
    cfg = RouteConfig(
        name="fraud",
        model="fraud@champion",
        features=["card"],
        max_wait_ms=5,
        monitor=MonitorConfig(id="payment_id", **monitor_kw),
    )
    server = InferenceServer(
        [cfg], registry=world.registry, features=world.features, log_=world.log
    )
    server.load_all()
    return server


def read_log(world, route: str = "fraud") -> pa.Table:
    return world.log.read(topic_name(route), 0, 0, 10**9)


def test_records_hold_the_features_exactly_as_served(world, running) -> None:
    server = monitored(world)
    rows = [{**r, "payment_id": 1000 + i} for i, r in enumerate(world.rows[:40])]
    answers = {}
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        for i in range(0, 40, 4):  # requests of 4 rows
            r = client.post("/v1/routes/fraud/predict", json={"rows": rows[i : i + 4]})
            assert r.status_code == 200, r.text
            for row, score in zip(rows[i : i + 4], r.json()["predictions"]["score"], strict=True):
                answers[str(row["payment_id"])] = score
    logged = read_log(world)  # the server flushes on shutdown
    assert logged.num_rows == 40
    assert set(logged["request_id"].to_pylist()) == set(answers)
    assert set(logged["version"].to_pylist()) == {"fraud@1"}
    assert all(ms > 0 for ms in logged["latency_ms"].to_pylist())
    by_id = {r["request_id"]: r for r in logged.to_pylist()}
    for row in rows:
        rec = by_id[str(row["payment_id"])]
        assert rec["key__card_id"] == str(row["card_id"]) and rec["amount"] == row["amount"]
        assert rec[OUTPUT_PREFIX + "score"] == pytest.approx(answers[str(row["payment_id"])])
        assert rec[STALE_PREFIX + "card__amount_1d"] >= 0
    # The logged inputs are the model's inputs: predicting them again gives the logged outputs.
    model = world.registry.load("fraud", 1)
    names = ["card__count_1h", "card__amount_1d", "amount"]
    x = np.column_stack([logged[n].to_numpy() for n in names])
    np.testing.assert_allclose(model.predict(x), logged[OUTPUT_PREFIX + "score"].to_numpy())
    # ...and the joined ones are what the online store holds for those cards.
    online = world.features.get_online(
        ["card"], [int(e) for e in logged["key__card_id"].to_pylist()]
    )
    np.testing.assert_allclose(
        logged["card__amount_1d"].to_numpy(), online.values["card__amount_1d"]
    )


def test_a_sample_of_requests_is_logged(world) -> None:
    server = monitored(world, sample=0.25)

    async def go() -> None:
        await server.start()
        from keel.serving.routes import Rows

        for i in range(400):
            await server.infer("fraud", Rows([world.rows[i % 64]], 1))
        await server.stop()

    asyncio.run(go())
    n = read_log(world).num_rows
    assert 60 <= n <= 140  # 100 expected; binomial sd ~ 8.7


def test_a_text_route_logs_its_texts_and_embedding_vectors(world) -> None:
    cfg = RouteConfig(name="embed", model="builtin:all-MiniLM-L6-v2", monitor=MonitorConfig())
    server = InferenceServer([cfg], log_=world.log)
    server.load_all()

    async def go() -> None:
        from keel.serving.routes import Tensors

        await server.start()
        texts = np.array(["a red bicycle", "fresh bread", "a red bike"], dtype=object)
        await server.infer("embed", Tensors({"text": texts}, 3))
        await server.stop()

    asyncio.run(go())
    logged = read_log(world, "embed")
    assert logged["text"].to_pylist() == ["a red bicycle", "fresh bread", "a red bike"]
    vectors = np.stack(logged[OUTPUT_PREFIX + "embedding"].to_numpy(zero_copy_only=False))
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]  # bike is nearer bicycle than bread


def test_bad_monitor_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="monitor sample"):
        MonitorConfig(sample=0)
    with pytest.raises(ValidationError, match="did you mean 'logloss'"):
        MonitorConfig(loss="loglos")
    with pytest.raises(ValidationError, match="window_rows"):
        MonitorConfig(window_rows=3)
    with pytest.raises(ValidationError, match="min_loss_rise must be >= 0, got nan"):
        MonitorConfig(min_loss_rise=float("nan"))
