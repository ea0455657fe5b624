"""The CLI against a real example project on the embedded log."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.project import Project

runner = CliRunner()


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("KEEL_CONFIG", "KEEL_LOG_URL", "KEEL_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # wide tables: values are not folded
    result = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    return tmp_path / "proj"


def keel(project_dir: Path, *args: str):
    return runner.invoke(app, ["-c", str(project_dir / "keel.toml"), *args])


def test_init_refuses_to_overwrite(project_dir: Path) -> None:
    result = runner.invoke(app, ["init", str(project_dir)])
    assert result.exit_code == 1
    assert "already exists" in result.output


def test_apply_then_inspect_the_log(project_dir: Path) -> None:
    result = keel(project_dir, "apply")
    assert result.exit_code == 0, result.output
    assert "created" in result.output and "shop.events" in result.output
    again = keel(project_dir, "apply")
    assert "unchanged" in again.output and "created" not in again.output

    from keel.shop import Shop

    project = Project.load(project_dir / "keel.toml")
    shop = Shop(seed=1, n_users=50, n_items=30)
    history = shop.history(days=0.5)
    events = history["shop.events"]
    project.log.append("shop.events", events)

    topics = keel(project_dir, "log", "topics")
    assert topics.exit_code == 0, topics.output
    assert "shop.payments" in topics.output
    assert f"{events.num_rows:,}" in topics.output

    described = keel(project_dir, "log", "describe", "shop.events")
    assert described.exit_code == 0, described.output
    assert "event_type" in described.output and "key" in described.output

    tail = keel(project_dir, "log", "tail", "shop.events", "-n", "3")
    assert tail.exit_code == 0, tail.output
    last_user = str(events.sort_by("ts")["user_id"][-1].as_py())
    assert last_user in tail.output

    stats = keel(project_dir, "log", "stats")
    assert stats.exit_code == 0
    assert "total" in stats.output and f"{events.num_rows:,}" in stats.output


def test_errors_are_one_readable_line(project_dir: Path) -> None:
    keel(project_dir, "apply")
    result = keel(project_dir, "log", "describe", "shop.event")
    assert result.exit_code == 1
    assert "topic 'shop.event' does not exist" in result.output
    assert "did you mean 'shop.events'" in result.output
    assert "Traceback" not in result.output


def test_environment_overrides_the_config(project_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.db"
    result = runner.invoke(
        app,
        ["-c", str(project_dir / "keel.toml"), "config", "show"],
        env={"KEEL_LOG_URL": f"sqlite:///{other}"},
    )
    assert result.exit_code == 0, result.output
    assert str(other) in result.output.replace("\n", "")


def test_a_conflicting_topic_definition_is_refused(project_dir: Path) -> None:
    keel(project_dir, "apply")
    defs = project_dir / "definitions.py"
    defs.write_text(defs.read_text().replace("partitions=2", "partitions=3"))
    result = keel(project_dir, "apply")
    assert result.exit_code == 1
    assert "'shop.reviews' exists with a different definition" in result.output


def test_features_commands(project_dir: Path) -> None:
    assert keel(project_dir, "apply").exit_code == 0
    from keel.shop import Shop

    project = Project.load(project_dir / "keel.toml")
    shop = Shop(seed=2, n_users=100, n_items=20)
    for name, table in {**shop.catalog(), **shop.history(days=1)}.items():
        project.log.append(name, table)

    listed = keel(project_dir, "features", "list")
    assert listed.exit_code == 0, listed.output
    assert "card_payments" in listed.output and "user_activity" in listed.output

    shown = keel(project_dir, "features", "show", "card_payments")
    assert shown.exit_code == 0, shown.output
    assert "max_amount_1d" in shown.output and "fingerprint" in shown.output

    done = keel(project_dir, "features", "backfill", "--view", "card_payments")
    assert done.exit_code == 0, done.output
    assert "card_payments: rebuilt from" in done.output

    pays = [project.log.read("shop.payments", p, 0, 1) for p in range(4)]
    card = next(t for t in pays if t.num_rows)["card_id"][0].as_py()
    got = keel(
        project_dir, "features", "get", "card_payments:payments_1h", "-k", str(card), "--json"
    )
    assert got.exit_code == 0, got.output
    assert '"card_payments__payments_1h"' in got.output

    bad = keel(project_dir, "features", "show", "card_paymnts")
    assert bad.exit_code == 1 and "did you mean 'card_payments'" in bad.output


def test_registry_commands(project_dir: Path) -> None:
    import pyarrow as pa
    from sklearn.linear_model import LogisticRegression

    from keel.shop import Shop

    assert keel(project_dir, "apply").exit_code == 0
    project = Project.load(project_dir / "keel.toml")
    shop = Shop(seed=4, n_users=80, n_items=20)
    for name, table in {**shop.catalog(), **shop.history(days=1)}.items():
        project.log.append(name, table)
    pays = pa.concat_tables([project.log.read("shop.payments", p, 0, 10**6) for p in range(4)])
    labels = pays.select(["card_id", "ts"]).append_column(
        "y", pa.array([i % 2 for i in range(pays.num_rows)])
    )
    train = project.features.training_set(labels, ["card_payments:payments_1h"])
    model = LogisticRegression().fit(
        train["card_payments__payments_1h"].to_numpy()[:, None], train["y"].to_numpy()
    )
    project.registry.register("fraud", model, training_set=train, params={"C": 1.0})
    project.registry.register("fraud", model, training_set=train, params={"C": 2.0})

    listed = keel(project_dir, "registry", "list")
    assert listed.exit_code == 0 and "fraud" in listed.output, listed.output
    moved = keel(project_dir, "registry", "alias", "fraud", "champion", "2", "--reason", "better")
    assert moved.exit_code == 0, moved.output
    assert "better" in moved.output
    shown = keel(project_dir, "registry", "show", "fraud")
    assert shown.exit_code == 0 and "champion" in shown.output
    lineage = keel(project_dir, "registry", "lineage", "fraud@champion")
    assert lineage.exit_code == 0 and '"training_set"' in lineage.output
    diff = keel(project_dir, "registry", "diff", "fraud", "1", "2")
    assert diff.exit_code == 0 and "params.C" in diff.output
    same = keel(project_dir, "registry", "reproduce", "fraud@champion")
    assert same.exit_code == 0, same.output
    assert "reproduced" in same.output
    missing = keel(project_dir, "registry", "show", "fraud@nope")
    assert missing.exit_code == 1 and "no alias 'nope'" in missing.output


def test_monitor_commands(project_dir: Path) -> None:
    import asyncio

    import lightgbm
    import pyarrow as pa

    from keel.serving import InferenceServer
    from keel.serving.routes import Rows
    from keel.shop import Shop

    assert keel(project_dir, "apply").exit_code == 0
    project = Project.load(project_dir / "keel.toml")
    shop = Shop(seed=5, n_users=1500, n_items=100)
    for name, table in {**shop.catalog(), **shop.history(days=3)}.items():
        project.log.append(name, table)
    project.features.backfill()
    log = project.log
    pays = pa.concat_tables([log.read("shop.payments", p, 0, 10**6) for p in range(4)])
    labels = pa.concat_tables([log.read("shop.fraud_labels", p, 0, 10**6) for p in range(4)])
    rows = pays.join(labels.select(["payment_id", "is_fraud"]), "payment_id").sort_by("ts")
    train = project.features.training_set(rows, ["card_payments", "user_activity"])
    names = [
        c
        for c in train.column_names
        if "__" in c and (pa.types.is_integer(train[c].type) or pa.types.is_floating(train[c].type))
    ] + ["amount"]
    x = pa.table({n: train[n].cast(pa.float64()) for n in names}).to_pandas()
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(x, train["is_fraud"])
    project.registry.register("fraud", model, training_set=train)
    project.registry.set_alias("fraud", "champion", 1)

    missing = keel(project_dir, "monitor", "--once")
    assert missing.exit_code == 1 and "no prediction log yet" in missing.output, missing.output

    cfg = next(r for r in project.settings.routes if r.name == "fraud")
    server = InferenceServer([cfg], registry=project.registry, features=project.features, log_=log)
    server.load_all()
    served = pays.slice(pays.num_rows - 450).to_pylist()

    async def go() -> None:
        await server.start()
        for i in range(0, len(served), 15):
            part = [
                {k: r[k] for k in ("payment_id", "card_id", "user_id", "amount")}
                for r in served[i : i + 15]
            ]
            await server.infer("fraud", Rows(part, len(part)))
        await server.stop()

    asyncio.run(go())

    once = keel(project_dir, "monitor", "--once")
    assert once.exit_code == 0, once.output
    assert "window 0: 200 rows" in once.output and "window 1: 200 rows" in once.output
    status = keel(project_dir, "monitor", "status", "fraud")
    assert status.exit_code == 0 and "the last 2 monitored windows" in status.output
    report = keel(project_dir, "monitor", "report", "fraud", "-o", str(project_dir / "r.html"))
    assert report.exit_code == 0, report.output
    assert "<html" in (project_dir / "r.html").read_text()[:500].lower()
    typo = keel(project_dir, "monitor", "status", "frod")
    assert typo.exit_code == 1 and "did you mean 'fraud'" in typo.output


def test_monitor_status_names_the_furthest_drifted_features_first() -> None:
    from keel.cli.monitor import drift_cell

    def check(name: str, value: float | None, threshold: float = 0.1) -> dict:
        drifted = value is None or value > threshold
        return {"feature": name, "value": value, "threshold": threshold, "drifted": drifted}

    features = [
        check("user__events_1h", 0.5),
        check("card__amount", 0.05),
        check("card__new_devices_1d", 2.0),
        check("user__carts_1d", None),
        check("user__spend_7d", 0.3),
    ]
    assert drift_cell(features, most=2) == (
        "[red]4/5[/]: carts_1d\u00a0missing, new_devices_1d\u00a020.0×, +2"
    )
    assert drift_cell(features[1:2]) == "0/1"


@pytest.fixture
def shop_project(project_dir: Path) -> Path:
    """The example project with two weeks of a small, fraud-heavy shop in its log."""
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa
    import pyarrow.compute as pc

    from keel.shop import Shift, Shop

    assert keel(project_dir, "apply").exit_code == 0
    project = Project.load(project_dir / "keel.toml")
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
    return project_dir


def test_train_shadow_and_reproduce_the_model(shop_project: Path) -> None:
    first = keel(shop_project, "train", "fraud")
    assert first.exit_code == 0, first.output
    for phase in ("training set", "fit", "evaluate", "register"):
        assert phase in first.output
    assert "fraud@1" in first.output and "auc" in first.output and "holdout" in first.output
    shadow = keel(shop_project, "train", "fraud", "--shadow")
    assert shadow.exit_code == 0, shadow.output
    assert "fraud@challenger → 2" in shadow.output and "parent 1" in shadow.output
    project = Project.load(shop_project / "keel.toml")
    assert project.registry.aliases("fraud") == {"challenger": 2}
    assert project.registry.get("fraud", 2).parent_version == 1
    again = keel(shop_project, "registry", "reproduce", "fraud@1", "--model")
    assert again.exit_code == 0, again.output
    assert "byte-identical" in again.output and "sha256 matches" in again.output
    # Bad input: a clear error, exit 1, and nothing registered.
    early = keel(shop_project, "train", "fraud", "--until", "2000-01-01T00:00Z")
    assert early.exit_code == 1 and "no labelled rows" in early.output
    unknown = keel(shop_project, "train", "fruad")
    assert unknown.exit_code == 1 and "did you mean 'fraud'" in unknown.output
    bad_time = keel(shop_project, "train", "fraud", "--until", "yesterday")
    assert bad_time.exit_code == 1 and "is not a time" in bad_time.output
    assert [v.version for v in project.registry.versions("fraud")] == [1, 2]


def test_apply_names_what_is_wrong_with_a_model(project_dir: Path) -> None:
    defs = project_dir / "definitions.py"
    defs.write_text(
        defs.read_text().replace(
            'features=["card_payments", "user_activity"]',
            'features=["card_payments", "user_activty"]',
        )
    )
    result = keel(project_dir, "apply")
    assert result.exit_code == 1
    assert "model 'fraud'" in result.output and "did you mean 'user_activity'" in result.output


def test_serve_fast_only_answers_from_its_own_model_and_replica(
    shop_project: Path, running
) -> None:
    """``keel serve --fast-only`` (what ``--fast-port`` starts): the fast path's checkpoint,
    unbatched, on an in-process replica of its views that follows the log."""
    import httpx

    from keel.cli.serve import build_fast_server, requests_for
    from keel.errors import ValidationError
    from keel.serving import create_app

    assert keel(shop_project, "train", "fraud").exit_code == 0
    project = Project.load(shop_project / "keel.toml")
    with pytest.raises(ValidationError, match=r"no fast path to serve among the routes \(fraud"):
        build_fast_server(project, ["fraud"])
    project.registry.set_alias("fraud", "fast", 1)
    toml = shop_project / "keel.toml"
    text = toml.read_text()
    fraud = text.index('name = "fraud"')
    after = text.index("[[routes]]", fraud)  # the fraud route's block ends here
    block = (
        '[routes.fast_path]\nmodel = "fraud@fast"\nfeatures = ["card_payments", "user_activity"]\n'
    )
    toml.write_text(text[:after] + block + "\n" + text[after:])
    project = Project.load(toml)
    server = build_fast_server(project, ["fraud"])
    assert list(server.routes) == ["fraud"] and server.routes["fraud"].batcher.max_batch_size == 1
    replica = server.features
    assert replica is not project.features and type(replica.online).__name__.startswith("Memory")
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        path, bodies = requests_for(project, server.configs["fraud"], srv.port)
        r = client.post(path, content=bodies[0], headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "fraud@1"
    topic = replica.view("card_payments").source.topic
    assert "keel-replica.fast.card_payments" in project.log.groups(topic)
