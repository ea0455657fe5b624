"""Summarise training data into a small weighted background for Kernel SHAP.

A kernel explanation costs one model evaluation per background row per coalition, so the
background is kept small: k-means centers weighted by their cluster's share of the rows (as
``shap.kmeans`` does).
"""

from __future__ import annotations

import numpy as np

from keel.errors import ValidationError

__all__ = ["kmeans_background"]


def kmeans_background(
    x: np.ndarray, k: int = 20, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` representative rows of ``x`` and their weights (cluster sizes / rows, summing to 1).

    Each center's value of each feature is snapped to the nearest value that feature takes in
    ``x``, so integer and categorical codes stay valid values. k-means cannot take missing
    values: NaNs are replaced by their column's mean for the clustering (an all-NaN column by
    0), and snapping then picks the nearest observed value (a column with no observed value
    stays NaN). With ``k`` or fewer rows, the rows themselves are returned, equally weighted.

    Example
    -------
    >>> import numpy as np
    >>> x = np.repeat([[0.0, 1.0], [10.0, 3.0]], [3, 1], axis=0)
    >>> centers, weights = kmeans_background(x, k=2)
    >>> sorted(zip(weights.tolist(), centers.tolist()))
    [(0.25, [10.0, 3.0]), (0.75, [0.0, 1.0])]
    """
    try:
        data = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("the data to summarise must be a numeric matrix") from None
    if data.ndim != 2 or len(data) == 0:
        raise ValidationError(
            f"the data to summarise has shape {list(data.shape)}, expected (rows, features) "
            "with at least one row"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValidationError(f"k must be a positive integer, got {k!r}")
    if len(data) <= k:
        return data.copy(), np.full(len(data), 1.0 / len(data))

    from sklearn.cluster import KMeans

    observed = ~np.isnan(data)
    counts = observed.sum(axis=0)
    means = np.where(observed, data, 0.0).sum(axis=0) / np.maximum(counts, 1)
    filled = np.where(observed, data, means)
    distinct, inverse = np.unique(filled, axis=0, return_inverse=True)
    if len(distinct) <= k:
        # k-means would find these exact points (and warn that clusters stay empty)
        centers, labels = distinct, inverse.reshape(-1)
    else:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(filled)
        centers, labels = km.cluster_centers_, km.labels_
    weights = np.bincount(labels, minlength=len(centers)) / len(data)
    return _snap(centers, data), weights


def _snap(centers: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Each center value replaced by the nearest observed value of its column."""
    out = np.empty_like(centers)
    for j in range(data.shape[1]):
        values = np.unique(data[:, j][~np.isnan(data[:, j])])
        if len(values) == 0:
            out[:, j] = np.nan
            continue
        above = np.clip(np.searchsorted(values, centers[:, j]), 0, len(values) - 1)
        below = np.clip(above - 1, 0, len(values) - 1)
        nearer_below = np.abs(values[below] - centers[:, j]) <= np.abs(
            values[above] - centers[:, j]
        )
        out[:, j] = np.where(nearer_below, values[below], values[above])
    return out
