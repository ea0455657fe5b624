"""``keel up`` on the scale-out backends: the log and the online store on Redis, the registry
(and the jobs) on PostgreSQL. The same components, given the same keel.toml; with an online
store of its own, the materializer runs as a component."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from keel.project import Project
from keel.serving.client import call
from keel.supervisor import read_events
from keel.supervisor.state import process_started

pytestmark = pytest.mark.slow


def test_up_on_redis_and_postgres(
    tmp_path: Path, prepare, keel_up, redis_server: str, redis_prefix: str, postgres_db: str
) -> None:
    config = prepare(
        tmp_path / "proj",
        f'log_url = "{redis_server}?prefix={redis_prefix}"\n'
        f'online_url = "{redis_server}?prefix={redis_prefix}:online"\n'
        f'registry_url = "{postgres_db}"\n',
    )
    up = keel_up(config, "--skip", "controller")
    doc = up.wait("every component running", up.all_running)
    assert [c["name"] for c in doc["components"]] == [
        "server",
        "materializer",
        "monitor",
        "scheduler",
        "ui",
    ]
    assert doc["notes"] == {"controller": "left out by --skip"}
    assert doc["routes_from"] == "server" and doc["routes"][0]["serving"] == "fraud@1"
    assert doc["queues"][0]["name"] == "default"

    before = up.component("materializer")
    os.kill(before.pid, signal.SIGKILL)
    up.wait("the materializer back", lambda: up.restarted("materializer", before))
    answer = call(
        up.url,
        "/v1/routes/fraud/predict",
        {"rows": [{"payment_id": 1, "card_id": 3, "user_id": 5, "amount": 20.0}]},
    )
    assert answer["version"] == "fraud@1"

    pids = [c.pid for c in up.state().components]
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0, up.output.read_text()
    assert all(process_started(pid) is None for pid in pids)
    project = Project.load(config)
    kinds = [e.kind for e in read_events(project.log, "materializer")]
    assert kinds == ["started", "healthy", "exited", "restarting", "started", "healthy", "stopped"]
    assert not up.status()["supervisor"]["running"]
    project.registry.close()
