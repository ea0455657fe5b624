"""Lineage captured at registration; reproduce and diff; migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from keel.errors import ValidationError
from keel.features import Aggregate, Entity, FeatureStore, FeatureView, Source
from keel.log import Topic, open_log
from keel.registry import Registry
from keel.registry.db import HEAD, current_revision, make_engine, migrate

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def view(window_h: int = 2) -> FeatureView:
    return FeatureView(
        "card",
        Entity("card", "card_id"),
        Source("pay"),
        [
            Aggregate(None, "count", timedelta(hours=1)),
            Aggregate("amount", "sum", timedelta(hours=window_h), name="amount_recent"),
        ],
        tile=timedelta(minutes=30),
    )


@pytest.fixture
def world(tmp_path: Path):
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    log.create_topic(
        Topic(
            "pay",
            {"ts": "timestamp", "card_id": "int64", "amount": "float64"},
            event_time="ts",
            key="card_id",
            partitions=2,
        )
    )
    rng = np.random.default_rng(3)
    n = 400
    log.append(
        "pay",
        pa.table(
            {
                "ts": pa.array(
                    [T0 + timedelta(minutes=int(m)) for m in np.sort(rng.integers(0, 600, n))],
                    pa.timestamp("us", tz="UTC"),
                ),
                "card_id": rng.integers(0, 20, n),
                "amount": np.round(rng.gamma(2, 10, n), 2),
            }
        ),
    )
    labels = pa.table(
        {
            "card_id": rng.integers(0, 20, 100),
            "ts": pa.array(
                [T0 + timedelta(minutes=int(m)) for m in rng.integers(60, 600, 100)],
                pa.timestamp("us", tz="UTC"),
            ),
            "is_fraud": rng.random(100) < 0.2,
        }
    )
    return log, labels, tmp_path


def train(store: FeatureStore, labels: pa.Table):
    from sklearn.linear_model import LogisticRegression

    table = store.training_set(labels, ["card"])
    x = np.column_stack(
        [table["card__count_1h"].to_numpy(), table["card__amount_recent"].to_numpy()]
    )
    return table, LogisticRegression().fit(x, table["is_fraud"].to_numpy())


def test_lineage_is_captured_and_reproduces(world, registry_url: str) -> None:
    log, labels, tmp = world
    store = FeatureStore(log, views=[view()], offline=tmp / "offline")
    table, model = train(store, labels)
    reg = Registry(registry_url, str(tmp / "artifacts"), log=log)
    v = reg.register(
        "fraud",
        model,
        training_set=table,
        params={"C": 1.0},
        metrics={"auc": 0.71},
        code_dir=str(tmp),
    )
    lin = reg.lineage("fraud", v.version)
    ts = lin["training_set"]
    assert ts["views"]["card"]["fingerprint"] == view().fingerprint
    assert ts["rows"] == 100 and ts["features"] == ["card"]
    ends = log.end_offsets("pay")
    assert ts["offsets"] == {"pay": {"0": ends[0], "1": ends[1]}}  # JSON keys
    assert ts["time_range"][0] <= ts["time_range"][1]
    assert len(ts["sha256"]) == 64
    assert lin["code"]["source_sha256"] and lin["code"]["git_commit"] is None  # not in git
    assert "numpy" in lin["environment"]["packages"]
    assert lin["params"] == {"C": 1.0} and lin["metrics"] == {"auc": 0.71}

    # New events after training do not change the rebuilt set: the offsets bound it.
    log.append("pay", [{"ts": T0 + timedelta(minutes=100), "card_id": 1, "amount": 999.0}])
    report = reg.reproduce("fraud", v.version, store)
    assert report.matches and report.rebuilt_sha256 == ts["sha256"] and not report.changed_views

    # A changed definition rebuilds different data, and says which view changed.
    changed = FeatureStore(log, views=[view(window_h=3)], offline=tmp / "offline")
    report = reg.reproduce("fraud", v.version, changed)
    assert not report.matches
    assert report.changed_views["card"][0] == view().fingerprint
    reg.close()


def test_diff_shows_what_changed(world, registry_url: str) -> None:
    log, labels, tmp = world
    reg = Registry(registry_url, str(tmp / "artifacts"))
    store = FeatureStore(log, views=[view()], offline=tmp / "offline")
    table, model = train(store, labels)
    reg.register("fraud", model, training_set=table, params={"C": 1.0}, metrics={"auc": 0.7})
    store2 = FeatureStore(log, views=[view(window_h=4)], offline=tmp / "offline")
    table2, model2 = train(store2, labels)
    reg.register(
        "fraud", model2, training_set=table2, params={"C": 0.5}, metrics={"auc": 0.75}, parent=1
    )
    changes = {c.field: (c.a, c.b) for c in reg.diff("fraud", 1, 2)}
    assert changes["params.C"] == (1.0, 0.5)
    assert changes["metrics.auc"] == (0.7, 0.75)
    assert changes["parent_version"] == (None, 1)
    assert "training_set.views.card.fingerprint" in changes
    assert "training_set.sha256" in changes
    assert "artifact" in changes
    assert "training_set.rows" not in changes  # same labels, same row count
    reg.close()


def test_reproduce_needs_a_recorded_training_set(registry_url: str, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    reg = Registry(registry_url, str(tmp_path / "a"))
    reg.register("m", LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    with pytest.raises(ValidationError, match="no training set recorded"):
        reg.reproduce("m", 1, None)
    reg.close()


def test_migrations_upgrade_empty_and_populated(registry_url: str) -> None:
    engine = make_engine(registry_url)
    migrate(engine, "0001")
    assert current_revision(engine) == "0001"
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO models (name, created_at, description) VALUES ('old', :t, 'kept')"
            ),
            {"t": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO versions (model, version, created_at, format, artifact, "
                "artifact_size, loader, params, metrics, lineage) VALUES ('old', 1, :t, 'onnx', "
                "'ab', 2, '{}', '{\"lr\": 0.1}', '{}', '{}')"
            ),
            {"t": now},
        )
    migrate(engine)
    assert current_revision(engine) == HEAD
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT params, description FROM versions")).one()
        assert row.description == ""
    engine.dispose()
    reg = Registry(registry_url, "/tmp/unused-artifacts")  # opening again is a no-op
    v = reg.get("old", 1)
    assert v.params == {"lr": 0.1} and v.format == "onnx"
    reg.set_alias("old", "champion", 1)
    assert reg.get("old", "champion").version == 1
    reg.close()
