"""kmeans_background: k weighted centers whose values are values the data really takes."""

from __future__ import annotations

import numpy as np
import pytest

from keel.errors import ValidationError
from keel.explain import kmeans_background


def mixed(n: int = 600, seed: int = 0) -> np.ndarray:
    """A continuous, an integer-coded (0-4) and a binary feature, with some NaNs."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.normal(size=n) * 10, rng.integers(0, 5, n), rng.integers(0, 2, n)]
    ).astype(float)
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


def test_k_centers_with_weights_summing_to_one() -> None:
    x = mixed()
    centers, weights = kmeans_background(x, k=7, seed=1)
    assert centers.shape == (7, 3) and weights.shape == (7,)
    assert weights.sum() == pytest.approx(1.0)
    assert (weights > 0).all()
    # each weight is a cluster's share of the rows
    assert np.allclose(weights * len(x), np.round(weights * len(x)))


def test_center_values_are_snapped_to_values_the_data_takes() -> None:
    x = mixed()
    centers, _ = kmeans_background(x, k=7)
    assert not np.isnan(centers).any()  # NaNs were imputed for the clustering
    for j in range(x.shape[1]):
        observed = set(x[:, j][~np.isnan(x[:, j])].tolist())
        assert set(centers[:, j].tolist()) <= observed
    assert set(centers[:, 1].tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert set(centers[:, 2].tolist()) <= {0.0, 1.0}


def test_deterministic_for_a_seed() -> None:
    x = mixed()
    a = kmeans_background(x, k=5, seed=3)
    b = kmeans_background(x, k=5, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_few_rows_are_returned_as_they_are() -> None:
    x = mixed(4)
    centers, weights = kmeans_background(x, k=10)
    np.testing.assert_array_equal(centers, x)
    np.testing.assert_array_equal(weights, np.full(4, 0.25))


def test_few_distinct_rows_are_counted_not_clustered() -> None:
    x = np.repeat([[0.0, 1.0], [2.0, 5.0], [7.0, 1.0]], [5, 3, 2], axis=0)
    centers, weights = kmeans_background(x, k=4)
    found = {tuple(c): w for c, w in zip(centers.tolist(), weights.tolist(), strict=True)}
    assert found == {(0.0, 1.0): 0.5, (2.0, 5.0): 0.3, (7.0, 1.0): 0.2}


def test_bad_input() -> None:
    with pytest.raises(ValidationError, match="expected \\(rows, features\\)"):
        kmeans_background(np.zeros(5))
    with pytest.raises(ValidationError, match="k must be a positive integer"):
        kmeans_background(np.zeros((5, 2)), k=0)
