"""A route's canary and shadow across restarts: runtime settings and the controller's
rollbacks and ramp steps outlive the server while the configured ones are unchanged."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from keel.clock import ManualClock
from keel.config import CanaryConfig, RouteConfig, Settings, ShadowConfig
from keel.controller import Controller
from keel.errors import NotFoundError, ValidationError
from keel.serving import InferenceServer, create_app
from keel.serving.routes import Rows

CANARY_CARD = 0  # bucket 2.09: in the canary's share at every step from 5%


def make(world, clock, cfg: RouteConfig | None = None, **route_kw) -> InferenceServer:
    cfg = cfg or RouteConfig(
        name="fraud", model="fraud@champion", features=["card"], max_wait_ms=2, **route_kw
    )
    server = InferenceServer(
        [cfg], registry=world.registry, features=world.features, log_=world.log, clock=clock
    )
    server.load_all()
    return server


def close(*servers: InferenceServer) -> None:
    """Stop the shadow candidates' processes of servers that never ran an app."""
    for server in servers:
        for route in server.routes.values():
            if route.shadow_runner is not None:
                route.shadow_runner.close()


def twin(world, alias: str | None = "challenger") -> None:
    """fraud@2: the champion's twin (the same training), at ``alias``."""
    model, train = world.train(seed=1)
    world.registry.register("fraud", model, training_set=train)
    if alias is not None:
        world.registry.set_alias("fraud", alias, 2)


def canary_requests(client: httpx.Client, n: int) -> None:
    row = {"card_id": CANARY_CARD, "amount": 42.0}
    for _ in range(n):
        client.post("/v1/routes/fraud/predict", json={"rows": [row]})


def test_a_rolled_back_canary_stays_rolled_back_after_a_restart(world, running) -> None:
    twin(world)
    clock = ManualClock(1_000.0)
    canary = CanaryConfig(model="fraud@challenger", percent=50, max_p99_ms=1e-6, min_requests=5)
    first = make(world, clock, canary=canary)
    with running(create_app(first)) as srv, httpx.Client(base_url=srv.url) as client:
        canary_requests(client, 5)
        [decision] = Controller(first, world.registry).step()
    assert decision.action == "rollback" and "p99" in decision.reason

    second = make(world, clock, canary=canary)  # keel.toml still says 50%
    route = second.routes["fraud"]
    assert route.config.canary.percent == 0 and route.canary is None
    status = second.traffic("fraud")
    assert status["settings"] == "runtime" and status["canary"]["percent"] == 0
    assert status["decisions"][-1]["action"] == "rollback"
    # Until an operator sets it again.
    second.set_traffic("fraud", canary=CanaryConfig(model="fraud@challenger", percent=20))
    third = make(world, clock, canary=canary)
    assert third.routes["fraud"].config.canary.percent == 20
    assert third.routes["fraud"].canary.version == "fraud@2"


def test_runtime_traffic_settings_survive_a_restart(world, caplog) -> None:
    twin(world)
    clock = ManualClock(1_000.0)
    first = make(world, clock)
    canary = CanaryConfig(model="fraud@challenger", percent=30)
    shadow = ShadowConfig(model="fraud@2", tolerance=0.01, window_s=7200)
    first.set_traffic("fraud", canary=canary, shadow=shadow)
    close(first)
    with caplog.at_level(logging.INFO, logger="keel.serving"):
        second = make(world, clock)  # configured with neither
    try:
        route = second.routes["fraud"]
        assert route.config.canary == canary and route.config.shadow == shadow
        assert route.canary.version == "fraud@2" and route.shadow.version == "fraud@2"
        assert second.traffic("fraud")["settings"] == "runtime"
        assert "set at runtime" in caplog.text and "fraud@challenger at 30%" in caplog.text
    finally:
        close(second)


def test_a_shadow_cleared_at_runtime_stays_cleared(world) -> None:
    twin(world)
    clock = ManualClock(1_000.0)
    shadow = ShadowConfig(model="fraud@2")
    first = make(world, clock, shadow=shadow)
    first.set_traffic("fraud", shadow=None)
    close(first)
    second = make(world, clock, shadow=shadow)
    route = second.routes["fraud"]
    assert route.config.shadow is None and route.shadow is None and route.shadow_runner is None


KEEL_TOML = """
[[routes]]
name = "fraud"
model = "fraud@champion"
features = ["card"]
max_wait_ms = 2

[routes.canary]
model = "fraud@challenger"
percent = {percent}
"""


