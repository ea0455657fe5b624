"""The HTTP handlers never touch the log on the event loop: a slow log (a remote Redis or
PostgreSQL, a busy SQLite file) then stalls one control call, not every request served
beside it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from keel.config import RouteConfig
from keel.serving import InferenceServer, create_app

LOG_CALLS = ("append", "read", "poll", "topic", "topics", "create_topic", "end_offsets", "stats")


class LoopWatch:
    """The log, noting each call made from a thread that runs an event loop."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self.on_loop: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._log, name)
        if name not in LOG_CALLS or not callable(attr):
            return attr

        def watched(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # a worker thread: where log I/O belongs
            else:
                import traceback

                traceback.print_stack(limit=6)
                self.on_loop.append(name)
            return attr(*args, **kwargs)

        return watched


def test_control_calls_read_and_write_the_log_off_the_event_loop(world, running) -> None:
    watch = LoopWatch(world.log)
    cfg = RouteConfig(name="fraud", model="fraud@champion", features=["card"], max_wait_ms=2)
    server = InferenceServer([cfg], registry=world.registry, features=world.features, log_=watch)
    server.load_all()
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        assert client.post("/v1/routes/fraud/predict", json={"rows": world.rows[:2]}).is_success
        r = client.post("/v1/routes/fraud/traffic", json={"canary": None})
        assert r.status_code == 200, r.text
        assert client.get("/v1/routes/fraud/traffic").status_code == 200
        r = client.post("/v1/routes/fraud/decisions", json={"action": "reject", "by": "oncall"})
        assert r.status_code == 200, r.text
        decisions = client.get("/v1/routes/fraud/traffic").json()["decisions"]
    assert [d.get("by") for d in decisions] == ["oncall"]
    assert watch.on_loop == []
