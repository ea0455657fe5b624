"""methods_for / explainer_for: which explanation a served runtime gets."""

from __future__ import annotations

import numpy as np
import pytest

from keel.errors import ValidationError
from keel.explain import (
    KernelExplainer,
    LinearExplainer,
    TreeExplainer,
    explainer_for,
    methods_for,
)
from keel.runtimes import (
    LightGBMRuntime,
    SklearnRuntime,
    TextEmbeddingRuntime,
    TorchRuntime,
    XGBoostRuntime,
)


def tensor_runtime() -> TorchRuntime:
    import torch

    return TorchRuntime(torch.nn.Linear(4, 2), width=4)  # no feature names: a tensor model


def gbm_runtime(data) -> SklearnRuntime:
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=10, random_state=0)
    return SklearnRuntime(model.fit(np.nan_to_num(data.x), data.y))


def test_methods_for_each_kind_of_runtime(lgb_binary, xgb_binary, data) -> None:
    assert methods_for(LightGBMRuntime(lgb_binary)) == ["tree", "kernel"]
    assert methods_for(XGBoostRuntime(xgb_binary)) == ["tree", "kernel"]
    assert methods_for(gbm_runtime(data)) == ["kernel"]
    assert methods_for(tensor_runtime()) == []
    assert methods_for(TextEmbeddingRuntime()) == []


def test_tree_models_get_the_tree_explainer_unless_asked(lgb_binary, data) -> None:
    runtime = LightGBMRuntime(lgb_binary)
    assert isinstance(explainer_for(runtime), TreeExplainer)
    kernel = explainer_for(runtime, background=data.x[:5], method="kernel", samples=64)
    assert isinstance(kernel, KernelExplainer) and kernel.output == "score"
    e = kernel.explain(data.x[:3])
    np.testing.assert_allclose(e.outputs, runtime.predict({"features": data.x[:3]})["score"])


def test_other_tabular_models_need_a_background(data) -> None:
    runtime = gbm_runtime(data)
    with pytest.raises(ValidationError, match="kernel explanation of a SklearnRuntime needs a"):
        explainer_for(runtime)
    with pytest.raises(ValidationError, match="by method 'tree'; methods available: kernel"):
        explainer_for(runtime, background=data.x[:5], method="tree")
    explainer = explainer_for(runtime, background=np.nan_to_num(data.x[:5]), samples=100)
    assert isinstance(explainer, KernelExplainer)
    assert explainer.cost(7) == 7 * 62 * 5  # 6 features: all 62 coalitions fit 100


def test_a_linear_regressor_is_explained_from_its_coefficients(data) -> None:
    from sklearn.linear_model import Ridge

    x = np.nan_to_num(data.x)
    runtime = SklearnRuntime(Ridge().fit(x, x @ np.arange(6.0)))
    background, weights = x[:20], np.random.default_rng(0).random(20)
    linear = explainer_for(runtime, background=background, weights=weights)
    assert isinstance(linear, LinearExplainer) and linear.method == "linear"
    kernel = explainer_for(runtime, background=background, weights=weights, method="kernel")
    a, b = linear.explain(x[100:110]), kernel.explain(x[100:110])
    # the exact kernel values of a linear model are its linear SHAP values
    np.testing.assert_allclose(a.contributions, b.contributions, rtol=1e-7, atol=1e-9)
    assert a.base_value == pytest.approx(b.base_value, rel=1e-9)
    np.testing.assert_allclose(a.outputs, runtime.predict({"features": x[100:110]})["score"])


@pytest.mark.parametrize(
    "make",
    [pytest.param(TextEmbeddingRuntime, id="text"), pytest.param(tensor_runtime, id="tensor")],
)
def test_runtimes_without_named_features_have_no_explanation(make) -> None:
    with pytest.raises(ValidationError, match="methods available: none"):
        explainer_for(make(), background=np.zeros((2, 4)))
