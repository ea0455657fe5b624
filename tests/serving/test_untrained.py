"""A route whose model is not trained yet does not stop the server: it answers 503 saying so,
and serves once a version is registered under its alias."""

from __future__ import annotations

import time

import httpx

from keel.config import RouteConfig
from keel.serving import InferenceServer, create_app


def test_a_route_without_a_version_waits_for_one(world, running) -> None:
    routes = [
        RouteConfig(name="fraud", model="fraud@champion", features=["card"], max_wait_ms=2),
        RouteConfig(name="fresh", model="fresh@champion", features=["card"], max_wait_ms=2),
    ]
    server = InferenceServer(
        routes, registry=world.registry, features=world.features, log_=world.log
    )
    server.load_all()
    assert list(server.routes) == ["fraud"] and "fresh" in server.pending
    rows = {"rows": world.rows[:2]}
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v2/health/ready").status_code == 200
        assert c.post("/v1/routes/fraud/predict", json=rows).status_code == 200
        waiting = c.post("/v1/routes/fresh/predict", json=rows)
        assert waiting.status_code == 503, waiting.text
        assert "no model to serve yet" in waiting.json()["error"]
        assert "keel train" in waiting.json()["error"]
        listed = {r["name"]: r for r in c.get("/v1/routes").json()}
        assert listed["fresh"]["serving"] is None and "fresh" in listed["fresh"]["why"]

        model, train = world.train(seed=3)
        world.registry.register("fresh", model, training_set=train)
        world.registry.set_alias("fresh", "champion", 1)
        deadline = time.monotonic() + 20
        while (r := c.post("/v1/routes/fresh/predict", json=rows)).status_code != 200:
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.json()["version"] == "fresh@1" and not server.pending
