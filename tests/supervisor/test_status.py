"""``keel status`` when ``keel up`` is not running, and ``keel up``'s refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.supervisor import ComponentStatus, State, SupervisorState
from keel.supervisor.state import process_started, write_state

runner = CliRunner()

SETTINGS = """
[[routes]]
name = "fraud"
model = "fraud@champion"

[routes.canary]
model = "fraud@challenger"
percent = 5.0
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("KEEL_CONFIG", "KEEL_LOG_URL", "KEEL_DATA_DIR", "KEEL_REGISTRY_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    assert runner.invoke(app, ["init", str(tmp_path / "proj")]).exit_code == 0
    path = tmp_path / "proj" / "keel.toml"
    path.write_text(SETTINGS)
    return path


def keel(config: Path, *args: str):
    return runner.invoke(app, ["-c", str(config), *args])


def test_status_before_keel_up_ever_ran(config: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from keel.project import Project

    project = Project.load(config)
    project.registry.register("fraud", LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    project.registry.set_alias("fraud", "champion", 1)
    project.registry.close()
    # No server answers on this port: the routes come from keel.toml and the registry.
    result = keel(config, "status", "--json", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["supervisor"] == {
        "running": False,
        "pid": None,
        "since": None,
        "url": None,
        "note": "keel up has not run in this project",
    }
    assert doc["components"] == [] and doc["alerts"] == []
    assert doc["routes_from"] == "registry" and "no Keel server answers" in doc["routes_note"]
    (route,) = doc["routes"]
    assert (route["serving"], route["canary"]["serving"], route["canary"]["percent"]) == (
        "fraud@1",
        None,  # fraud@challenger points nowhere yet
        5.0,
    )
    shown = keel(config, "status", "--url", "http://127.0.0.1:9")
    assert shown.exit_code == 0, shown.output
    assert "keel up has not run" in shown.output and "fraud@challenger 5%" in shown.output


def test_a_dead_supervisor_shows_as_not_running(config: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_state(
            config.parent / ".keel" / "up" / "state.json",
            SupervisorState(
                pid=dead.pid,
                started=1.0,
                started_at=time.time(),
                updated_at=time.time(),
                components=[
                    ComponentStatus(name="server", state=State.RUNNING, since=0.0, pid=dead.pid),
                    ComponentStatus(
                        name="monitor",
                        state=State.RUNNING,
                        since=0.0,
                        pid=orphan.pid,
                        started=process_started(orphan.pid),
                    ),
                ],
                notes={"materializer": "in the server"},
            ),
        )
        doc = json.loads(keel(config, "status", "--json", "--url", "http://127.0.0.1:9").stdout)
    finally:
        orphan.kill()
        orphan.wait()
    assert not doc["supervisor"]["running"]
    assert f"keel up pid {dead.pid} has ended" in doc["supervisor"]["note"]
    states = {c["name"]: (c["state"], c["pid"]) for c in doc["components"]}
    assert states == {"server": ("not running", None), "monitor": ("orphaned", orphan.pid)}
    assert doc["notes"] == {"materializer": "in the server"}


def test_up_refuses_when_nothing_would_run(config: Path) -> None:
    result = keel(config, "up", "--only", "materializer")
    assert result.exit_code == 1
    assert "no component to run" in result.output and "memory://" in result.output
    typo = keel(config, "up", "--skip", "monitr")
    assert typo.exit_code == 1 and "did you mean 'monitor'" in typo.output
