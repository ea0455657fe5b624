"""Shared fixtures for the explanation tests: synthetic tabular data with missing values, small
LightGBM / XGBoost / scikit-learn / torch models on it, the ``shap`` package (the reference
implementation; a test dependency only) and brute-force Shapley values to check against."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import pytest


class Data(NamedTuple):
    x: np.ndarray  # (n, m), some NaNs
    y: np.ndarray  # (n,) 0/1 labels
    features: list[str]


def synthetic(n: int, m: int, *, seed: int = 0, missing: float = 0.05) -> Data:
    """A binary problem with interactions and a non-linearity; ``missing`` of values NaN."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m))
    z = x.copy()
    logit = 1.5 * np.sin(z[:, 0]) + z[:, 1] - 0.5 * z[:, 2] ** 2 + 0.8 * z[:, 3] * z[:, 4]
    logit += 0.3 * z[:, 5:].sum(axis=1)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    x[rng.random((n, m)) < missing] = np.nan
    return Data(x, y, [f"x{i}" for i in range(m)])


@pytest.fixture(scope="session")
def data() -> Data:
    return synthetic(2000, 6)


@pytest.fixture(scope="session")
def lgb_binary(data: Data) -> Any:
    import lightgbm

    params = {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1, "verbosity": -1}
    params |= {"num_threads": 1, "deterministic": True, "seed": 0}
    train = lightgbm.Dataset(data.x, data.y, feature_name=data.features)
    return lightgbm.train(params, train, num_boost_round=40)


@pytest.fixture(scope="session")
def xgb_binary(data: Data) -> Any:
    import xgboost

    train = xgboost.DMatrix(data.x, data.y, feature_names=data.features)
    params = {"objective": "binary:logistic", "max_depth": 4, "nthread": 1, "seed": 0}
    return xgboost.train(params, train, num_boost_round=40)


@pytest.fixture(scope="session")
def shap() -> ModuleType:
    """The ``shap`` package, imported without its own deprecation warnings failing the run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import shap

    return shap


def brute_force_shapley(
    f: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    background: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Exact Shapley values of ``v(S) = Σ_b w_b f(x_S, background_b)`` by the definition
    (every subset, factorial weights) and the base value ``v(∅)``."""
    n, m = x.shape
    b = len(background)
    w = np.full(b, 1 / b) if weights is None else np.asarray(weights) / np.sum(weights)
    subsets = np.array(list(itertools.product([False, True], repeat=m)))
    rows = np.where(subsets[None, :, None, :], x[:, None, None, :], background[None, None])
    v = f(rows.reshape(-1, m)).reshape(n, len(subsets), b) @ w  # (n, 2**m)
    index = {s.tobytes(): i for i, s in enumerate(subsets)}
    phi = np.zeros((n, m))
    for i, s in enumerate(subsets):
        k = int(s.sum())
        if k == m:
            continue
        share = math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m)
        for j in np.flatnonzero(~s):
            with_j = s.copy()
            with_j[j] = True
            phi[:, j] += share * (v[:, index[with_j.tobytes()]] - v[:, i])
    return phi, float(v[0, 0])


@pytest.fixture(scope="session")
def brute_force() -> Callable[..., tuple[np.ndarray, float]]:
    return brute_force_shapley


@pytest.fixture(scope="session")
def make_data() -> Callable[..., Data]:
    return synthetic
