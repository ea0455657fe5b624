"""Per-prediction explanations: how much each feature moved one prediction.

Exact TreeSHAP for LightGBM and XGBoost (:class:`TreeExplainer`), exact linear SHAP
(:class:`LinearExplainer`), budgeted and batched Kernel SHAP for any tabular model
(:class:`KernelExplainer`, with a :func:`kmeans_background`), and surrogate models that make
an expensive model cheap to explain (:func:`fit_surrogate`). :func:`explainer_for` picks the
explainer for a served runtime; :func:`methods_for` lists the methods it allows.
"""

from __future__ import annotations

from keel.explain.background import kmeans_background
from keel.explain.base import Explainer, Explanation
from keel.explain.factory import explainer_for, methods_for
from keel.explain.kernel import KernelExplainer
from keel.explain.linear import LinearExplainer
from keel.explain.surrogate import Surrogate, fit_surrogate
from keel.explain.tree import TreeExplainer

__all__ = [
    "Explainer",
    "Explanation",
    "KernelExplainer",
    "LinearExplainer",
    "Surrogate",
    "TreeExplainer",
    "explainer_for",
    "fit_surrogate",
    "kmeans_background",
    "methods_for",
]
