"""Evaluation metrics, named in model declarations: ``auc``, ``logloss``, ``rmse``, ``mae``,
``accuracy`` and ranking metrics ``recall@K``, ``precision@K`` and ``ndcg@K``.

Ranking metrics rank rows by score within each group (a user, a query) when groups are
given, or over the whole holdout otherwise ("of all frauds, how many are in the top K
alerts").

Example
-------
>>> import numpy as np
>>> y, s = np.array([0, 1, 1, 0]), np.array([0.1, 0.9, 0.4, 0.3])
>>> round(evaluate(["auc", "recall@1", "precision@2"], y, s)["auc"], 3)
1.0
>>> evaluate(["recall@1"], y, s)
{'recall@1': 0.5}
>>> parse_metric("ndcg@x")
Traceback (most recent call last):
...
keel.errors.ValidationError: metric 'ndcg@x': K must be a positive whole number, as in 'ndcg@10'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from keel.errors import ValidationError, did_you_mean

__all__ = ["BINARY", "METRICS", "RANKING", "MetricSpec", "evaluate", "parse_metric"]

BINARY = ("auc", "logloss", "accuracy")
REGRESSION = ("rmse", "mae")
RANKING = ("recall", "precision", "ndcg")
METRICS = (*BINARY, *REGRESSION, *RANKING)


class MetricSpec(NamedTuple):
    name: str
    k: int | None


def parse_metric(text: str) -> MetricSpec:
    """``"auc"`` or ``"recall@100"``, checked."""
    name, at, k = text.partition("@")
    if name not in METRICS:
        raise ValidationError(
            f"unknown metric {text!r}{did_you_mean(name, METRICS)}; expected one of "
            f"{', '.join(m + '@K' if m in RANKING else m for m in METRICS)}"
        )
    if name in RANKING:
        if not at or not k.isdigit() or int(k) < 1:
            raise ValidationError(
                f"metric {text!r}: K must be a positive whole number, as in '{name}@10'"
            )
        return MetricSpec(name, int(k))
    if at:
        raise ValidationError(f"metric {text!r}: only ranking metrics take @K")
    return MetricSpec(name, None)


def evaluate(
    metrics: Sequence[str],
    y: np.ndarray,
    score: np.ndarray,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Each named metric of ``score`` against the truth ``y`` (NaN where undefined, such as
    AUC on one class)."""
    from sklearn import metrics as skm

    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    out: dict[str, float] = {}
    two_classes = len(np.unique(y)) == 2
    for text in metrics:
        spec = parse_metric(text)
        if spec.name == "auc":
            value = float(skm.roc_auc_score(y, score)) if two_classes else float("nan")
        elif spec.name == "logloss":
            p = np.clip(score, 1e-15, 1 - 1e-15)
            value = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        elif spec.name == "accuracy":
            value = float(np.mean((score >= 0.5) == (y >= 0.5)))
        elif spec.name == "rmse":
            value = float(np.sqrt(np.mean((score - y) ** 2)))
        elif spec.name == "mae":
            value = float(np.mean(np.abs(score - y)))
        else:
            value = _ranking(spec, y, score, groups)
        out[text] = value
    return out


def _ranking(
    spec: MetricSpec, y: np.ndarray, score: np.ndarray, groups: np.ndarray | None
) -> float:
    k = int(spec.k or 1)
    keys = (
        np.zeros(len(y), np.int64) if groups is None else np.unique(groups, return_inverse=True)[1]
    )
    # Best score first within each group; ties broken by row order, the same on every run.
    order = np.lexsort((np.arange(len(y)), -score, keys))
    y_sorted, g_sorted = y[order], keys[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    rank = np.arange(len(y)) - np.repeat(starts, np.diff(np.r_[starts, len(y)]))
    top = rank < k
    per_group = np.bincount(g_sorted, weights=y_sorted * top)
    relevant = np.bincount(g_sorted, weights=y_sorted)
    has = relevant > 0
    if not has.any():
        return float("nan")
    if spec.name == "recall":
        return float(np.mean(per_group[has] / relevant[has]))
    if spec.name == "precision":
        sizes = np.minimum(np.bincount(g_sorted), k)
        return float(np.mean(per_group[has] / sizes[has]))
    gain = np.where(top, y_sorted / np.log2(rank + 2), 0.0)
    dcg = np.bincount(g_sorted, weights=gain)
    # The ideal ranking: each group's relevant rows first (groups keep their blocks).
    ideal_sorted = y_sorted[np.lexsort((-y_sorted, g_sorted))]
    ideal_gain = np.where(top, ideal_sorted / np.log2(rank + 2), 0.0)
    ideal = np.bincount(g_sorted, weights=ideal_gain)
    return float(np.mean(dcg[has] / ideal[has]))