def routes_of(path: Path, percent: float) -> RouteConfig:
    path.write_text(KEEL_TOML.format(percent=percent))
    return Settings.load(path, env={}, project_dir=path.parent).routes[0]


def test_keel_toml_edited_after_a_runtime_setting_wins(world, caplog) -> None:
    twin(world)
    clock = ManualClock(1_000.0)
    toml = world.tmp / "keel.toml"
    first = make(world, clock, routes_of(toml, 10))
    first.set_traffic("fraud", canary=CanaryConfig(model="fraud@challenger", percent=30))
    assert make(world, clock, routes_of(toml, 10)).routes["fraud"].config.canary.percent == 30

    # The operator edits the canary in keel.toml and restarts: the file's setting wins…
    with caplog.at_level(logging.INFO, logger="keel.serving"):
        edited = make(world, clock, routes_of(toml, 20))
    assert edited.routes["fraud"].config.canary.percent == 20
    assert edited.traffic("fraud")["settings"] == "configured"
    assert "serving the configured ones (which changed since)" in caplog.text
    # …and keeps winning on later restarts, until a new runtime setting is made over it.
    again = make(world, clock, routes_of(toml, 20))
    assert again.routes["fraud"].config.canary.percent == 20
    again.set_traffic("fraud", canary=CanaryConfig(model="fraud@challenger", percent=40))
    assert make(world, clock, routes_of(toml, 20)).routes["fraud"].config.canary.percent == 40
    # Going back to the earlier file is an edit too.
    assert make(world, clock, routes_of(toml, 10)).routes["fraud"].config.canary.percent == 10


def test_a_ramp_resumes_at_its_step_after_a_restart(world, running) -> None:
    twin(world)
    clock = ManualClock(1_000.0)
    canary = CanaryConfig(
        model="fraud@challenger", steps=[5, 25, 50, 100], min_requests=3, step_requests=3
    )
    first = make(world, clock, canary=canary)
    controller = Controller(first, world.registry)
    with running(create_app(first)) as srv, httpx.Client(base_url=srv.url) as client:
        for _ in range(2):
            canary_requests(client, 3)
            [decision] = controller.step()
            assert decision.action == "advance"
    assert first.traffic("fraud")["canary"]["step"] == 3

    second = make(world, clock, canary=canary)  # keel.toml's ramp starts at 5%
    status = second.traffic("fraud")["canary"]
    assert (status["percent"], status["step"], status["steps"]) == (50, 3, [5, 25, 50, 100])
    assert status["serving"] == "fraud@2" and status["requests"] == 0  # evidence starts over
    assert Controller(second, world.registry).step() == []


def test_a_runtime_setting_that_no_longer_loads_names_the_way_out(world) -> None:
    twin(world)
    clock = ManualClock(1_000.0)
    first = make(world, clock)
    first.set_traffic("fraud", canary=CanaryConfig(model="fraud@challenger", percent=30))
    world.registry.set_alias("fraud", "challenger", None)
    with pytest.raises(NotFoundError, match=r"set at runtime .* keel\.toml"):
        make(world, clock)
    # Editing the route's traffic settings in keel.toml serves the file's.
    edited = make(world, clock, canary=CanaryConfig(model="fraud@2", percent=5))
    assert edited.routes["fraud"].canary.version == "fraud@2"


def test_canary_and_primary_requests_count_in_one_metric_by_one_status_rule(world) -> None:
    """Both paths record through Metrics.observe_request: "ok" or the exception's class."""
    twin(world)
    server = make(world, ManualClock(1_000.0))
    server.set_traffic("fraud", canary=CanaryConfig(model="fraud@challenger", percent=30))
    other = next(r for r in world.rows if r["card_id"] != CANARY_CARD)

    async def requests() -> None:
        await server.start()
        try:
            await server.infer("fraud", Rows([{"card_id": CANARY_CARD, "amount": 42.0}], 1))
            await server.infer("fraud", Rows([other], 1))
            for row in ({"card_id": CANARY_CARD}, {"card_id": other["card_id"]}):
                with pytest.raises(ValidationError):
                    await server.infer("fraud", Rows([row], 1))  # no amount: bad on each
        finally:
            await server.stop()

    asyncio.run(requests())
    close(server)
    text = generate_latest(server.metrics.registry).decode()
    for version in ("fraud@1", "fraud@2"):
        for status in ("ok", "ValidationError"):
            line = f'keel_requests_total{{route="fraud",status="{status}",version="{version}"}} 1.0'
            assert line in text, (line, text)
