"""TreeExplainer: exact TreeSHAP of LightGBM and XGBoost margins, checked against the model's
own raw output (additivity) and against ``shap.TreeExplainer``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from keel.errors import ValidationError
from keel.explain import TreeExplainer
from keel.runtimes import LightGBMRuntime, SklearnRuntime, XGBoostRuntime


def raw_margin(booster: Any, x: np.ndarray, names: list[str]) -> np.ndarray:
    if type(booster).__module__.startswith("lightgbm"):
        return np.asarray(booster.predict(x, raw_score=True))
    import xgboost

    return np.asarray(booster.predict(xgboost.DMatrix(x, feature_names=names), output_margin=True))


def shap_values(shap: Any, model: Any, x: np.ndarray) -> tuple[np.ndarray, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = shap.TreeExplainer(model)
        return np.asarray(ex.shap_values(x)), ex.expected_value


@pytest.fixture(params=["lightgbm", "xgboost"])
def binary(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("lgb_binary" if request.param == "lightgbm" else "xgb_binary")


def test_contributions_add_up_to_the_raw_margin_with_missing_values(binary, data) -> None:
    x = data.x[:300]
    assert np.isnan(x).any()
    runtime = LightGBMRuntime(binary) if hasattr(binary, "num_trees") else XGBoostRuntime(binary)
    e = TreeExplainer(runtime).explain(x)
    assert (e.method, e.output, e.features) == ("tree", "raw", data.features)
    assert e.contributions.shape == (300, 6) and e.contributions.dtype == np.float64
    margin = raw_margin(binary, x, data.features)
    np.testing.assert_allclose(e.outputs, margin, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(
        e.base_value + e.contributions.sum(axis=1), margin, rtol=1e-9, atol=1e-6
    )
    # the served probability is the logistic of the explained margin
    np.testing.assert_allclose(
        runtime.predict({"features": x})["score"], 1 / (1 + np.exp(-e.outputs)), rtol=1e-6
    )


def test_equals_shap_tree_explainer(binary, data, shap) -> None:
    x = data.x[:200]
    e = TreeExplainer(binary).explain(x)
    values, expected = shap_values(shap, binary, x)
    assert values.shape == e.contributions.shape
    np.testing.assert_allclose(e.contributions, values, rtol=1e-6, atol=1e-6)
    assert e.base_value == pytest.approx(float(np.asarray(expected).reshape(-1)[0]), abs=1e-6)


@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
def test_a_multiclass_model_is_explained_for_its_last_class(library, data, shap) -> None:
    y = np.digitize(np.nan_to_num(data.x[:, 0] + data.x[:, 1]), [-0.7, 0.7])
    if library == "lightgbm":
        import lightgbm

        params = {"objective": "multiclass", "num_class": 3, "verbosity": -1, "num_threads": 1}
        model = lightgbm.train(params, lightgbm.Dataset(data.x, y), num_boost_round=10)
    else:
        import xgboost

        params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "nthread": 1}
        model = xgboost.train(params, xgboost.DMatrix(data.x, y), num_boost_round=10)
    x = data.x[:100]
    e = TreeExplainer(model).explain(x)
    values, expected = shap_values(shap, model, x)
    assert values.shape == (100, 6, 3)
    np.testing.assert_allclose(e.contributions, values[:, :, -1], rtol=1e-6, atol=1e-6)
    assert e.base_value == pytest.approx(float(expected[-1]), abs=1e-6)
    margin = raw_margin(model, x, None)[:, -1]
    np.testing.assert_allclose(e.outputs, margin, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(
        e.base_value + e.contributions.sum(axis=1), margin, rtol=1e-9, atol=1e-6
    )


def test_only_lightgbm_and_xgboost_models_are_tree_explained(data) -> None:
    from sklearn.linear_model import LogisticRegression

    runtime = SklearnRuntime(LogisticRegression().fit(np.nan_to_num(data.x), data.y))
    with pytest.raises(ValidationError, match=r"LightGBM or XGBoost.*LogisticRegression"):
        TreeExplainer(runtime)


def test_feature_names_must_match_the_model(lgb_binary) -> None:
    with pytest.raises(ValidationError, match="6 features, but 2 feature names"):
        TreeExplainer(lgb_binary, features=["a", "b"])
    assert TreeExplainer(lgb_binary, features=list("abcdef")).features == list("abcdef")
