"""Canary ramps: a step at a time on healthy evidence to a completed rollout, rolled back at
any step on errors or latency; in-process and against a server's control API."""

from __future__ import annotations

import json

import httpx
import lightgbm
import numpy as np
import pandas as pd
import pytest

from keel.clock import ManualClock
from keel.config import CanaryConfig, RouteConfig
from keel.controller import Controller, RemoteController
from keel.errors import ValidationError
from keel.serving import InferenceServer, create_app
from keel.serving.server import TRAFFIC
from keel.serving.traffic import bucket

CANARY_CARD = 0  # bucket 2.09: in the canary's share at every step from 5%
PRIMARY_CARD = next(k for k in range(50) if bucket(k) > 90)  # the primary's until 100%
STEPS = [5, 25, 50, 100]


def make(world, clock, model: str = "fraud@champion", **canary_kw) -> InferenceServer:
    canary = CanaryConfig(model="fraud@challenger", steps=STEPS, **canary_kw)
    cfg = RouteConfig(name="fraud", model=model, features=["card"], max_wait_ms=2, canary=canary)
    server = InferenceServer(
        [cfg], registry=world.registry, features=world.features, log_=world.log, clock=clock
    )
    server.load_all()
    return server


def challenger(world, *, broken: bool = False) -> None:
    """fraud@2 at fraud@challenger: the champion's twin, or (``broken``) a model that needs
    a field ``extra`` that only some requests carry."""
    if broken:
        rng = np.random.default_rng(5)
        x = pd.DataFrame(
            {
                name: rng.random(200)
                for name in ("card__count_1h", "card__amount_1d", "amount", "extra")
            }
        )
        model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(x, rng.random(200) > 0.5)
        world.registry.register("fraud", model)
    else:
        model, train = world.train(seed=1)
        world.registry.register("fraud", model, training_set=train)
    world.registry.set_alias("fraud", "challenger", 2)


def send(client: httpx.Client, n: int, card: int = CANARY_CARD, **fields) -> set[str]:
    """``n`` requests for ``card``; the versions that answered them (or the status codes)."""
    answered = set()
    for _ in range(n):
        r = client.post(
            "/v1/routes/fraud/predict", json={"rows": [{"card_id": card, "amount": 42.0, **fields}]}
        )
        answered.add(r.json()["version"] if r.status_code == 200 else str(r.status_code))
    return answered


def decision_events(world) -> list[dict]:
    rows = world.log.read(TRAFFIC.name, 0, 0, 10_000).to_pylist()
    return [json.loads(e["payload"]) for e in rows if e["kind"] == "decision"]


def test_a_ramp_advances_step_by_step_to_a_completed_rollout(world, running) -> None:
    challenger(world)
    clock = ManualClock(1_000.0)
    server = make(world, clock, min_requests=4, step_s=60)
    controller = Controller(server, world.registry)
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        for step, percent in enumerate(STEPS, start=1):
            status = client.get("/v1/routes/fraud/traffic").json()["canary"]
            assert (status["step"], status["percent"], status["requests"]) == (step, percent, 0)
            assert send(client, 4) == {"fraud@2"}
            if percent < 100:
                assert send(client, 2, PRIMARY_CARD) == {"fraud@1"}
            assert controller.step() == []  # enough requests, not yet step_s at this step
            clock.advance(60)
            [decision] = controller.step()
            assert decision.evidence["step"] == step and decision.evidence["requests"] == 4
            if percent < 100:
                assert decision.action == "advance" and decision.percent == STEPS[step]
        assert decision.action == "complete" and "rollout is complete" in decision.reason
        assert world.registry.get("fraud", "champion").version == 2  # the alias moved
        assert server.routes["fraud"].current.version == "fraud@2"  # and the route swapped
        status = client.get("/v1/routes/fraud/traffic").json()
        assert status["primary"] == "fraud@2" and status["canary"] is None
        assert server.routes["fraud"].canary is None
        assert send(client, 2, PRIMARY_CARD) == send(client, 2) == {"fraud@2"}
    events = decision_events(world)
    assert [(e["action"], e["step"], e["percent"]) for e in events] == [
        ("advance", 1, 25),
        ("advance", 2, 50),
        ("advance", 3, 100),
        ("complete", 4, None),
    ]
    assert all(e["evidence"]["error_rate"] == 0 for e in events)
    move = world.registry.alias_history("fraud", "champion")[-1]
    assert "canary rollout complete" in move.reason


