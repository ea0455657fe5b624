"""A small project for the console's fast tests: the example project's keel.toml (routes
embed, fraud and recommend; job queues), three fraud versions with lineage and aliases, and on
its log what the other components would have written — a shadow's evidence converging and
its decision, monitored windows with an alert, the loop's trail, an audited explanation — and
a job too large for any queue, pending with Kueue's reason."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from keel.config import AuthConfig, TokenConfig
from keel.controller.trail import LOOP, LoopEvent, publish
from keel.features.training import TRAINING_SET_KEY
from keel.monitoring.events import MONITOR
from keel.project import Project, init_project
from keel.serving.auth import hash_token
from keel.serving.explaining import EXPLANATIONS
from keel.serving.traffic import ShadowState
from keel.serving.traffic_manager import TRAFFIC
from keel.serving.traffic_manager import publish as publish_traffic

NOW = datetime.now(UTC).replace(microsecond=0)
WINDOWS = 6
#: A closed port on 127.0.0.1: no server answers there.
NO_SERVER = "http://127.0.0.1:9"


def _training_set(rng: np.random.Generator, views: dict[str, Any]) -> tuple[pa.Table, Any]:
    import lightgbm

    x = rng.normal(size=(80, 3))
    y = (x[:, 0] + rng.normal(scale=0.5, size=80) > 0).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=3, verbose=-1).fit(x, y)
    info = {
        "features": list(views),
        "views": {
            v.name: {"fingerprint": v.fingerprint, "features": [f.name for f in v.features]}
            for v in views.values()
        },
        "offsets": {"shop.payments": {"0": 120, "1": 131}, "shop.events": {"0": 900}},
        "timestamp": "ts",
        "time_range": [
            (NOW - timedelta(days=3)).isoformat(),
            (NOW - timedelta(days=1)).isoformat(),
        ],
    }
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})
    return table.replace_schema_metadata({TRAINING_SET_KEY: json.dumps(info)}), model


def _window(i: int, version: str, drifted: bool) -> dict[str, Any]:
    end = NOW - timedelta(hours=WINDOWS - i)
    features = [
        {
            "feature": name,
            "kind": "numeric",
            "statistic": "ks",
            "value": (0.5 if drifted and name == "user_activity__events_1d" else 0.05 + 0.01 * i),
            "threshold": 0.2,
            "drifted": drifted and name == "user_activity__events_1d",
        }
        for name in ("card_payments__payments_1h", "user_activity__events_1d")
    ]
    return {
        "route": "fraud",
        "version": version,
        "window": i,
        "start": (end - timedelta(hours=1)).isoformat(),
        "end": end.isoformat(),
        "rows": 50,
        "features": features,
        "prediction": {
            "feature": "output__score",
            "value": 0.1,
            "threshold": 0.3,
            "drifted": False,
        },
        "performance": {
            "metric": "logloss",
            "estimated": 0.3 if drifted else 0.1,
            "threshold": 0.2,
            "reference": 0.08,
            "alert": drifted,
        },
        "staleness": {"card_payments__payments_1h": {"p50": 3.0, "p99": 9.0, "max": 10.0}},
        "alerts": ["drift:user_activity__events_1d", "performance"] if drifted else [],
    }


def build(root: Path) -> Project:
    init_project(root, name="uitest", force=True)
    project = Project.load(root / "keel.toml")
    project.apply()
    rng = np.random.default_rng(3)
    views = {
        v.name: v for v in project.declared_views() if v.name in ("card_payments", "user_activity")
    }
    registry = project.registry
    for i in range(3):
        table, model = _training_set(rng, views)
        registry.register(
            "fraud",
            model,
            training_set=table,
            metrics={"auc": 0.9 + i / 100, "logloss": 0.1 - i / 100},
            parent=None if i == 0 else i,
        )
    registry.set_alias("fraud", "champion", 1, reason="first")
    registry.set_alias("fraud", "champion", 2, reason="retrained")
    registry.set_alias("fraud", "challenger", 3, reason="keel train fraud --shadow")
    log = project.log
    # The shadow of fraud@3 converging, snapshot by snapshot, then a decision on fraud@2's.
    log.create_topic(TRAFFIC, exist_ok=True)
    started = (NOW - timedelta(minutes=30)).timestamp()
    state = ShadowState("fraud", "fraud@3", "fraud@2", started)
    for k in range(1, 6):
        state.diff.update_many(rng.normal(0.05, 0.02, size=40))
        state.requests += 40
        publish_traffic(log, "fraud", "shadow_stats", state.to_dict(), at=started + 300 * k)
    publish_traffic(
        log,
        "fraud",
        "decision",
        {
            "action": "promote",
            "reason": "over 3,600 s and 400 samples the discrepancy's 95% CI is within 0.8",
            "evidence": {
                "candidate": "fraud@2",
                "primary": "fraud@1",
                "samples": 400,
                "discrepancy": 0.04,
                "ci95": [0.03, 0.05],
                "tolerance": 0.8,
            },
        },
        at=started - 600,
    )
    log.create_topic(MONITOR, exist_ok=True)
    log.append(
        MONITOR.name,
        [
            {
                "ts": NOW - timedelta(hours=WINDOWS - i),
                "route": "fraud",
                "kind": "window",
                "payload": json.dumps(_window(i, "fraud@2", drifted=i >= WINDOWS - 2)),
            }
            for i in range(WINDOWS)
        ]
        + [
            {
                "ts": NOW - timedelta(hours=1),
                "route": "fraud",
                "kind": "alert",
                "payload": json.dumps(
                    {"window": WINDOWS - 1, "alert": "drift:user_activity__events_1d"}
                ),
            }
        ],
    )
    log.create_topic(LOOP, exist_ok=True)
    t0 = NOW - timedelta(hours=2)
    trail = [
        ("trigger:keel.monitor/0/4", None, "trigger", "estimated logloss 0.3 over its level 0.2"),
        ("job:fraud:1", "trigger:keel.monitor/0/4", "job", "retrain fraud: job loop-1 submitted"),
        ("job_done:fraud:1", "job:fraud:1", "job_done", "job loop-1 succeeded"),
        ("candidate:fraud:1", "job_done:fraud:1", "candidate", "fraud@3 is fraud@challenger"),
    ]
    publish(
        log,
        [
            LoopEvent("fraud", i, cause, kind, t0 + timedelta(minutes=10 * n), {"summary": text})
            for n, (i, cause, kind, text) in enumerate(trail)
        ],
    )
    log.create_topic(EXPLANATIONS, exist_ok=True)
    log.append(
        EXPLANATIONS.name,
        [
            {
                "ts": NOW - timedelta(minutes=5),
                "route": "fraud",
                "version": "fraud@2",
                "method": "tree",
                "request_id": "pay-77",
                "payload": json.dumps(
                    {
                        "features": {"amount": 420.0, "card_payments__payments_1h": 6.0},
                        "output": 1.25,
                        "base_value": -3.0,
                        "contributions": {
                            "amount": 2.5,
                            "card_payments__payments_1h": 1.9,
                            "user_activity__events_1d": -0.15,
                        },
                    }
                ),
            }
        ],
    )
    # A job no flavor can hold: it waits with Kueue's reason, recorded by a scheduling cycle.
    from keel.jobs.manager import submit

    spec = project.job(
        "command", argv=[sys.executable, "-c", "pass"], name="too-big", requests={"cpu": 64}
    )
    submit(project.settings.jobs, project.jobs, spec, now=time.time())
    manager = project.job_manager()
    try:
        manager.tick()
    finally:
        manager.close()
    return project


@pytest.fixture(scope="module")
def ui_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The project of this module's tests (see the module's docstring)."""
    project = build(tmp_path_factory.mktemp("ui") / "proj")
    yield project
    project.registry.close()


@dataclass(frozen=True)
class Tokens:
    """Tokens of a reader and of an operator, and the auth settings that know them."""

    reader: str
    operator: str
    auth: AuthConfig


@pytest.fixture(scope="session")
def tokens() -> Tokens:
    reader, operator = "keel_reader-token-for-tests", "keel_operator-token-for-tests"
    return Tokens(
        reader,
        operator,
        AuthConfig(
            tokens=[
                TokenConfig(name="viewer", role="reader", hash=hash_token(reader)),
                TokenConfig(name="oncall", role="operator", hash=hash_token(operator)),
            ]
        ),
    )


@pytest.fixture
def console(ui_project: Project) -> Iterator[Callable[..., Any]]:
    """``console(auth=None)``: a TestClient of the project's console (no server answers)."""
    from starlette.testclient import TestClient

    from keel.ui import create_app

    clients: list[Any] = []

    def make(auth: AuthConfig | None = None) -> Any:
        app = create_app(
            ui_project, server_url=NO_SERVER, auth=auth or AuthConfig(), sample_metrics=False
        )
        client = TestClient(app, follow_redirects=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
