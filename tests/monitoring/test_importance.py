"""Global feature importance per monitored window (mean |TreeSHAP| of a tree model), beside
its reference's, and the report's section on it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from keel.config import MonitorConfig, RouteConfig
from keel.monitoring import Monitor, history
from keel.monitoring.report import write_report
from keel.serving import InferenceServer
from keel.serving.routes import Rows

NAMES = ["card__count_1h", "card__amount_1d", "amount"]
WINDOW = 100


def _matrix(table, names: list[str]) -> np.ndarray:
    return np.column_stack([table[n].to_numpy().astype(np.float64) for n in names])


def _mean_abs_shap(booster, x: np.ndarray) -> np.ndarray:
    """Mean |TreeSHAP| per column, straight from LightGBM (the last column is the bias)."""
    return np.abs(booster.predict(x, pred_contrib=True)[:, :-1]).mean(axis=0)


def _register_stumps(world, name: str, names: list[str], seed: int):
    """An additive LightGBM model (one split per tree): each feature's TreeSHAP
    contribution depends on that feature's value alone. Trained on a target that every
    input moves, registered with the world's training set and promoted."""
    import lightgbm

    _, train = world.train(seed=2)
    x = _matrix(train, names)
    rng = np.random.default_rng(seed)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    y = (rng.random(len(z)) < 1 / (1 + np.exp(-z @ np.linspace(1.5, 0.8, len(names))))).astype(int)
    model = lightgbm.LGBMClassifier(
        n_estimators=30, max_depth=1, num_leaves=2, min_child_samples=5, verbose=-1
    )
    model.fit(x, y, feature_name=names)
    version = world.registry.register(name, model, training_set=train).version
    world.registry.set_alias(name, "champion", version)
    return model.booster_, train


def _route(name: str, **monitor) -> RouteConfig:
    return RouteConfig(
        name=name,
        model=f"{name}@champion",
        features=["card"],
        max_wait_ms=2,
        monitor=MonitorConfig(window_rows=WINDOW, **monitor),
    )


def _serve(world, cfg: RouteConfig, amounts: np.ndarray, seed: int) -> None:
    server = InferenceServer(
        [cfg], registry=world.registry, features=world.features, log_=world.log
    )
    server.load_all()
    cards = np.random.default_rng(seed).integers(0, 50, len(amounts))

    async def go() -> None:
        await server.start()
        for i in range(0, len(amounts), 20):
            rows = [
                {"card_id": int(c), "amount": float(a)}
                for c, a in zip(cards[i : i + 20], amounts[i : i + 20], strict=True)
            ]
            await server.infer(cfg.name, Rows(rows, len(rows)))
        await server.stop()

    asyncio.run(go())


def _monitor(world, cfg: RouteConfig) -> Monitor:
    return Monitor(cfg, log_=world.log, registry=world.registry, features=world.features)


def _cell(record: dict, name: str) -> str:
    """A reference importance as the report's table prints it."""
    value = record["importance"]["reference"][name]
    return f"{value:,.0f}" if abs(value) >= 10**4 else f"{value:.4g}"


def _section(html: str) -> str | None:
    match = re.search(r'<section id="importance">(.*?)</section>', html, re.S)
    return match.group(1) if match else None


def test_each_window_carries_its_importance_beside_the_reference(world, tmp_path: Path) -> None:
    booster, train = _register_stumps(world, "stumps", NAMES, seed=0)
    cfg = _route("stumps")
    # Each amount's contribution over the training set: the extremes, held constant over a
    # window, give that window's amount importance below and above the reference's.
    phi = booster.predict(_matrix(train, NAMES), pred_contrib=True)[:, NAMES.index("amount")]
    amounts = train["amount"].to_numpy()
    low, high = amounts[np.argmin(np.abs(phi))], amounts[np.argmax(np.abs(phi))]
    rng = np.random.default_rng(4)
    healthy = np.round(rng.gamma(2, 30, WINDOW), 2)
    _serve(world, cfg, np.concatenate([healthy, np.full(WINDOW, low), np.full(WINDOW, high)]), 1)

    monitor = _monitor(world, cfg)
    records = monitor.step()
    assert [r["window"] for r in records] == [0, 1, 2]

    # The reference: mean |TreeSHAP| over the training matrix, as LightGBM computes it.
    expected = _mean_abs_shap(booster, _matrix(train, NAMES))
    for r in records:
        imp = r["importance"]
        assert imp["method"] == "tree" and list(imp["features"]) == NAMES
        assert list(imp["reference"]) == NAMES
        assert [imp["reference"][n] for n in NAMES] == pytest.approx(expected, rel=1e-9)
    assert min(expected) > 0, "every input moves the model: none has zero importance"

    # Each window's: the same over the window's rows as served (read back from the log).
    logged = world.log.read(monitor.topic, 0, 0, 3 * WINDOW)
    for r in records:
        rows = logged.slice(r["window"] * WINDOW, WINDOW)
        got = [r["importance"]["features"][n] for n in NAMES]
        assert got == pytest.approx(_mean_abs_shap(booster, _matrix(rows, NAMES)), rel=1e-9)

    # A constant amount has one contribution on every row: its importance is that value's
    # |contribution|, the smallest (then the largest) of the training set's.
    ref = records[0]["importance"]["reference"]["amount"]
    at_low, at_high = (r["importance"]["features"]["amount"] for r in records[1:])
    assert at_low == pytest.approx(np.abs(phi).min(), rel=1e-9) and at_low < ref
    assert at_high == pytest.approx(np.abs(phi).max(), rel=1e-9) and at_high > ref

    # JSON on the log, read back as published.
    assert [h["importance"] for h in history(world.log, "stumps")] == [
        r["importance"] for r in records
    ]

    html = monitor.report(tmp_path / "r.html").read_text("utf-8")
    section = _section(html)
    assert section is not None and 'href="#importance"' in html
    assert section.count("<img ") == 1 and 'alt="feature importance per window"' in section
    for n in NAMES:
        assert f'<td>{n}</td><td class="n">{_cell(records[-1], n)}</td>' in section


