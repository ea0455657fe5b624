"""``keel up`` and ``keel status`` end to end: real processes on a real project. Components
are SIGKILLed one at a time and come back; a job submitted while the scheduler is dead still
runs; the monitor carries on from the window it stopped at; SIGTERM stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keel.monitoring.events import events as monitor_events
from keel.project import Project
from keel.serving.client import call
from keel.supervisor import read_events
from keel.supervisor.state import process_started

pytestmark = pytest.mark.slow


def predict(url: str, start: int, n: int) -> None:
    """``n`` payments scored by the fraud route, ten per request."""
    for first in range(start, start + n, 10):
        rows = [
            {"payment_id": i, "card_id": i % 40, "user_id": i % 300, "amount": 5.0 + i % 90}
            for i in range(first, min(first + 10, start + n))
        ]
        call(url, "/v1/routes/fraud/predict", {"rows": rows}, timeout=30)


def windows(project: Project) -> list[int]:
    return [e["window"] for e in monitor_events(project.log, "fraud", ("window",))]


def test_up_restarts_what_is_killed_and_stops_on_sigterm(tmp_path: Path, prepare, keel_up) -> None:
    config = prepare(tmp_path / "proj")
    project = Project.load(config)
    up = keel_up(config)
    wait_for = up.wait
    doc = wait_for("every component running", up.all_running)
    url = up.url
    assert doc["supervisor"]["running"] and doc["supervisor"]["url"] == url
    assert [c["name"] for c in doc["components"]] == [
        "server",
        "monitor",
        "scheduler",
        "controller",
        "ui",
    ]
    assert "memory://" in doc["notes"]["materializer"]
    assert doc["routes_from"] == "server"
    assert [(r["name"], r["serving"]) for r in doc["routes"]] == [("fraud", "fraud@1")]
    assert [q["name"] for q in doc["queues"]] == ["default"]

    # The controller dies and comes back.
    before = up.component("controller")
    os.kill(before.pid, signal.SIGKILL)
    wait_for("the controller back", lambda: up.restarted("controller", before))

    predict(url, 0, 100)
    wait_for("two monitored windows", lambda: len(windows(project)) >= 2)

    # The scheduler dies holding its lease; a job submitted meanwhile waits for the next
    # scheduler, which takes the lease over once it expires, and runs it.
    from keel.jobs.manager import submit

    before = up.component("scheduler")
    os.kill(before.pid, signal.SIGKILL)
    spec = project.job("command", argv=[sys.executable, "-c", "print('no job lost')"], name="hi")
    job = submit(project.settings.jobs, project.jobs, spec, now=time.time())
    after = wait_for("the scheduler back", lambda: up.restarted("scheduler", before))
    assert after.pid != before.pid and str(after.last_exit) == "killed by SIGKILL"

    # The monitor dies between windows and carries on from the next one.
    before = up.component("monitor")
    os.kill(before.pid, signal.SIGKILL)
    wait_for("the monitor back", lambda: up.restarted("monitor", before))
    predict(url, 100, 100)
    seen = wait_for("four monitored windows", lambda: len(w := windows(project)) >= 4 and w)
    assert seen == list(range(len(seen)))  # no gap, no window scored twice

    done = wait_for(
        "the job to finish", lambda: (j := project.jobs.get(job.id)).state.finished and j
    )
    assert done.state.value == "succeeded", done.reason

    doc = wait_for("every component running again", up.all_running)
    assert {c["name"]: c["restarts"] for c in doc["components"]} == {
        "server": 0,
        "monitor": 1,
        "scheduler": 1,
        "controller": 1,
        "ui": 0,
    }
    for name in ("monitor", "scheduler", "controller"):
        kinds = [e.kind for e in read_events(project.log, name)]
        assert kinds == ["started", "healthy", "exited", "restarting", "started", "healthy"]

    # The real command prints the same view as JSON.
    printed = subprocess.run(
        [sys.executable, "-m", "keel", "-c", str(config), "status", "--json"],
        capture_output=True,
        check=True,
        text=True,
    )
    assert {c["name"] for c in json.loads(printed.stdout)["components"]} == set(
        c["name"] for c in doc["components"]
    )

    pids = [c.pid for c in up.state().components]
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0, up.output.read_text()
    assert all(process_started(pid) is None for pid in pids)
    final = up.status()
    assert not final["supervisor"]["running"]
    assert {c["state"] for c in final["components"]} == {"not running"}
    assert final["routes_from"] == "registry"
    assert [(r["name"], r["serving"]) for r in final["routes"]] == [("fraud", "fraud@1")]
    assert read_events(project.log, "supervisor")[-1].kind == "down"
    assert "crash-loop" not in up.output.read_text()
    project.registry.close()
