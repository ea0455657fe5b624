"""Fast TreeSHAP tables against LightGBM's own ``pred_contrib``: the same Shapley values, bias
included, over the splits that make TreeSHAP hard — missing values to either side, zero as
missing, a feature split on twice on one path, deep paths, single-leaf trees, several classes —
and the models the tables do not cover keep the native call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from keel.explain import TreeExplainer, fast_tree
from keel.explain.fast_tree import compile_forest


def train(x: np.ndarray, y: np.ndarray, rounds: int = 30, **params: Any) -> Any:
    import lightgbm

    base = {"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": 0}
    return lightgbm.train(base | params, lightgbm.Dataset(x, y), num_boost_round=rounds)


def problem(n: int = 3000, m: int = 6, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m))
    x[::7, 1] = np.nan
    x[::5, 2] = 0.0
    x[::11, 3] = np.nan
    signal = x[:, 0] + np.nan_to_num(x[:, 1]) * x[:, 2] + (x[:, 3] > 0.5) + rng.normal(size=n)
    return x, (signal > 0).astype(float)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="nan-missing"),
        pytest.param({"zero_as_missing": True}, id="zero-as-missing"),
        pytest.param({"use_missing": False}, id="no-missing"),
        pytest.param({"num_leaves": 63, "min_data_in_leaf": 3}, id="deep"),
    ],
)
def test_the_tables_give_lightgbms_own_contributions(params: dict[str, Any]) -> None:
    x, y = problem()
    booster = train(x, y, **params)
    forest = compile_forest(booster)
    assert forest is not None
    # Paths that split on one feature more than once: the case TreeSHAP must merge.
    assert forest.leaf_depth.max() >= 3
    rows = np.vstack([x[:400], np.full((1, x.shape[1]), np.nan), np.zeros((1, x.shape[1]))])
    ours = forest.contributions(rows)
    theirs = booster.predict(rows, pred_contrib=True)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def test_a_feature_split_twice_on_a_path_is_one_player() -> None:
    # One feature only: every path splits on it again and again, yet it is one slot.
    rng = np.random.default_rng(2)
    x = rng.uniform(-3, 3, size=(2000, 1))
    y = (np.sin(3 * x[:, 0]) > 0).astype(float)
    booster = train(x, y, rounds=10, num_leaves=15, min_data_in_leaf=5)
    forest = compile_forest(booster)
    assert forest is not None and forest.leaf_depth.max() == 1
    assert booster.dump_model()["tree_info"][0]["num_leaves"] > 4
    np.testing.assert_allclose(
        forest.contributions(x[:300]), booster.predict(x[:300], pred_contrib=True), atol=1e-9
    )


def test_single_leaf_trees_only_add_to_the_base_value() -> None:
    x, _ = problem(n=500)
    booster = train(x, np.zeros(500), rounds=5)  # one class: no tree can split
    forest = compile_forest(booster)
    assert forest is not None and len(forest.node_feature) == 0
    got = forest.contributions(x[:20])
    np.testing.assert_allclose(got, booster.predict(x[:20], pred_contrib=True), atol=1e-12)
    assert np.all(got[:, :-1] == 0)


def test_a_multiclass_model_is_tabled_for_its_last_class() -> None:
    x, y = problem()
    classes = (np.nan_to_num(x[:, 0]) > 0).astype(int) + y.astype(int)
    booster = train(x, classes, objective="multiclass", num_class=3)
    explainer = TreeExplainer(booster)
    assert explainer.algorithm == "fast"
    native = booster.predict(x[:200], pred_contrib=True).reshape(200, 3, -1)[:, -1, :]
    e = explainer.explain(x[:200])
    np.testing.assert_allclose(e.contributions, native[:, :-1], atol=1e-9)
    np.testing.assert_allclose(e.base_value, native[0, -1], atol=1e-12)


def test_categorical_trees_and_tables_over_budget_keep_the_native_call(monkeypatch) -> None:
    import lightgbm

    x, y = problem()
    x[:, 4] = np.floor(np.abs(x[:, 4]) * 3)
    y = np.where(np.isin(x[:, 4], [1, 4]), 1.0 - y, y)
    params = {"objective": "binary", "verbosity": -1, "num_threads": 1}
    booster = lightgbm.train(
        params, lightgbm.Dataset(x, y, categorical_feature=[4]), num_boost_round=10
    )
    assert booster.dump_model()["tree_info"][0]["num_cat"] > 0
    explainer = TreeExplainer(booster)
    assert explainer.algorithm == "native"
    np.testing.assert_allclose(
        explainer.explain(x[:50]).contributions,
        booster.predict(x[:50], pred_contrib=True)[:, :-1],
        atol=1e-12,
    )

    plain = train(*problem())
    assert TreeExplainer(plain).algorithm == "fast"
    monkeypatch.setattr(fast_tree, "TABLE_BUDGET", 100)
    assert compile_forest(plain) is None
    assert TreeExplainer(plain).algorithm == "native"
