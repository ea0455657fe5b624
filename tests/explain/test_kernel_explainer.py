"""KernelExplainer: exact Shapley values when every coalition fits the budget, close ones when
sampled, efficiency always, and the model called in a few large batches, never per row."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.errors import ValidationError
from keel.explain import KernelExplainer, explainer_for
from keel.explain.kernel import coalitions
from keel.runtimes import SklearnRuntime, TorchRuntime


def mlp(m: int, features: list[str]) -> Any:
    """A small torch MLP over named features whose ``score`` is a probability."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_features = m
            self.feature_names = features
            torch.manual_seed(0)
            # float64 weights, so that the sums do not depend on the batch's size
            self.net = torch.nn.Sequential(
                torch.nn.Linear(m, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
            ).double()

        def forward(self, x: Any) -> Any:
            return self.net(x.double()).squeeze(-1)

        def score(self, x: Any) -> Any:
            return torch.sigmoid(self.forward(x))

    return Net()


def runtime_of(kind: str, make_data) -> tuple[Any, Any]:
    """A served model of ``kind`` on 6 features and the data it was trained on."""
    data = make_data(600, 6, seed=1, missing=0.0)
    if kind == "torch":
        return TorchRuntime(mlp(6, data.features)), data
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0)
    return SklearnRuntime(model.fit(data.x, data.y)), data


MODELS = [pytest.param("torch", id="torch-mlp"), pytest.param("sklearn", id="sklearn-gbm")]


def served(runtime: Any) -> Any:
    return lambda x: runtime.predict({"features": x})["score"]


