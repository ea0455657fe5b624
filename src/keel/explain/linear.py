"""Exact SHAP values of a linear model.

For ``f(x) = intercept + coef · x`` and the interventional value function over data with
feature means ``mean``, the Shapley value of feature ``j`` is ``coef_j * (x_j - mean_j)`` and the
base value ``intercept + coef · mean`` (Lundberg & Lee 2017, linear model under feature
independence); no model evaluation is needed.
"""

from __future__ import annotations

import numpy as np

from keel.errors import ValidationError
from keel.explain.base import OUTPUTS, Explainer, Explanation, check_rows

__all__ = ["LinearExplainer"]


class LinearExplainer(Explainer):
    """Contributions ``coef_j * (x_j - mean_j)`` of a linear model.

    A missing value (NaN) is read as the feature's mean, so it contributes nothing — the same
    mean imputation a linear surrogate is trained with.

    Example
    -------
    >>> import numpy as np
    >>> ex = LinearExplainer(np.array([2.0, -1.0]), 0.5, np.array([1.0, 0.0]), ["a", "b"])
    >>> e = ex.explain(np.array([[2.0, np.nan]]))
    >>> e.base_value, e.contributions.tolist(), e.outputs.tolist()
    (2.5, [[2.0, 0.0]], [4.5])
    """

    def __init__(
        self,
        coef: np.ndarray,
        intercept: float,
        mean: np.ndarray,
        features: list[str],
        *,
        output: str = "score",
        method: str = "linear",
    ) -> None:
        self.coef = np.asarray(coef, dtype=np.float64).reshape(-1)
        self.intercept = float(np.asarray(intercept, dtype=np.float64).reshape(-1)[0])
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.features = list(features)
        self.output = output
        self.method = method
        m = len(self.features)
        if self.coef.shape != (m,) or self.mean.shape != (m,):
            raise ValidationError(
                f"a linear explainer over {m} features needs {m} coefficients and {m} means, "
                f"got {self.coef.size} and {self.mean.size}"
            )
        if not np.isfinite(self.mean).all():
            raise ValidationError("a linear explainer's feature means must be finite numbers")
        if output not in OUTPUTS:
            raise ValidationError(f"unknown output space {output!r}; expected one of {OUTPUTS}")

    @property
    def base_value(self) -> float:
        """The model's output at the mean: ``intercept + coef · mean``."""
        return self.intercept + float(self.coef @ self.mean)

    def explain(self, x: np.ndarray) -> Explanation:
        rows = check_rows(x, self.features)
        contributions = np.where(np.isnan(rows), 0.0, (rows - self.mean) * self.coef)
        base = self.base_value
        return Explanation(
            self.method,
            self.output,
            list(self.features),
            base,
            contributions,
            base + contributions.sum(axis=1),
        )
