"""Which components a project runs, and why the others do not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from keel.config import Settings
from keel.errors import ValidationError
from keel.supervisor import HttpReady, plan
from keel.supervisor.plan import shown

ROUTE = """
[[routes]]
name = "fraud"
model = "fraud@champion"
"""
MONITORED = (
    ROUTE
    + """
[routes.monitor]
window_rows = 50
"""
)


def settings(tmp_path: Path, text: str) -> tuple[Settings, Path]:
    path = tmp_path / "keel.toml"
    path.write_text(text)
    return Settings.load(path, env={}), path


def test_a_monitored_route_on_the_embedded_defaults(tmp_path: Path) -> None:
    s, path = settings(tmp_path, MONITORED)
    p = plan(s, path, port=8123)
    assert [c.name for c in p.components] == ["server", "monitor", "scheduler", "controller"]
    assert "memory://" in p.notes["materializer"] and p.url == "http://127.0.0.1:8123"
    server, monitor, scheduler, controller = p.components
    assert server.argv == (
        sys.executable, "-m", "keel", "-c", str(path), "serve", "--host", "127.0.0.1",
        "--port", "8123",
    )  # fmt: skip
    assert server.health == HttpReady("http://127.0.0.1:8123/v2/health/ready")
    assert server.depends_on == () and monitor.depends_on == ("server",)
    assert shown(controller) == "keel controller --url http://127.0.0.1:8123 --no-traffic"
    assert shown(scheduler) == "keel jobs run"
    assert all(c.cwd == str(tmp_path) for c in p.components)


def test_an_online_store_of_its_own_gets_a_materializer(tmp_path: Path) -> None:
    s, path = settings(tmp_path, f'online_url = "sqlite:///{tmp_path}/online.db"\n' + ROUTE)
    p = plan(s, path, host="0.0.0.0", port=9000)
    assert [c.name for c in p.components] == ["server", "materializer", "scheduler", "controller"]
    assert shown(p.components[1]) == "keel features materialize --follow"
    assert p.notes == {"monitor": "no route has a [routes.monitor] block"}
    assert p.url == "http://127.0.0.1:9000"  # the server binds everywhere, asked locally


def test_only_and_skip(tmp_path: Path) -> None:
    s, path = settings(tmp_path, MONITORED)
    p = plan(s, path, only=["monitor", "scheduler"])
    assert [c.name for c in p.components] == ["monitor", "scheduler"]
    assert p.notes["server"] == "left out by --only"
    assert p.components[0].depends_on == ()  # the server runs elsewhere: not waited for
    p = plan(s, path, skip=["controller"])
    assert p.notes["controller"] == "left out by --skip"
    with pytest.raises(ValidationError, match="no component 'schedular' — did you mean"):
        plan(s, path, skip=["schedular"])


def test_a_project_without_routes_runs_the_scheduler(tmp_path: Path) -> None:
    s, path = settings(tmp_path, "")
    p = plan(s, path)
    assert [c.name for c in p.components] == ["scheduler"] and p.url is None
    assert set(p.notes) == {"server", "materializer", "monitor", "controller"}
    # Settings from KEEL_* variables alone: the components read them the same way.
    (scheduler,) = plan(s, None).components
    assert scheduler.argv == (sys.executable, "-m", "keel", "jobs", "run")
    assert shown(scheduler) == "keel jobs run"


def test_the_web_console_runs_beside_the_server_when_given_a_port(tmp_path: Path) -> None:
    s, path = settings(tmp_path, MONITORED)
    p = plan(s, path, port=8123, ui_port=8124)
    assert [c.name for c in p.components][-1] == "ui"
    ui = p.components[-1]
    assert shown(ui) == ("keel ui --host 127.0.0.1 --port 8124 --server-url http://127.0.0.1:8123")
    assert ui.health == HttpReady("http://127.0.0.1:8124/health")
    assert ui.depends_on == ("server",)
    assert "ui" not in plan(s, path).notes  # not asked for: not mentioned
    assert plan(s, path, ui_port=8124, skip=["ui"]).notes["ui"] == "left out by --skip"
    with pytest.raises(ValidationError, match="cannot both listen on port 8123"):
        plan(s, path, port=8123, ui_port=8123)