@pytest.mark.parametrize("kind", MODELS)
def test_full_enumeration_gives_the_exact_shapley_values(kind, make_data, brute_force) -> None:
    runtime, data = runtime_of(kind, make_data)
    background, x = data.x[:10], data.x[100:108]
    weights = np.random.default_rng(0).random(10)
    explainer = explainer_for(runtime, background=background, weights=weights, samples=2048)
    assert isinstance(explainer, KernelExplainer)
    assert explainer.exact and explainer.coalitions == 2**6 - 2
    e = explainer.explain(x)
    phi, base = brute_force(served(runtime), x, background, weights)
    assert (e.method, e.output) == ("kernel", "score")
    np.testing.assert_allclose(e.contributions, phi, rtol=0, atol=1e-8)
    assert e.base_value == pytest.approx(base, abs=1e-12)
    np.testing.assert_allclose(e.outputs, served(runtime)(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", MODELS)
def test_equals_shap_kernel_explainer_when_it_enumerates(kind, make_data, shap) -> None:
    runtime, data = runtime_of(kind, make_data)
    background, x = data.x[:12], data.x[200:205]
    ours = explainer_for(runtime, background=background).explain(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = shap.KernelExplainer(served(runtime), background)
        values = reference.shap_values(x, nsamples=2**6, l1_reg=False, silent=True)
    np.testing.assert_allclose(ours.contributions, np.asarray(values), rtol=0, atol=1e-6)
    assert ours.base_value == pytest.approx(float(reference.expected_value), abs=1e-6)


@pytest.fixture(scope="module", params=MODELS)
def wide(request, make_data, brute_force) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """A model on 12 features, a background, rows to explain and their exact values."""
    data = make_data(1000, 12, seed=2, missing=0.0)
    if request.param == "torch":
        runtime: Any = TorchRuntime(mlp(12, data.features))
    else:
        from sklearn.ensemble import GradientBoostingClassifier

        gbm = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0)
        runtime = SklearnRuntime(gbm.fit(data.x, data.y))
    background, x = data.x[:8], data.x[500:510]
    phi, _ = brute_force(served(runtime), x, background)
    return runtime, background, x, phi


def relative_error(runtime: Any, background, x, phi, samples: int, seed: int) -> float:
    explainer = explainer_for(runtime, background=background, samples=samples, seed=seed)
    assert not explainer.exact and explainer.coalitions == samples
    e = explainer.explain(x)
    # efficiency holds exactly whatever the sample
    np.testing.assert_allclose(e.base_value + e.contributions.sum(axis=1), e.outputs, atol=1e-12)
    return float(np.abs(e.contributions - phi).mean() / np.abs(phi).mean())


def test_sampled_values_are_close_and_improve_with_the_budget(wide) -> None:
    # Measured on these models (12 features, 2**12 - 2 = 4094 coalitions; mean over 3 seeds),
    # mean absolute error / mean |phi|: torch 3.1% at 128 coalitions, 1.2% at 512, 0.4% at
    # 2048; scikit-learn 4.5%, 1.7%, 0.6% (shap.KernelExplainer at the same budgets: the same).
    errors = {
        samples: np.mean([relative_error(*wide, samples, seed) for seed in (0, 1)])
        for samples in (128, 512, 2048)
    }
    assert errors[512] < 0.04
    assert errors[2048] < 0.015
    assert errors[2048] < errors[512] < errors[128]


def test_the_model_is_called_in_few_batches_not_per_row(wide) -> None:
    runtime, background, x, _ = wide
    calls: list[int] = []

    def counted(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return served(runtime)(rows)

    explainer = KernelExplainer(counted, background, runtime.feature_names, samples=256)
    first = explainer.explain(x)
    # one call: the 10 rows, the 8 background rows (for the base value) and every coalition
    assert calls == [10 + 8 + explainer.cost(10)]
    assert explainer.cost(10) == 10 * 256 * 8
    assert first.evaluations == sum(calls)
    calls.clear()
    again = explainer.explain(x)  # the base value is kept
    assert calls == [10 + explainer.cost(10)] and again.evaluations == calls[0]
    np.testing.assert_array_equal(again.contributions, first.contributions)

    limited = KernelExplainer(counted, background, runtime.feature_names, samples=256)
    limited.max_batch = 3000
    calls.clear()
    chunked = limited.explain(x)
    assert max(calls) <= 3000
    # every chunk but the last is full, to within one background block (8 rows)
    assert all(n > 3000 - 8 for n in calls[:-1])
    assert len(calls) == math.ceil(sum(calls) / 3000)
    np.testing.assert_allclose(chunked.contributions, first.contributions, rtol=0, atol=1e-12)


def test_rows_are_explained_independently_of_their_batch(wide) -> None:
    runtime, background, x, _ = wide
    explainer = explainer_for(runtime, background=background, samples=300)
    together = explainer.explain(x).contributions
    alone = np.vstack([explainer.explain(row).contributions for row in x[:3]])
    np.testing.assert_allclose(alone, together[:3], rtol=0, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 7),
    b=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    samples=st.sampled_from([32, 64, 2048]),
)
def test_a_linear_model_gets_coef_times_distance_to_the_background_mean(
    m, b, seed, samples
) -> None:
    # For f(x) = w·x + c the interventional Shapley values are w_j (x_j - E[background_j]),
    # and the kernel regression recovers them exactly from any set of coalitions that tells
    # the features apart (budgets of 32 or more enumerate the single-feature coalitions here).
    rng = np.random.default_rng(seed)
    w, c = rng.normal(size=m), rng.normal()
    background, weights, x = rng.normal(size=(b, m)), rng.random(b) + 0.1, rng.normal(size=(3, m))
    explainer = KernelExplainer(
        lambda rows: rows @ w + c,
        background,
        [f"f{i}" for i in range(m)],
        weights=weights,
        samples=samples,
        seed=seed,
    )
    e = explainer.explain(x)
    mean = weights @ background / weights.sum()
    np.testing.assert_allclose(e.contributions, w * (x - mean), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(e.outputs, x @ w + c, rtol=1e-12, atol=1e-12)
    assert e.base_value == pytest.approx(mean @ w + c, abs=1e-9)


@pytest.mark.parametrize(
    ("m", "samples"), [(2, 100), (5, 30), (10, 100), (10, 2048), (20, 500), (40, 2000)]
)
def test_coalitions_fit_the_budget_without_repeats_or_trivial_ones(m, samples) -> None:
    mask, weight = coalitions(m, samples, seed=3)
    assert len(mask) == min(samples, 2**m - 2)
    assert len(np.unique(mask, axis=0)) == len(mask)
    sizes = mask.sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= m - 1
    assert (weight > 0).all()
    again, _ = coalitions(m, samples, seed=3)
    np.testing.assert_array_equal(again, mask)


def test_bad_input_is_refused_with_what_was_expected() -> None:
    explainer = KernelExplainer(lambda x: x.sum(1), np.zeros((2, 3)), ["age", "income", "debt"])
    with pytest.raises(ValidationError, match=r"expected \(rows, 3\).*'age', 'income', 'debt'"):
        explainer.explain(np.zeros((4, 2)))
    with pytest.raises(ValidationError, match="background has shape"):
        KernelExplainer(lambda x: x.sum(1), np.zeros((2, 4)), ["a", "b", "c"])
    with pytest.raises(ValidationError, match="one per background row"):
        KernelExplainer(lambda x: x.sum(1), np.zeros((2, 1)), ["a"], weights=np.ones(3))
    with pytest.raises(ValidationError, match="samples must be a positive integer"):
        KernelExplainer(lambda x: x.sum(1), np.zeros((2, 1)), ["a"], samples=0)
    wrong = KernelExplainer(lambda x: np.zeros((len(x), 2)), np.zeros((2, 2)), ["a", "b"])
    with pytest.raises(ValidationError, match="one number per row"):
        wrong.explain(np.ones((1, 2)))
