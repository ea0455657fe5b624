"""The closed loop on a real project: the monitor's windows become jobs, a job's version is
shadowed, the shadow's decision promotes or rejects it — each step on keel.loop with its cause,
by the route's policy (cooldown, budget, pause), and across a controller's restart."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.clock import ManualClock
from keel.config import LabelsConfig, LoopConfig, MonitorConfig, RouteConfig, ShadowConfig
from keel.controller import LoopController
from keel.controller.loop import pause, resume
from keel.controller.trail import chains, read
from keel.errors import ValidationError
from keel.jobs.store import JobState
from keel.monitoring.events import MONITOR
from keel.project import Project
from keel.serving.server import TRAFFIC
from keel.training import LightGBM

runner = CliRunner()
LABELS = LabelsConfig(topic="shop.fraud_labels", id="payment_id", label="is_fraud")


@pytest.fixture(scope="module")
def shop_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example project with two weeks of a small shop and fraud@champion trained."""
    from keel.shop import Shift, Shop

    root = tmp_path_factory.mktemp("loop") / "proj"
    assert runner.invoke(app, ["init", str(root)]).exit_code == 0
    project = Project.load(root / "keel.toml")
    project.apply()
    now = datetime.now(UTC)
    shop = Shop(
        seed=4,
        n_users=600,
        n_items=60,
        start=now - timedelta(days=14),
        shift=Shift(fraud_rate=0.05),
    )
    for name, table in shop.catalog().items():
        project.log.append(name, table)
    for name, table in shop.history(days=14).items():
        known = pc.less_equal(table["ts"], pa.scalar(now, table.schema.field("ts").type))
        project.log.append(name, table.filter(known))
    # A weak champion, so that a retrain is graded better than it on the holdout's logloss:
    # two boosting rounds, and positives weighted 50 times, so its scores are far too high
    # (two rounds alone were, on some days' data, as good as an overfitted retrain).
    declared = project.model("fraud")
    weak = LightGBM(
        params={**declared.trainer.params, "num_iterations": 2, "scale_pos_weight": 50.0}, seed=7
    )
    project.train(dataclasses.replace(declared, trainer=weak), alias="champion")
    return root


def route(name: str, **loop: Any) -> RouteConfig:
    return RouteConfig(
        name=name,
        model="fraud@champion",
        features=["card_payments", "user_activity"],
        shadow=ShadowConfig(model="fraud@challenger", labels=LABELS),
        monitor=MonitorConfig(id="payment_id", labels=LABELS),
        loop=LoopConfig(**loop),
    )


def window(
    project: Project,
    name: str,
    index: int,
    *,
    alert: bool = True,
    drifted: int = 0,
    version: str | None = None,
) -> None:
    """A window record as the monitor writes it."""
    version = version or project.registry.get("fraud", "champion").ref
    payload = {
        "route": name,
        "version": version,
        "window": index,
        "performance": {
            "metric": "logloss",
            "estimated": 0.4 if alert else 0.1,
            "threshold": 0.2,
            "reference": 0.1,
            "alert": alert,
        },
        "features": [{"feature": f"user_activity__f{i}", "drifted": i < drifted} for i in range(5)],
    }
    project.log.create_topic(MONITOR, exist_ok=True)
    project.log.append(
        MONITOR.name,
        [
            {
                "ts": datetime.now(UTC),
                "route": name,
                "kind": "window",
                "payload": json.dumps(payload),
            }
        ],
    )


def kinds(project: Project, name: str) -> list[str]:
    return [e.kind for e in read(project.log, name)]


@pytest.fixture
def project(shop_project: Path) -> Project:
    return Project.load(shop_project / "keel.toml")


def test_an_alert_submits_the_routes_job_once_then_cooldown_and_budget(project: Project) -> None:
    clock = ManualClock(time.time())
    cfg = route("cool", cooldown_s=3600, max_per_day=2)
    loop = LoopController(project, routes=[cfg], clock=clock)
    window(project, "cool", 0)
    taken = loop.step()
    assert [e.kind for e in taken] == ["trigger", "job"]
    trigger, job_event = taken
    assert "estimated logloss 0.4000 over its level 0.2000" in trigger.summary
    assert trigger.cause.startswith("keel.monitor/") and job_event.cause == trigger.id
    job = project.jobs.get(job_event.payload["job"])
    assert job.state is JobState.PENDING and job.kind == "retrain"
    # It registers a version and moves nothing: the loop grades it before it is shadowed.
    assert job.argv[-4:-1] == ["train", "fraud", "--until"] and "--shadow" not in job.argv
    assert loop.pending("cool") == "job"

    # The alert stands: while the job runs, and after, within the cooldown, nothing more.
    window(project, "cool", 1)
    assert loop.step() == []
    project.jobs.move(job.id, JobState.CANCELLED, now=clock.now(), reason="cancelled")
    done = loop.step()
    assert [e.kind for e in done] == ["job_done", "closed"]
    assert "no candidate: the job cancelled" in done[-1].summary
    window(project, "cool", 2)
    window(project, "cool", 3)
    skipped = loop.step()
    assert [e.kind for e in skipped] == ["skipped"]  # said once, not per window
    assert "cooling down until" in skipped[0].summary
    # After the cooldown it asks again; the budget (2 a day) then stops a third.
    clock.advance(3601)
    window(project, "cool", 4)
    second = loop.step()
    assert [e.kind for e in second] == ["trigger", "job"]
    project.jobs.move(second[1].payload["job"], JobState.CANCELLED, now=clock.now(), reason="x")
    loop.step()
    clock.advance(3601)
    window(project, "cool", 5)
    budget = loop.step()
    assert [e.kind for e in budget] == ["skipped"] and "budget spent: 2 jobs" in budget[0].summary
    clock.advance(86_400)
    window(project, "cool", 6)
    assert [e.kind for e in loop.step()] == ["trigger", "job"]


