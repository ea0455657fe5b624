"""The monitor job over a served route's prediction log: drift, estimated and realized
performance, staleness, skew, events, gauges and restarts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import gamma

from keel.config import LabelsConfig, MonitorConfig, RouteConfig
from keel.errors import NotFoundError
from keel.log import Topic
from keel.monitoring import Monitor, events, history, row_loss
from keel.serving import InferenceServer
from keel.serving.routes import Rows

LABELS = "pay_labels"


def _risk(amount: np.ndarray) -> np.ndarray:
    """The true fraud probability: uncertain near 70, sure far from it."""
    return 1 / (1 + np.exp(-(amount - 70) / 6))


@pytest.fixture
def risk_route(world):
    """A model trained on 8,000 labelled payments, served with a monitor block."""
    import lightgbm

    rng = np.random.default_rng(3)
    n = 8000
    amount = np.round(rng.gamma(2, 30, n), 2)
    # Labelled in the last 20 minutes, so the card features were what they are when served.
    minutes = np.sort(rng.integers(0, 20, n))[::-1]
    labels = pa.table(
        {
            "card_id": rng.integers(0, 50, n),
            "ts": pa.array(
                [world.now - timedelta(minutes=int(m)) for m in minutes],
                pa.timestamp("us", tz="UTC"),
            ),
            "amount": amount,
            "y": (rng.random(n) < _risk(amount)).astype(np.int64),
        }
    )
    train = world.features.training_set(labels, ["card"])
    names = ["card__count_1h", "card__amount_1d", "amount"]
    x = np.column_stack([train[c].to_numpy() for c in names])
    cut = int(n * 0.7)
    model = lightgbm.LGBMClassifier(n_estimators=60, verbose=-1, random_state=0)
    model.fit(x[:cut], train["y"].to_numpy()[:cut], feature_name=names)
    world.registry.register("risk", model, training_set=train)
    world.registry.set_alias("risk", "champion", 1)
    world.log.create_topic(
        Topic(LABELS, {"ts": "timestamp", "payment_id": "int64", "y": "int64"}, event_time="ts")
    )
    return RouteConfig(
        name="risk",
        model="risk@champion",
        features=["card"],
        max_wait_ms=2,
        monitor=MonitorConfig(
            id="payment_id",
            window_rows=400,
            labels=LabelsConfig(topic=LABELS, id="payment_id", label="y"),
        ),
    )


def serve(world, cfg: RouteConfig, amounts: np.ndarray, first_id: int) -> None:
    server = InferenceServer(
        [cfg], registry=world.registry, features=world.features, log_=world.log
    )
    server.load_all()
    rng = np.random.default_rng(first_id)
    cards = rng.integers(0, 50, len(amounts))

    async def go() -> None:
        await server.start()
        for i in range(0, len(amounts), 10):
            rows = [
                {"payment_id": first_id + j, "card_id": int(cards[j]), "amount": float(amounts[j])}
                for j in range(i, min(i + 10, len(amounts)))
            ]
            await server.infer(cfg.name, Rows(rows, len(rows)))
        await server.stop()

    asyncio.run(go())


def test_drift_half_way_is_flagged_and_the_loss_estimate_tracks_the_realized(
    world, risk_route
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    rng = np.random.default_rng(11)
    # Healthy traffic as the reference's distribution is, quantile by quantile (a random
    # draw of 1,200 can itself be a few percent harder than the reference, as much as the
    # alert level allows for a window of 400), in random order.
    healthy = np.round(rng.permutation(gamma(2, scale=30).ppf((np.arange(1200) + 0.5) / 1200)), 2)
    shifted = np.round(rng.normal(70, 6, 1200), 2)  # all near the uncertain boundary
    serve(world, risk_route, np.concatenate([healthy, shifted]), first_id=0)

    metrics = CollectorRegistry()
    monitor = Monitor(
        risk_route,
        log_=world.log,
        registry=world.registry,
        features=world.features,
        metrics=metrics,
    )
    records = monitor.step()
    assert [r["window"] for r in records] == list(range(6))
    logged = world.log.read("keel.predictions.risk", 0, 0, 10_000)
    scores = logged["output__score"].to_numpy()[
        np.argsort(logged["request_id"].to_numpy().astype(int))
    ]
    before, after = records[:3], records[3:]
    assert all("drift:amount" not in r["alerts"] for r in before)
    assert all("drift:amount" in r["alerts"] for r in after)
    # The model's own outputs moved too, and its estimated loss rose past the threshold.
    assert all(r["prediction"]["drifted"] for r in after)
    assert all(not r["performance"]["alert"] for r in before)
    assert all(r["performance"]["alert"] for r in after)
    est = [r["performance"]["estimated"] for r in records]
    assert min(est[3:]) > max(est[:3])
    # One retrain request when the estimate first crossed, not one per window.
    requests = events(world.log, "risk", ("retrain_request",))
    assert len(requests) == 1 and requests[0]["window"] == 3
    # Served features equal the offline ones rebuilt at the served time: no skew.
    for r in records:
        for name, got in r["skew"]["training_serving"].items():
            assert got["compared"] > 0 and got["mismatched"] == 0, name
        assert r["skew"]["versions"] == {"risk@1": 1.0}
        assert 0 < r["skew"]["top_entity_share"] < 0.2
        assert r["staleness"]["card__amount_1d"]["p99"] >= 0
    exported = generate_latest(metrics).decode()
    assert 'keel_drift_alert{feature="amount",route="risk"} 1.0' in exported
    assert "keel_estimated_loss" in exported

    # The monitor restarts: it carries on after the last window instead of scoring it again.
    again = Monitor(risk_route, log_=world.log, registry=world.registry, features=world.features)
    assert (again.windows_, again.next_offset_) == (6, 2400)
    assert again.step() == []

    # Labels arrive later, joined by request id (also to windows scored before the restart,
    # half of them now and half after another restart): realized loss per window.
    ids = np.arange(2400)
    amounts = np.concatenate([healthy, shifted])
    y = (np.random.default_rng(5).random(2400) < _risk(amounts)).astype(np.int64)
    now = pa.scalar(0, pa.int64()).cast(pa.timestamp("us", tz="UTC")).as_py()
    first, second = ids % 2 == 0, ids % 2 == 1
    world.log.append(
        LABELS, pa.table({"ts": [now] * 1200, "payment_id": ids[first], "y": y[first]})
    )
    assert again.step() == []
    assert all(w["performance"]["labelled"] == 200 for w in history(world.log, "risk"))
    third = Monitor(risk_route, log_=world.log, registry=world.registry, features=world.features)
    world.log.append(
        LABELS, pa.table({"ts": [now] * 1200, "payment_id": ids[second], "y": y[second]})
    )
    assert third.step() == []
    merged = history(world.log, "risk")
    realized = [w["performance"]["realized"] for w in merged]
    assert all(w["performance"]["labelled"] == 400 for w in merged)
    assert min(realized[3:]) > max(realized[:3])
    # The realized loss of each window is over all its labels, across the restart.
    for w, lo, hi in zip(merged, range(0, 2400, 400), range(400, 2800, 400), strict=True):
        truth = float(np.mean(row_loss("logloss", y[lo:hi], scores[lo:hi])))
        assert w["performance"]["realized"] == pytest.approx(truth)
    # The estimate is close to what the labels later said, on both sides of the shift.
    assert np.corrcoef(est, realized)[0, 1] > 0.9
    assert abs(np.mean(est[3:]) - np.mean(realized[3:])) < 0.25 * np.mean(realized[3:])
    # Still over the threshold after the restarts: the standing alert asked for its
    # retrain already, so no second request.
    serve(world, risk_route, np.round(rng.normal(70, 6, 400), 2), first_id=5000)
    (late,) = third.step()
    assert late["performance"]["alert"]
    assert len(events(world.log, "risk", ("retrain_request",))) == 1


def test_a_route_without_a_prediction_log_says_how_to_get_one(world, risk_route) -> None:
    monitor = Monitor(risk_route, log_=world.log, registry=world.registry, features=world.features)
    with pytest.raises(NotFoundError, match=r"no prediction log yet.*\[routes.monitor\]"):
        monitor.step()


def test_an_embedding_route_is_watched_against_its_first_predictions(world) -> None:
    """A text embedder has no training set: its first logged predictions are the reference,
    and a change of topic in the texts is embedding drift (MMD on the output vectors)."""
    from keel.serving.routes import Tensors

    cfg = RouteConfig(
        name="embed",
        model="builtin:all-MiniLM-L6-v2",
        monitor=MonitorConfig(reference_rows=240, window_rows=80),
    )
    rng = np.random.default_rng(2)
    shop = ["red running shoes", "a leather wallet", "wireless earbuds", "a cotton t-shirt",
            "a coffee grinder", "a yoga mat", "a steel water bottle", "a wool scarf"]  # fmt: skip
    news = ["the central bank raised interest rates", "a storm closed the harbour",
            "the election results were contested", "a new vaccine was approved"]  # fmt: skip

    def texts(pool: list[str], n: int) -> list[str]:
        return [f"{rng.choice(pool)} {rng.integers(1, 99)}" for _ in range(n)]

    server = InferenceServer([cfg], log_=world.log)
    server.load_all()

    async def go() -> None:
        await server.start()
        batches = [texts(shop, 240 + 80), texts(news, 80)]
        for batch in batches:
            for i in range(0, len(batch), 16):
                part = np.array(batch[i : i + 16], dtype=object)
                await server.infer("embed", Tensors({"text": part}, len(part)))
        await server.stop()

    asyncio.run(go())
    monitor = Monitor(cfg, log_=world.log, registry=None)
    records = monitor.step()
    assert [r["window"] for r in records] == [0, 1]
    healthy, shifted = records
    assert healthy["prediction"]["statistic"] == "mmd" and not healthy["prediction"]["drifted"]
    assert shifted["prediction"]["drifted"] and "prediction" in shifted["alerts"]
    assert shifted["prediction"]["value"] > 5 * healthy["prediction"]["value"]


def _retrain(world, names: list[str], seed: int) -> int:
    """Register another version of ``risk`` on the first training set's rows, reading
    ``names``, and promote it; returns its number."""
    import lightgbm

    first = world.registry.get("risk", 1)
    train = world.registry.training_set("risk", first.version, world.features)
    x = np.column_stack([train[c].to_numpy() for c in names])
    model = lightgbm.LGBMClassifier(n_estimators=40, verbose=-1, random_state=seed)
    model.fit(x, train["y"].to_numpy(), feature_name=names)
    version = world.registry.register("risk", model, training_set=train).version
    world.registry.set_alias("risk", "champion", version, reason="promotion")
    return version


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["card__count_1h", "card__amount_1d", "amount"], id="same-inputs"),
        pytest.param(["card__amount_1d", "amount"], id="other-inputs"),
    ],
)
def test_the_monitor_follows_the_version_the_route_serves(world, risk_route, names) -> None:
    rng = np.random.default_rng(5)
    serve(world, risk_route, np.round(rng.gamma(2, 30, 800), 2), first_id=0)
    monitor = Monitor(risk_route, log_=world.log, registry=world.registry, features=world.features)
    first = monitor.step()
    assert [r["version"] for r in first] == ["risk@1", "risk@1"]

    version = _retrain(world, names, seed=2)
    serve(world, risk_route, np.round(rng.gamma(2, 30, 800), 2), first_id=10_000)
    records = monitor.step()
    ref = f"risk@{version}"
    # Its own reference (its training set, through lineage) and its own inputs.
    assert monitor.reference_.version == ref and monitor.reference_.features == names
    assert [r["version"] for r in records] == [ref, ref]
    assert [r["window"] for r in records] == [2, 3]
    assert all({f["feature"] for f in r["features"]} == set(names) for r in records), (
        "every window is scored on the new version's inputs"
    )
    (followed,) = events(world.log, "risk", ("reference",))
    assert followed["previous"] == "risk@1" and followed["version"] == ref
    if names == ["card__amount_1d", "amount"]:
        # Logged beside the route's topic, because its records differ; read there.
        assert followed["topic"].startswith("keel.predictions.risk.")
    else:
        assert followed["topic"] == "keel.predictions.risk"
    logged = world.log.read(followed["topic"], 0, followed["from_offset"], 1)
    assert logged["version"][0].as_py() == ref

    # A restart carries on with the followed version, after its last window.
    again = Monitor(risk_route, log_=world.log, registry=world.registry, features=world.features)
    assert again.topic == followed["topic"] and again.windows_ == 4
    serve(world, risk_route, np.round(rng.gamma(2, 30, 400), 2), first_id=20_000)
    (next_window,) = again.step()
    assert next_window["window"] == 4 and next_window["version"] == ref