def test_the_importance_follows_a_promoted_version(world) -> None:
    _register_stumps(world, "stumps", NAMES, seed=0)
    cfg = _route("stumps")
    rng = np.random.default_rng(6)
    _serve(world, cfg, np.round(rng.gamma(2, 30, WINDOW), 2), 1)
    monitor = _monitor(world, cfg)
    (first,) = monitor.step()
    assert list(first["importance"]["features"]) == NAMES

    names = ["card__amount_1d", "amount"]
    booster, train = _register_stumps(world, "stumps", names, seed=1)
    _serve(world, cfg, np.round(rng.gamma(2, 30, WINDOW), 2), 2)
    (after,) = monitor.step()
    assert after["version"] == "stumps@2"
    imp = after["importance"]
    assert list(imp["features"]) == list(imp["reference"]) == names
    expected = _mean_abs_shap(booster, _matrix(train, names))
    assert [imp["reference"][n] for n in names] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "kind",
    [
        # SklearnRuntime predicts on a bare array: scikit-learn warns that the names the
        # estimator was fitted with are missing (the runtime's behaviour, not the monitor's).
        pytest.param(
            "linear-model",
            marks=pytest.mark.filterwarnings("ignore:X does not have valid feature names"),
            id="linear-model",
        ),
        pytest.param("log-reference", id="log-reference"),
    ],
)
def test_no_importance_without_a_tree_model_from_its_training_set(world, tmp_path, kind) -> None:
    if kind == "linear-model":
        from sklearn.linear_model import LogisticRegression

        _, train = world.train(seed=2)
        x = pd.DataFrame({n: train[n].to_numpy() for n in NAMES})
        model = LogisticRegression(max_iter=1000).fit(x, train["y"].to_numpy())
        world.registry.register("linear", model, training_set=train)
        world.registry.set_alias("linear", "champion", 1)
        cfg = _route("linear")
    else:
        _register_stumps(world, "stumps", NAMES, seed=0)
        cfg = _route("stumps", reference_rows=2 * WINDOW)
    rng = np.random.default_rng(8)
    _serve(world, cfg, np.round(rng.gamma(2, 30, 3 * WINDOW), 2), 1)
    monitor = _monitor(world, cfg)
    records = monitor.step()
    assert records and all(r["importance"] is None for r in records)
    assert monitor.explainer_ is None
    html = monitor.report(tmp_path / "r.html").read_text("utf-8")
    assert _section(html) is None and "#importance" not in html


def _record(window: int, features: dict[str, float], alerts: list[str]) -> dict:
    return {
        "window": window,
        "version": "m@1",
        "rows": 1000,
        "features": [],
        "alerts": alerts,
        "importance": {
            "features": features,
            "reference": {"amount": 0.6, "card__amount_1d": 0.3, "card__count_1h": 0.1},
            "method": "tree",
            "output": "raw",
        },
    }


def test_the_report_names_the_features_whose_share_moved_after_the_drift(tmp_path) -> None:
    steady = {"amount": 0.6, "card__amount_1d": 0.3, "card__count_1h": 0.1}
    # From window 3 the amount stops mattering (its share 60% -> 10%); the card's 1-day
    # spend takes over (30% -> 70%), the hourly count a little (10% -> 20%).
    moved = {"amount": 0.1, "card__amount_1d": 0.7, "card__count_1h": 0.2}
    records = [
        {"window": 0, "version": "m@1", "rows": 1000, "features": [], "alerts": []},
        _record(1, steady, []),
        _record(2, steady, []),
        _record(3, moved, ["drift:amount"]),
        _record(4, moved, ["drift:amount"]),
    ]
    html = write_report(tmp_path / "r.html", route="r", model="m", history=records).read_text()
    section = _section(html)
    assert section is not None and section.count("<img ") == 1
    named = re.search(r"moved most after the first drifted window \(3\):(.*?)</p>", section, re.S)
    assert named, section
    assert re.findall(r"<b>([^<]+)</b>", named.group(1)) == [
        "amount",
        "card__amount_1d",
        "card__count_1h",
    ]
    assert "<b>amount</b> 60.0% → 10.0% (-50.0 pts)" in named.group(1)
    assert "<b>card__amount_1d</b> 30.0% → 70.0% (+40.0 pts)" in named.group(1)
    # The latest window against the reference: amount 0.6 -> 0.1.
    assert '<td>amount</td><td class="n">0.6</td><td class="n">0.1</td>' in section
    assert "-0.5" in section and "60.0% → 10.0%" in section

    # Older records, without the key, show no section.
    for r in records:
        r.pop("importance", None)
    html = write_report(tmp_path / "r.html", route="r", model="m", history=records).read_text()
    assert _section(html) is None