def test_a_ramp_rolls_back_on_errors_at_step_two(world, running) -> None:
    challenger(world, broken=True)
    server = make(world, ManualClock(0.0), min_requests=4, max_error_rate=0.2)
    controller = Controller(server, world.registry)
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        assert send(client, 4, extra=1.0) == {"fraud@2"}  # healthy at step 1
        assert [d.action for d in controller.step()] == ["advance"]
        assert send(client, 3, extra=1.0) == {"fraud@2"}
        assert send(client, 1) == {"400"}  # 1 error in 4: over 20%
        [decision] = controller.step()
        assert decision.action == "rollback" and decision.percent == 0
        assert "error rate 25.00% over 20.00% at step 2 of 4 (25%)" in decision.reason
        status = client.get("/v1/routes/fraud/traffic").json()
        assert status["canary"]["percent"] == 0 and status["canary"]["step"] is None
        assert send(client, 3) == {"fraud@1"}  # the canary takes no traffic
        assert controller.step() == []
    assert world.registry.get("fraud", "champion").version == 1
    assert [(e["action"], e["step"]) for e in decision_events(world)] == [
        ("advance", 1),
        ("rollback", 2),
    ]


def test_a_ramp_rolls_back_on_latency(world, running) -> None:
    challenger(world)
    server = make(world, ManualClock(0.0), min_requests=3, max_p99_ms=1e-6)
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        send(client, 2)
        controller = Controller(server, world.registry)
        assert controller.step() == []  # fewer than min_requests: not judged yet
        send(client, 1)
        [decision] = controller.step()
    assert decision.action == "rollback" and "p99" in decision.reason
    assert server.routes["fraud"].config.canary.percent == 0
    assert server.routes["fraud"].current.version == "fraud@1"


def test_the_remote_controller_ramps_through_the_control_api(world, running) -> None:
    challenger(world)
    server = make(world, ManualClock(0.0), min_requests=3)
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        controller = RemoteController(srv.url, world.registry)
        for percent in STEPS[1:]:
            send(client, 3)
            [decision] = controller.step()
            assert (decision.action, decision.percent) == ("advance", percent)
            assert server.routes["fraud"].config.canary.percent == percent
        send(client, 3)
        [decision] = controller.step()
        assert decision.action == "complete"
        assert world.registry.get("fraud", "champion").version == 2
        assert server.routes["fraud"].current.version == "fraud@2"
        status = client.get("/v1/routes/fraud/traffic").json()
        assert status["canary"] is None and status["primary"] == "fraud@2"
        assert [d["action"] for d in status["decisions"]] == ["advance"] * 3 + ["complete"]


def test_the_remote_controller_rolls_a_failing_step_back(world, running) -> None:
    challenger(world, broken=True)
    server = make(world, ManualClock(0.0), min_requests=3, max_error_rate=0.1)
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        controller = RemoteController(srv.url, world.registry)
        send(client, 3, extra=1.0)
        assert [d.action for d in controller.step()] == ["advance"]
        send(client, 3)
        [decision] = controller.step()
        assert decision.action == "rollback" and "at step 2" in decision.reason
        status = client.get("/v1/routes/fraud/traffic").json()
        assert status["canary"]["percent"] == 0
        assert status["decisions"][-1]["step"] == 2
    # The controller's settings are runtime settings: the rollback outlives a restart.
    restarted = make(world, ManualClock(0.0), min_requests=3, max_error_rate=0.1)
    assert restarted.routes["fraud"].config.canary.percent == 0


@pytest.mark.parametrize(
    ("model", "canary", "message"),
    [
        pytest.param("fraud@1", "fraud@challenger", "serve the route from an alias", id="pinned"),
        pytest.param("fraud@champion", "other@2", "is not a version of 'fraud'", id="other"),
    ],
)
def test_a_ramp_that_could_not_complete_is_refused(world, model, canary, message) -> None:
    challenger(world)
    cfg = RouteConfig(
        name="fraud",
        model=model,
        features=["card"],
        canary=CanaryConfig(model=canary, steps=STEPS),
    )
    server = InferenceServer([cfg], registry=world.registry, features=world.features)
    with pytest.raises(ValidationError, match=message):
        server.load_all()