def test_drift_in_enough_features_triggers_and_stale_windows_do_not(project: Project) -> None:
    loop = LoopController(project, routes=[route("drift", on=["drift"], drift_features=3)])
    window(project, "drift", 0, alert=True, drifted=2)  # a loss alert: not this policy's
    window(project, "drift", 1, alert=False, drifted=5, version="fraud@999")  # not served
    assert loop.step() == []
    window(project, "drift", 2, alert=False, drifted=3)
    trigger, _ = loop.step()
    assert trigger.summary.startswith("3 features drifted (f0, f1, f2)")


def test_a_paused_loop_skips_and_resumes(project: Project) -> None:
    loop = LoopController(project, routes=[route("paused")])
    with pytest.raises(ValidationError, match=r"no \[routes.loop\] block"):
        pause(project, "paused")  # pause() reads the project's routes: not there yet
    project.settings.routes.append(route("paused"))
    try:
        pause(project, "paused", by="alice")
        window(project, "paused", 0)
        (skipped,) = loop.step()
        assert skipped.kind == "skipped" and "no job — paused" in skipped.summary
        resume(project, "paused", by="alice")
        window(project, "paused", 1)
        assert [e.kind for e in loop.step()] == ["trigger", "job"]
        assert kinds(project, "paused")[:2] == ["paused", "skipped"]
    finally:
        project.settings.routes.pop()


def test_a_restarted_controller_takes_no_step_twice(project: Project) -> None:
    cfg = route("restart")
    first = LoopController(project, routes=[cfg])
    window(project, "restart", 0)
    # Killed after the trigger and the job were written, before the monitor's offsets were
    # committed: the next controller reads the same window again.
    events = first._read_monitor()
    assert [e.kind for e in events] == ["trigger", "job"]
    second = LoopController(project, routes=[cfg])
    assert second.pending("restart") == "job"
    assert second.step() == []
    jobs = [j for j in project.jobs.list() if j.name.startswith("loop-restart-")]
    assert len(jobs) == 1
    # Killed between the trigger and the job: the job, found by its name, is not resubmitted.
    assert len([e for e in read(project.log, "restart") if e.kind == "job"]) == 1


def test_loop_config_is_checked() -> None:
    with pytest.raises(ValidationError, match=r"add \[routes.shadow\]"):
        RouteConfig(name="r", model="fraud@champion", loop=LoopConfig())
    with pytest.raises(ValidationError, match=r"is unknown.*did you mean 'performance'"):
        LoopConfig(on=["perfromance"])
    with pytest.raises(ValidationError, match="needs every_s"):
        LoopConfig(on=["schedule"])
    with pytest.raises(ValidationError, match=r"no \[routes.monitor\] block"):
        RouteConfig(
            name="r",
            model="fraud@champion",
            shadow=ShadowConfig(model="fraud@challenger"),
            loop=LoopConfig(),
        )


def _decision(project: Project, name: str, action: str, candidate: str, reason: str) -> None:
    project.log.append(
        TRAFFIC.name,
        [
            {
                "ts": datetime.now(UTC),
                "route": name,
                "kind": "decision",
                "payload": json.dumps(
                    {
                        "action": action,
                        "reason": reason,
                        "evidence": {"candidate": candidate, "samples": 500, "labels": None},
                    }
                ),
            }
        ],
    )


