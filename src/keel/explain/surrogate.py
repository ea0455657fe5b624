"""Surrogate models: a small, fast model trained to mimic a primary, explained exactly.

When a primary model is too costly to explain per request (Kernel SHAP needs thousands of
evaluations a row), a surrogate fitted on the primary's outputs can be explained cheaply and
exactly instead: a small LightGBM regressor by TreeSHAP, or a ridge regression by its
coefficients. The explanation is then of the surrogate, so its :attr:`Surrogate.fidelity` says
how far to trust it: R² against the primary's outputs on held-out rows, and how well its
attributions rank features like a reference explainer of the primary does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from keel.errors import ValidationError
from keel.explain.base import OUTPUTS, Explainer
from keel.explain.linear import LinearExplainer
from keel.explain.tree import TreeExplainer

__all__ = ["KINDS", "Surrogate", "fit_surrogate"]

#: The surrogate model kinds.
KINDS = ("tree", "linear")

#: Held-out rows used to compare attributions with the reference explainer.
RANK_ROWS = 200

#: The tree surrogate's LightGBM parameters: small, and the same model on every run.
TREE_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "num_leaves": 15,
    "learning_rate": 0.2,
    "min_data_in_leaf": 10,
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}
TREE_ROUNDS = 60

_LIGHTGBM_NAME = re.compile(r'[^\s\[\]{}",:]+')

#: The linear surrogate's ridge penalty: small enough to recover a linear target exactly,
#: enough to keep collinear features solvable.
RIDGE_ALPHA = 1e-6


@dataclass(slots=True)
class Surrogate:
    """A fitted surrogate and how faithful it is to the primary.

    ``model`` is a ``lightgbm.Booster`` (kind ``"tree"``, registrable as format
    ``"lightgbm"``) or a scikit-learn pipeline of mean imputation and ridge regression (kind
    ``"linear"``, format ``"sklearn"``). ``fidelity`` holds ``r2`` and ``rows`` (held-out rows
    used), and with a reference explainer ``rank_correlation`` (mean Spearman correlation of
    the two attributions over ``rank_rows`` held-out rows; rows where either attribution is
    constant have no rank correlation and are skipped).
    """

    kind: str
    model: Any
    features: list[str]
    output: str
    fidelity: dict[str, float]

    def explainer(self) -> Explainer:
        """An exact explainer of the surrogate (method ``"surrogate"``), in the primary's
        output space."""
        if self.kind == "tree":
            explainer = TreeExplainer(self.model, features=self.features, method="surrogate")
            # a regression booster's raw output is its prediction: the primary's output space
            explainer.output = self.output
            return explainer
        imputer, ridge = self.model[0], self.model[-1]
        return LinearExplainer(
            ridge.coef_,
            float(ridge.intercept_),
            imputer.statistics_,
            self.features,
            output=self.output,
            method="surrogate",
        )


def fit_surrogate(
    x: np.ndarray,
    target: np.ndarray,
    features: list[str],
    *,
    kind: str = "tree",
    reference: Explainer | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    output: str | None = None,
) -> Surrogate:
    """Fit a surrogate of kind ``kind`` to ``target``, the primary's outputs on ``x``.

    ``target`` is in the space the primary is explained in (a tree model's raw margin,
    otherwise its score); ``output`` names it and defaults to the reference's output space,
    or ``"score"``. A seeded permutation holds out a ``holdout`` share of the rows to measure
    fidelity. Missing values are left to LightGBM for a tree, and replaced by the training
    means for a linear surrogate (whose explainer then gives them no contribution).

    Example
    -------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(500, 3))
    >>> s = fit_surrogate(x, 2 * x[:, 0] - x[:, 2], ["a", "b", "c"], kind="linear")
    >>> round(s.fidelity["r2"], 6), s.explainer().method
    (1.0, 'surrogate')
    """
    rows, y, held_count = _check(x, target, features, kind, holdout)
    if output is None:
        output = reference.output if reference is not None else "score"
    if output not in OUTPUTS:
        raise ValidationError(f"unknown output space {output!r}; expected one of {OUTPUTS}")
    if reference is not None and (
        reference.output != output or list(reference.features) != list(features)
    ):
        raise ValidationError(
            f"the reference explainer explains {reference.output!r} outputs of features "
            f"{reference.features}, but the surrogate is fitted to {output!r} outputs of "
            f"{list(features)}"
        )
    order = np.random.default_rng(seed).permutation(len(rows))
    held = order[:held_count]
    fit = order[len(held) :]
    model = (
        _fit_tree(rows[fit], y[fit], features, seed)
        if kind == "tree"
        else _fit_linear(rows[fit], y[fit])
    )
    surrogate = Surrogate(kind, model, list(features), output, {"rows": float(len(held))})
    explainer = surrogate.explainer()
    predicted = explainer.explain(rows[held]).outputs
    surrogate.fidelity["r2"] = _r2(y[held], predicted)
    if reference is not None:
        probe = rows[held][:RANK_ROWS]
        ours = explainer.explain(probe).contributions
        theirs = reference.explain(probe).contributions
        correlation, used = _rank_correlation(ours, theirs)
        surrogate.fidelity["rank_correlation"] = correlation
        surrogate.fidelity["rank_rows"] = float(used)
    return surrogate


def _check(
    x: np.ndarray, target: np.ndarray, features: list[str], kind: str, holdout: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated rows and target, and how many rows to hold out."""
    if kind not in KINDS:
        raise ValidationError(f"unknown surrogate kind {kind!r}; expected one of {KINDS}")
    rows = np.asarray(x, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(features):
        raise ValidationError(
            f"surrogate training rows have shape {list(rows.shape)}, expected "
            f"(rows, {len(features)}) for features {list(features)}"
        )
    if y.shape != (len(rows),) or not np.isfinite(y).all():
        raise ValidationError(
            f"the surrogate target must be {len(rows)} finite numbers (the primary's output "
            f"on each row), got shape {list(y.shape)}"
        )
    if not 0 < holdout < 1:
        raise ValidationError(f"holdout must be a share between 0 and 1, got {holdout!r}")
    held = round(len(rows) * holdout)
    if held < 2 or len(rows) - held < 2:
        raise ValidationError(
            f"{len(rows)} rows with holdout={holdout} leave {held} held-out and "
            f"{len(rows) - held} training rows; a surrogate needs at least 2 of each"
        )
    return rows, y, held


def _fit_tree(x: np.ndarray, y: np.ndarray, features: list[str], seed: int) -> Any:
    import lightgbm

    # LightGBM refuses names with JSON punctuation and rewrites whitespace: such names are
    # kept by the Surrogate (and its explainer) only, the booster numbering its columns
    names: list[str] | Literal["auto"] = (
        features if all(_LIGHTGBM_NAME.fullmatch(f) for f in features) else "auto"
    )
    data = lightgbm.Dataset(x, y, feature_name=names, params={"verbosity": -1})
    return lightgbm.train({**TREE_PARAMS, "seed": seed}, data, num_boost_round=TREE_ROUNDS)


def _fit_linear(x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    imputer = SimpleImputer(strategy="mean", keep_empty_features=True)
    return make_pipeline(imputer, Ridge(alpha=RIDGE_ALPHA)).fit(x, y)


def _r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    residual = float(np.sum((truth - predicted) ** 2))
    total = float(np.sum((truth - truth.mean()) ** 2))
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return 1.0 - residual / total


def _rank_correlation(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, int]:
    """Mean Spearman correlation of two attributions, row by row, over the rows where neither
    is constant (a constant attribution has no ranking); 0.0 when there is no such row."""
    from scipy.stats import spearmanr

    varied = (np.ptp(ours, axis=1) > 0) & (np.ptp(theirs, axis=1) > 0)
    scores = [
        float(spearmanr(a, b).statistic) for a, b in zip(ours[varied], theirs[varied], strict=True)
    ]
    return (float(np.mean(scores)) if scores else 0.0), len(scores)
