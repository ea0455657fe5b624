"""Which explanation methods a served model allows, and the explainer for one.

Only tabular runtimes are explained: one numeric input of named feature columns. LightGBM and
XGBoost models get exact TreeSHAP (of the raw margin), a scikit-learn linear regressor exact
linear SHAP, and any tabular model Kernel SHAP of its served output against a background sample.
Text, tensor and recommender runtimes have no per-feature explanation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keel.errors import ValidationError
from keel.explain.base import Explainer
from keel.explain.kernel import KernelExplainer, background_weights, check_background
from keel.explain.linear import LinearExplainer
from keel.explain.tree import TreeExplainer, booster_library

__all__ = ["explainer_for", "methods_for"]


def methods_for(runtime: Any) -> list[str]:
    """The explanation methods ``runtime`` allows, the preferred first.

    ``["tree", "kernel"]`` for LightGBM and XGBoost, ``["kernel"]`` for other tabular
    runtimes and ``[]`` for text, tensor and recommender runtimes. (A scikit-learn linear
    regressor may also be explained by method ``"linear"`` through :func:`explainer_for`.)
    """
    if not _tabular(runtime):
        return []
    if booster_library(runtime) is not None:
        return ["tree", "kernel"]
    return ["kernel"]


def explainer_for(
    runtime: Any,
    *,
    background: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    samples: int = 2048,
    method: str | None = None,
    seed: int = 0,
) -> Explainer:
    """The explainer of ``method`` for a runtime; by default the best it allows.

    The default is ``"tree"`` for LightGBM and XGBoost, ``"linear"`` for a scikit-learn linear
    regressor (exact, from its coefficients and the background's means), else ``"kernel"``.
    ``background`` (with optional ``weights``, e.g. from :func:`kmeans_background`) is needed
    by the kernel and linear methods; ``samples`` and ``seed`` are the kernel method's.

    Example
    -------
    >>> import numpy as np
    >>> from sklearn.neighbors import KNeighborsRegressor
    >>> from keel.runtimes import SklearnRuntime
    >>> x = np.random.default_rng(0).normal(size=(100, 3))
    >>> runtime = SklearnRuntime(KNeighborsRegressor().fit(x, x.sum(axis=1)))
    >>> methods_for(runtime)
    ['kernel']
    >>> explainer = explainer_for(runtime, background=x[:10])
    >>> explainer.method, explainer.exact, explainer.cost(1)
    ('kernel', True, 60)
    """
    available = methods_for(runtime)
    name = type(runtime).__name__
    if not available:
        raise ValidationError(
            f"a {name} cannot be explained per prediction: explanations need a tabular model "
            "(one numeric input of named feature columns); methods available: none"
        )
    if _linear(runtime):
        available = ["linear", *available]
    method = method or available[0]
    if method not in available:
        raise ValidationError(
            f"a {name} cannot be explained by method {method!r}; methods available: "
            f"{', '.join(available)}"
        )
    if method == "tree":
        return TreeExplainer(runtime)
    features = list(runtime.feature_names)
    if background is None:
        raise ValidationError(
            f"the {method} explanation of a {name} needs a background sample (rows of "
            f"{features}), e.g. from kmeans_background(training rows)"
        )
    if method == "linear":
        rows = check_background(background, features)
        mean = _mean(rows, background_weights(weights, len(rows)))
        estimator = runtime.estimator
        return LinearExplainer(estimator.coef_, estimator.intercept_, mean, features)
    return KernelExplainer(
        _Served(runtime), background, features, weights=weights, samples=samples, seed=seed
    )


class _Served:
    """A runtime's served output as ``(k, m) -> (k,)``: its first output, the last column of a
    2-D one (the last class, as the runtimes serve)."""

    def __init__(self, runtime: Any) -> None:
        from keel.runtimes.base import to_numpy_dtype

        self.runtime = runtime
        self.input = runtime.inputs[0].name
        self.dtype = to_numpy_dtype(runtime.inputs[0].datatype)
        self.output = runtime.outputs[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.runtime.predict({self.input: x.astype(self.dtype, copy=False)})[self.output]
        return np.asarray(out, dtype=np.float64).reshape(len(x), -1)[:, -1]


def _mean(background: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of each column over its observed values."""
    observed = ~np.isnan(background)
    w = observed * weights[:, None]
    total = np.where(observed, background, 0.0) * weights[:, None]
    return total.sum(axis=0) / np.maximum(w.sum(axis=0), np.finfo(float).tiny)


def _tabular(runtime: Any) -> bool:
    features = getattr(runtime, "feature_names", None) or []
    inputs = getattr(runtime, "inputs", None) or []
    if not features or len(inputs) != 1 or not getattr(runtime, "outputs", None):
        return False
    spec = inputs[0]
    return (
        spec.datatype != "BYTES" and len(spec.shape) == 2 and spec.shape[1] in (-1, len(features))
    )


def _linear(runtime: Any) -> bool:
    """A scikit-learn linear regressor with one output: served output = coef · x + intercept."""
    estimator = getattr(runtime, "estimator", None)
    if estimator is None or not hasattr(estimator, "coef_") or hasattr(estimator, "predict_proba"):
        return False
    from sklearn.base import is_regressor

    return is_regressor(estimator) and np.size(estimator.coef_) == len(runtime.feature_names)
