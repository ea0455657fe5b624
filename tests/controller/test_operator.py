"""An operator's decisions by hand (keel.controller.operator): what each would do, done only
on what was seen, recorded where the controller's are, through a running server when one
answers; and ``keel traffic promote|reject|rollback``, which take them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.config import ShadowConfig
from keel.controller.operator import carry_out, propose, shadow_of
from keel.errors import ConflictError, NotFoundError, ValidationError
from keel.project import Project, init_project
from keel.serving.traffic import ShadowState, traffic_fingerprint
from keel.serving.traffic_manager import TRAFFIC, publish


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """The example project's routes; fraud@1..3, champion moved 1 → 2, challenger at 3."""
    import lightgbm

    init_project(tmp_path, name="op")
    proj = Project.load(tmp_path / "keel.toml")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    model = lightgbm.LGBMClassifier(n_estimators=2, verbose=-1).fit(x, x[:, 0] > 0)
    for _ in range(3):
        proj.registry.register("fraud", model)
    proj.registry.set_alias("fraud", "champion", 1, reason="first")
    proj.registry.set_alias("fraud", "champion", 2, reason="retrained")
    proj.registry.set_alias("fraud", "challenger", 3, reason="keel train fraud --shadow")
    yield proj
    proj.registry.close()


def decisions(proj: Project) -> list[dict[str, Any]]:
    try:
        rows = proj.log.read(TRAFFIC.name, 0, 0, 10_000).to_pylist()
    except NotFoundError:
        return []
    return [json.loads(r["payload"]) for r in rows if r["kind"] == "decision"]


def test_promote_moves_the_alias_and_records_the_decision_with_its_evidence(project) -> None:
    proj = project
    proj.log.create_topic(TRAFFIC, exist_ok=True)
    state = ShadowState("fraud", "fraud@3", "fraud@2", 1000.0)
    state.diff.update_many(np.full(30, 0.01))
    publish(proj.log, "fraud", "shadow_stats", state.to_dict(), at=1600.0)
    p = propose(proj, "fraud", "promote")
    assert (p.serving, p.target, p.candidate) == (2, 3, "fraud@3")
    assert p.summary.startswith("fraud@champion moves from fraud@2 to fraud@3")
    assert p.evidence["samples"] == 30 and p.evidence["elapsed_s"] == 600.0
    decision = carry_out(proj, p, by="ann")
    assert proj.registry.aliases("fraud")["champion"] == 3
    assert proj.registry.alias_history("fraud", "champion")[-1].reason == decision["reason"]
    (recorded,) = decisions(proj)
    assert recorded["action"] == "promote" and recorded["by"] == "ann"
    assert recorded["evidence"]["candidate"] == "fraud@3"  # what the loop's chain waits for
    assert recorded["reason"] == "promoted by ann: fraud@2 → fraud@3"


def test_rollback_returns_to_the_version_served_before(project) -> None:
    p = propose(project, "fraud", "rollback")
    assert (p.serving, p.target) == (2, 1) and "its last move" in p.summary
    assert p.summary.endswith("retrained)")  # when and why the alias last moved
    carry_out(project, p, by="ann")
    assert project.registry.aliases("fraud")["champion"] == 1
    assert decisions(project)[-1]["action"] == "rollback"
    # An alias set afresh has nothing before it to go back to.
    project.registry.set_alias("fraud", "champion", None, reason="cleared")
    project.registry.set_alias("fraud", "champion", 2, reason="set afresh")
    with pytest.raises(ValidationError, match="no earlier version to roll back to"):
        propose(project, "fraud", "rollback")


def test_reject_leaves_the_alias_and_records_the_candidate(project) -> None:
    carry_out(project, propose(project, "fraud", "reject"), by="ann")
    assert project.registry.aliases("fraud")["champion"] == 2
    (d,) = decisions(project)
    assert (d["action"], d["evidence"]["candidate"]) == ("reject", "fraud@3")


@pytest.mark.parametrize(
    "route, action, why",
    [
        pytest.param("embed", "promote", "not a model by alias", id="builtin"),
        pytest.param("nope", "promote", "no route 'nope'", id="unknown-route"),
        pytest.param("fraud", "explode", "no action 'explode'", id="unknown-action"),
    ],
)
def test_what_cannot_be_done_says_why(project, route: str, action: str, why: str) -> None:
    with pytest.raises((ValidationError, NotFoundError), match=why):
        propose(project, route, action)


def test_nothing_to_promote_when_the_shadow_points_at_the_served_version(project) -> None:
    project.registry.set_alias("fraud", "challenger", 2)
    with pytest.raises(ValidationError, match="which the route serves already"):
        propose(project, "fraud", "promote")


def test_a_proposal_gone_stale_changes_nothing(project) -> None:
    p = propose(project, "fraud", "promote")
    project.registry.set_alias("fraud", "champion", 1, reason="meanwhile")
    with pytest.raises(ConflictError, match="moved since this was proposed"):
        carry_out(project, p, by="ann")
    assert project.registry.aliases("fraud")["champion"] == 1 and decisions(project) == []


def test_the_shadow_set_while_serving_is_the_one_judged(project) -> None:
    cfg = next(r for r in project.settings.routes if r.name == "fraud")
    assert shadow_of(project, cfg) == cfg.shadow
    runtime = ShadowConfig(model="fraud@3", tolerance=0.01)
    project.log.create_topic(TRAFFIC, exist_ok=True)
    publish(
        project.log,
        "fraud",
        "traffic_set",
        {
            "canary": None,
            "shadow": {"model": "fraud@3", "tolerance": 0.01},
            "configured": traffic_fingerprint(cfg.canary, cfg.shadow),
        },
        at=0.0,
    )
    assert shadow_of(project, cfg) == runtime


class _Server(BaseHTTPRequestHandler):
    posted: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    answer = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).posted.append((self.path, body))
        self.send_response(type(self).answer)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"recorded": true}' if type(self).answer == 200 else b'{"error": "x"}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Server.posted, _Server.answer = [], 200
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_running_server_is_told_and_records_it(project, server: str) -> None:
    carry_out(project, propose(project, "fraud", "reject"), by="ann", url=server, token="t")
    ((path, body),) = _Server.posted
    assert path == "/v1/routes/fraud/decisions" and body["action"] == "reject"
    assert decisions(project) == []  # the server writes it, not twice
    _Server.answer = 404  # a server that does not serve the route: the log it is
    carry_out(project, propose(project, "fraud", "reject"), by="ann", url=server)
    assert [d["action"] for d in decisions(project)] == ["reject"]


def test_keel_traffic_promote_asks_then_does_it(project) -> None:
    runner = CliRunner()
    config = str(Path(project.settings.project_dir) / "keel.toml")
    url = ["--url", "http://127.0.0.1:9"]
    result = runner.invoke(app, ["-c", config, "traffic", "promote", "fraud", *url], input="n\n")
    assert result.exit_code == 1 and "moves from fraud@2 to fraud@3" in result.output
    assert project.registry.aliases("fraud")["champion"] == 2
    result = runner.invoke(app, ["-c", config, "traffic", "promote", "fraud", "--yes", *url])
    assert result.exit_code == 0, result.output
    assert project.registry.aliases("fraud")["champion"] == 3
    assert decisions(project)[-1]["by"].endswith("(keel traffic)")
    result = runner.invoke(app, ["-c", config, "traffic", "promote", "fraud", "--yes", *url])
    assert result.exit_code == 1 and "which the route serves already" in result.output
