"""Surrogates: a small LightGBM or ridge model fitted to a primary's outputs, explained exactly,
with its fidelity measured on held-out rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from keel.errors import ValidationError
from keel.explain import LinearExplainer, Surrogate, TreeExplainer, fit_surrogate
from keel.registry import Registry


@pytest.fixture(scope="module")
def primary(make_data) -> tuple[Any, np.ndarray, list[str]]:
    """A smooth LightGBM classifier (few, large leaves) and its training rows."""
    import lightgbm

    data = make_data(4000, 6, seed=0)
    params = {"objective": "binary", "num_leaves": 15, "learning_rate": 0.05, "verbosity": -1}
    params |= {"min_data_in_leaf": 50, "num_threads": 1, "deterministic": True, "seed": 0}
    train = lightgbm.Dataset(data.x, data.y, feature_name=data.features)
    return lightgbm.train(params, train, num_boost_round=150), data.x, data.features


def test_tree_surrogate_is_faithful_to_a_smooth_primary(primary) -> None:
    booster, x, features = primary
    reference = TreeExplainer(booster)
    target = reference.explain(x).outputs
    s = fit_surrogate(x, target, features, kind="tree", reference=reference)
    assert (s.kind, s.output, s.features) == ("tree", "raw", features)
    assert s.fidelity["rows"] == 800
    # measured: r2 0.95 on held-out rows, rank correlation 0.94 with TreeSHAP of the primary
    assert s.fidelity["r2"] > 0.9
    assert 0.8 < s.fidelity["rank_correlation"] <= 1.0
    assert 0 < s.fidelity["rank_rows"] <= 200

    explainer = s.explainer()
    assert (explainer.method, explainer.output) == ("surrogate", "raw")
    e = explainer.explain(x[:100])
    np.testing.assert_allclose(e.outputs, s.model.predict(x[:100]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        e.base_value + e.contributions.sum(axis=1), e.outputs, rtol=1e-9, atol=1e-6
    )


def test_linear_surrogate_of_a_tree_primary_reports_its_lower_fidelity(primary) -> None:
    booster, x, features = primary
    reference = TreeExplainer(booster)
    target = reference.explain(x).outputs
    linear = fit_surrogate(x, target, features, kind="linear", reference=reference)
    tree = fit_surrogate(x, target, features, kind="tree", reference=reference)
    # the primary is not linear (a sine, a square, an interaction): a line explains less of it
    assert linear.fidelity["r2"] < tree.fidelity["r2"]
    assert -1.0 <= linear.fidelity["rank_correlation"] <= 1.0
    e = linear.explainer().explain(x[:50])
    assert (e.method, e.output) == ("surrogate", "raw")
    np.testing.assert_allclose(e.outputs, linear.model.predict(x[:50]), rtol=1e-9, atol=1e-9)


def fitted_rows(x: np.ndarray, seed: int, holdout: float = 0.2) -> np.ndarray:
    """The rows fit_surrogate trains on (all but its seeded held-out share)."""
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order[round(len(x) * holdout) :]]


def test_linear_surrogate_recovers_a_linear_target() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, 0, -2, 1]
    coef, intercept = rng.normal(size=5), 0.7
    s = fit_surrogate(x, x @ coef + intercept, list("abcde"), kind="linear", seed=1)
    assert s.output == "score" and "rank_correlation" not in s.fidelity
    assert s.fidelity["r2"] > 1 - 1e-9
    np.testing.assert_allclose(s.model[-1].coef_, coef, rtol=1e-6)

    explainer = s.explainer()
    assert isinstance(explainer, LinearExplainer)
    mean = fitted_rows(x, seed=1).mean(axis=0)
    np.testing.assert_allclose(explainer.mean, mean, rtol=1e-12)
    e = explainer.explain(x[:20])
    np.testing.assert_allclose(e.contributions, s.model[-1].coef_ * (x[:20] - mean), rtol=1e-9)
    np.testing.assert_allclose(e.outputs, x[:20] @ coef + intercept, rtol=1e-6)


def test_linear_surrogate_reads_a_missing_value_as_the_training_mean() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1000, 4))
    target = x @ [1.0, -2.0, 0.5, 3.0]
    x[rng.random(x.shape) < 0.1] = np.nan
    s = fit_surrogate(x, target, list("abcd"), kind="linear", seed=2)
    explainer = s.explainer()
    np.testing.assert_allclose(explainer.mean, np.nanmean(fitted_rows(x, seed=2), axis=0))
    rows = x[:50]
    assert np.isnan(rows).any()
    e = explainer.explain(rows)
    assert (e.contributions[np.isnan(rows)] == 0).all()
    assert (e.contributions[~np.isnan(rows)] != 0).all()
    # the registered pipeline imputes the same means, so the explanation adds up to it
    np.testing.assert_allclose(e.outputs, s.model.predict(rows), rtol=1e-9, atol=1e-12)


def test_same_seed_same_surrogate(primary) -> None:
    booster, x, features = primary
    target = booster.predict(x, raw_score=True)
    a = fit_surrogate(x, target, features, seed=5)
    b = fit_surrogate(x, target, features, seed=5)
    assert a.model.model_to_string() == b.model.model_to_string()
    assert a.fidelity == b.fidelity


@pytest.mark.parametrize(("kind", "fmt"), [("tree", "lightgbm"), ("linear", "sklearn")])
def test_a_surrogate_is_registered_and_loaded_back(primary, tmp_path, kind, fmt) -> None:
    booster, x, features = primary
    target = booster.predict(x, raw_score=True)
    s = fit_surrogate(x, target, features, kind=kind, output="raw")
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts"))
    try:
        registry.register("fraud-surrogate", s.model, format=fmt, metrics=dict(s.fidelity))
        loaded = registry.load("fraud-surrogate")
    finally:
        registry.close()
    again = Surrogate(kind, loaded, features, "raw", s.fidelity).explainer().explain(x[:30])
    original = s.explainer().explain(x[:30])
    np.testing.assert_allclose(again.contributions, original.contributions, rtol=1e-12)
    assert again.base_value == pytest.approx(original.base_value, rel=1e-12)


def test_bad_input_is_refused(primary) -> None:
    booster, x, features = primary
    target = booster.predict(x, raw_score=True)
    with pytest.raises(ValidationError, match="unknown surrogate kind 'forest'"):
        fit_surrogate(x, target, features, kind="forest")
    with pytest.raises(ValidationError, match=r"expected \(rows, 5\)"):
        fit_surrogate(x, target, features[:5])
    with pytest.raises(ValidationError, match="4000 finite numbers"):
        fit_surrogate(x, target[:-1], features)
    with pytest.raises(ValidationError, match="at least 2 of each"):
        fit_surrogate(x[:3], target[:3], features)
    with pytest.raises(ValidationError, match="explains 'raw' outputs"):
        fit_surrogate(x, target, features, reference=TreeExplainer(booster), output="score")
