"""Exact TreeSHAP for LightGBM and XGBoost models.

Both libraries implement TreeSHAP (Lundberg et al. 2020) natively (LightGBM's
``pred_contrib``, XGBoost's ``pred_contribs``): exact Shapley values of the raw margin under the
tree path-dependent value function, with missing values following the trees' default
directions. For LightGBM, the same values come from tables built once per model
(:mod:`keel.explain.fast_tree`, Fast TreeSHAP v2) at a fraction of the native call's cost; a
model those tables do not cover (categorical or linear trees, over the memory budget) keeps the
native call. ``algorithm`` says which one an explainer uses.

Explanations are always in the ``"raw"`` space (the margin; log-odds for a binary classifier),
where they add up exactly; a probability is not a sum of per-feature terms.

A multiclass model is explained for its last class — the one the runtimes serve — as that
class's raw margin (its input to the softmax).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from keel.errors import ValidationError
from keel.explain.base import Explainer, Explanation, check_rows

if TYPE_CHECKING:
    from keel.explain.fast_tree import FastForest

__all__ = ["TreeExplainer", "booster_library"]


def booster_library(model: Any) -> str | None:
    """``"lightgbm"`` or ``"xgboost"`` when ``model`` (or its ``.booster``) is that library's
    ``Booster``, else None. Tells without importing either library."""
    booster = getattr(model, "booster", model)
    kind = type(booster)
    root = kind.__module__.split(".", 1)[0]
    if kind.__name__ == "Booster" and root in ("lightgbm", "xgboost"):
        return root
    return None


class TreeExplainer(Explainer):
    """Exact SHAP values of a LightGBM or XGBoost model's raw margin.

    ``model`` is a :class:`~keel.runtimes.LightGBMRuntime` or
    :class:`~keel.runtimes.XGBoostRuntime`, or a bare ``Booster`` of either library.
    ``features`` default to the runtime's (or the booster's) feature names.

    Example
    -------
    >>> import lightgbm, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(200, 3))
    >>> booster = lightgbm.train({"objective": "binary", "verbosity": -1, "num_threads": 1},
    ...                          lightgbm.Dataset(x, x[:, 0] > 0), num_boost_round=5)
    >>> e = TreeExplainer(booster).explain(x[:4])
    >>> e.output, bool(np.allclose(e.base_value + e.contributions.sum(1), e.outputs))
    ('raw', True)
    """

    output = "raw"

    def __init__(
        self, model: Any, *, features: list[str] | None = None, method: str = "tree"
    ) -> None:
        library = booster_library(model)
        if library is None:
            inner = next(
                (
                    getattr(model, a)
                    for a in ("booster", "estimator", "module")
                    if hasattr(model, a)
                ),
                None,
            )
            got = type(model).__qualname__
            if inner is not None:
                got += f" of {type(inner).__module__}.{type(inner).__qualname__}"
            raise ValidationError(
                f"a tree explainer needs a LightGBM or XGBoost model, got a {got}; other "
                "models are explained by the kernel method"
            )
        self.library = library
        self.booster = getattr(model, "booster", model)
        self.method = method
        self.forest: FastForest | None = None
        if library == "lightgbm":
            from keel.explain.fast_tree import compile_forest

            self.forest = compile_forest(self.booster)
        self.algorithm = "fast" if self.forest is not None else "native"
        width = self._width()
        if features is None:
            features = list(getattr(model, "feature_names", None) or self._booster_names())
        self.features = list(features)
        if len(self.features) != width:
            raise ValidationError(
                f"the {library} model has {width} features, but {len(self.features)} feature "
                f"names were given"
            )

    def _width(self) -> int:
        if self.library == "lightgbm":
            return int(self.booster.num_feature())
        return int(self.booster.num_features())

    def _booster_names(self) -> list[str]:
        if self.library == "lightgbm":
            return list(self.booster.feature_name())
        return list(self.booster.feature_names or [f"f{i}" for i in range(self._width())])

    @cached_property
    def base_value(self) -> float:
        """The expected raw margin over the training data (the contributions' bias term)."""
        if self.forest is not None:
            return self.forest.base_value
        contrib, _ = self._predict(np.full((1, len(self.features)), np.nan))
        return float(contrib[0, -1])

    def _predict(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(contributions with the bias as last column, raw margin), for the last class."""
        # One pass of the trees: the raw margin is the contributions' sum (TreeSHAP's local
        # accuracy), not a second prediction — which would double the cost of a request.
        if self.forest is not None:
            contrib = self.forest.contributions(rows)
        elif self.library == "lightgbm":
            contrib = np.asarray(self.booster.predict(rows, pred_contrib=True, num_threads=1))
            classes = int(self.booster.num_model_per_iteration())
            if classes > 1:
                contrib = contrib.reshape(len(rows), classes, -1)[:, -1, :]
        else:
            import xgboost

            names = self.features if self.booster.feature_names is not None else None
            dm = xgboost.DMatrix(rows, feature_names=names)
            contrib = np.asarray(self.booster.predict(dm, pred_contribs=True))
            if contrib.ndim == 3:
                contrib = contrib[:, -1, :]
        contrib = contrib.astype(np.float64)
        return contrib, contrib.sum(axis=1)

    def explain(self, x: np.ndarray) -> Explanation:
        rows = check_rows(x, self.features)
        if len(rows) == 0:
            empty = np.zeros((0, len(self.features)))
            return Explanation(
                self.method, self.output, list(self.features), self.base_value, empty, empty[:, 0]
            )
        contrib, raw = self._predict(rows)
        return Explanation(
            self.method,
            self.output,
            list(self.features),
            self.base_value,
            contrib[:, :-1].copy(),
            raw,
        )