def test_alert_to_job_to_shadow_to_promotion_with_its_causes(
    project: Project, tmp_path: Path
) -> None:
    for job in project.jobs.list([JobState.PENDING]):  # the other tests' retrains
        project.jobs.move(job.id, JobState.CANCELLED, now=time.time(), reason="not this test's")
    cfg = route("full", cooldown_s=0)
    loop = LoopController(project, routes=[cfg])
    manager = project.job_manager()
    window(project, "full", 0)
    _, job_event = loop.step()
    deadline = time.monotonic() + 300
    while not project.jobs.get(job_event.payload["job"]).state.finished:
        manager.tick()
        assert time.monotonic() < deadline, "the retrain did not finish"
        time.sleep(0.2)
    manager.close()
    steps = loop.step()
    assert [e.kind for e in steps] == ["job_done", "candidate"], [e.summary for e in steps]
    done, candidate = steps
    assert done.payload["state"] == "succeeded"
    version = candidate.payload["version"]
    # Graded on its holdout beside the (weak) champion on the same rows, then shadowed.
    graded = candidate.payload["holdout"]
    assert graded["better"] and graded["candidate"] < graded["serving"]
    assert graded["serving_version"] == "fraud@1" and "logloss" in candidate.summary
    assert project.registry.get("fraud", "challenger").ref == version
    number = int(version.split("@")[1])
    assert project.registry.lineage("fraud", number)["training"]["job"] == done.payload["job"]
    # A decision about another candidate is not this loop's.
    _decision(project, "full", "promote", "fraud@1", "not ours")
    assert loop.step() == []
    # The traffic controller rejects a candidate worse on labels: the loop says so and ends.
    _decision(
        project,
        "full",
        "reject",
        version,
        "on 300 labelled requests the candidate's loss 0.3 is worse than the primary's 0.2",
    )
    decision, closed = loop.step()
    assert decision.payload["action"] == "reject" and "worse than the primary" in decision.summary
    assert closed.kind == "closed" and loop.pending("full") is None

    # The next alert retrains again; this time the shadow promotes (the controller moves
    # the alias first), the route swaps, and the monitor follows the new version.
    window(project, "full", 1)
    _, job2 = loop.step()
    deadline = time.monotonic() + 300
    while not project.jobs.get(job2.payload["job"]).state.finished:
        manager.tick()
        assert time.monotonic() < deadline, "the second retrain did not finish"
        time.sleep(0.2)
    _, candidate2 = loop.step()
    version2 = candidate2.payload["version"]
    project.registry.set_alias("fraud", "champion", int(version2.split("@")[1]), reason="promote")
    _decision(project, "full", "promote", version2, "discrepancy within tolerance")
    _, swap = loop.step()
    assert swap.kind == "swap" and swap.payload["version"] == version2
    assert loop.pending("full") == "swapped"
    project.log.append(
        MONITOR.name,
        [
            {
                "ts": datetime.now(UTC),
                "route": "full",
                "kind": "reference",
                "payload": json.dumps({"version": version2, "previous": "fraud@1"}),
            }
        ],
    )
    (following,) = loop.step()
    assert following.kind == "monitoring" and loop.pending("full") is None

    trail = list(read(project.log, "full"))
    first, second = chains(trail)
    assert [e.kind for e in first] == [
        "trigger",
        "job",
        "job_done",
        "candidate",
        "decision",
        "closed",
    ]
    assert [e.kind for e in second] == [
        "trigger",
        "job",
        "job_done",
        "candidate",
        "decision",
        "swap",
        "monitoring",
    ]
    for chain in (first, second):
        for cause, effect in itertools.pairwise(chain):
            assert effect.cause == cause.id  # each step names the one before it

    out = runner.invoke(
        app, ["-c", str(project.config_path), "loop", "full"], env={"COLUMNS": "200"}
    )
    assert out.exit_code == 0, out.output
    for text in ("trigger", "estimated logloss", "job", "candidate", "reject", "swap", version2):
        assert text in out.output


def test_a_retrain_no_better_on_its_holdout_is_rejected_before_its_shadow(
    project: Project,
) -> None:
    from keel.registry import ModelVersion

    loop = LoopController(project, routes=[route("grade")])

    def version(logloss: float, serving: float | None) -> ModelVersion:
        baseline = (
            None if serving is None else {"version": "fraud@1", "metrics": {"logloss": serving}}
        )
        return ModelVersion(
            model="fraud",
            version=9,
            created_at=datetime.now(UTC),
            format="lightgbm",
            artifact="",
            artifact_size=0,
            loader={},
            params={},
            parent_version=1,
            metrics={"logloss": logloss, "holdout_rows": 1234},
            description="",
            lineage={"training": {"parent_holdout": baseline}},
        )

    worse = loop._grade("grade", version(0.30, 0.20))
    assert not worse["better"]
    assert (
        worse["reason"]
        == "on the freshest 1,234 settled rows, logloss 0.3000 against fraud@1's 0.2000"
    )
    assert not loop._grade("grade", version(0.20, 0.20))["better"]  # equal is no better
    assert loop._grade("grade", version(0.10, 0.20))["better"]
    assert loop._grade("grade", version(0.10, None)) is None  # a parent of other inputs
    auc = LoopController(project, routes=[route("grade-auc", metric="auc")])
    assert auc._grade("grade-auc", version(0.1, 0.2)) is None  # no auc recorded
