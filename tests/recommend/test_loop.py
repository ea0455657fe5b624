"""The recommender in a project: `keel train`, `keel fine-tune`, and the fine-tune loop that
judges each child on the purchases that follow it, records its decision and moves the alias."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.project import Project, init_project
from keel.recommend.loop import FineTuneLoop
from keel.serving.server import TRAFFIC
from keel.shop import Shop

runner = CliRunner()
START = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def shop_project(tmp_path: Path) -> tuple[Project, Shop, Path]:
    root = init_project(tmp_path / "proj", name="shop")
    project = Project.load(root / "keel.toml")
    project.apply()
    shop = Shop(seed=11, n_users=400, n_items=200, sessions_per_user_day=3.0, start=START)
    for name, table in shop.catalog().items():
        project.log.append(name, table)
    for name, table in shop.history(days=2).items():
        project.log.append(name, table)
    project.features.backfill()
    return project, shop, root / "keel.toml"


def _stream(project: Project, shop: Shop, minutes: float) -> None:
    rate = shop.n_users * 3 * 6.7 / 86_400
    for tick in shop.stream(rate=rate, tick_s=minutes * 60, duration_s=minutes * 60):
        for name, table in tick.items():
            if table.num_rows:
                project.log.append(name, table)


def _cli(config: Path, *args: str) -> object:
    result = runner.invoke(app, ["-c", str(config), *args])
    assert result.exit_code == 0, result.output
    return result


def test_train_and_fine_tune_from_the_command_line(shop_project: tuple) -> None:
    project, shop, config = shop_project
    out = _cli(config, "train", "recommend", "--until", shop.now.isoformat(), "--alias",
               "champion").output  # fmt: skip
    assert "recommend@1" in out and "hit_rate@10" in out
    lineage = project.registry.lineage("recommend", 1)["training"]
    # The user tower reads the user's activity, joined from the feature store.
    assert any(n.startswith("user_activity__") for n in lineage["feature_names"])
    _stream(project, shop, 60)
    out = _cli(config, "fine-tune", "recommend").output
    assert "recommend@2" in out and "byte-identical" in out and "challenger" in out
    assert project.registry.get("recommend", 2).parent_version == 1
    bad = runner.invoke(app, ["-c", str(config), "fine-tune", "fraud"])
    assert bad.exit_code != 0 and "not a recommender" in bad.output


def test_the_loop_judges_each_child_on_later_purchases(shop_project: tuple) -> None:
    project, shop, _ = shop_project
    project.train("recommend", until=shop.now, alias="champion")
    now = [shop.now.timestamp()]
    loop = FineTuneLoop(project, "recommend", clock=lambda: now[0], min_purchases=10)
    _stream(project, shop, 30)
    now[0] = shop.now.timestamp()
    first = loop.step()  # nothing to judge yet: fine-tune the champion
    assert first.decision is None and first.fine_tune is not None
    child = first.fine_tune.version.version
    assert project.registry.aliases("recommend")["challenger"] == child
    _stream(project, shop, 60)
    now[0] = shop.now.timestamp()
    second = loop.step()
    assert second.decision is not None
    decision = second.decision
    evidence = decision["evidence"]
    assert evidence["candidate"] == f"recommend@{child}" and evidence["purchases"] >= 10
    for key in ("top_k_overlap", "score_diff", "serving_hit_rate@10", "candidate_hit_rate@10"):
        assert key in evidence
    champion = project.registry.aliases("recommend")["champion"]
    if decision["action"] == "promote":
        assert champion == child
        assert evidence["candidate_hit_rate@10"] >= evidence["serving_hit_rate@10"] - loop.margin
    else:
        assert champion == 1
    # The next child is fine-tuned from whatever serves now.
    assert second.fine_tune is not None and second.fine_tune.parent == champion
    # The decision is on the traffic topic, so a restarted loop does not judge it again.
    events = [
        json.loads(e["payload"])
        for p in range(project.log.topic(TRAFFIC.name).partitions)
        for e in project.log.read(TRAFFIC.name, p, 0, 1000).to_pylist()
        if e["kind"] == "decision"
    ]
    assert [e["evidence"]["candidate"] for e in events] == [f"recommend@{child}"]
    fresh = FineTuneLoop(project, "recommend", clock=lambda: now[0], min_purchases=10)
    assert fresh._recorded(child)


def test_a_child_waits_until_enough_purchases_arrived(shop_project: tuple) -> None:
    project, shop, _ = shop_project
    project.train("recommend", until=shop.now, alias="champion")
    now = [shop.now.timestamp()]
    loop = FineTuneLoop(project, "recommend", clock=lambda: now[0], min_purchases=10_000)
    _stream(project, shop, 30)
    now[0] = shop.now.timestamp()
    loop.step()
    _stream(project, shop, 30)
    now[0] = shop.now.timestamp()
    waiting = loop.step()
    assert waiting.waiting and "10000 purchases" in waiting.waiting
    assert waiting.fine_tune is None and waiting.decision is None
