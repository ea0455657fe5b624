"""Data drift per feature, with alert levels calibrated on history.

Two-sample KS for numeric features, PSI on bins from the reference's quantiles (or its
categories), chi-square for categoricals, Wasserstein and Jensen–Shannon distances, and MMD
(RBF kernel, median heuristic) for embedding columns. P-values fire on every tiny shift when
samples are large, so alerts do not use them: :class:`DriftDetector` splits the reference into
chunks, measures each statistic between chunks, and sets each feature's alert level so the
false-alert rate on healthy data stays at the configured target.

The detector follows the estimator contract: keyword-only hyper-parameters, ``fit`` on the
reference, learned state in trailing-underscore attributes, ``score`` per window.

Example
-------
>>> import numpy as np, pyarrow as pa
>>> rng = np.random.default_rng(0)
>>> ref = pa.table({"amount": rng.normal(0, 1, 20_000),
...                 "country": rng.choice(["DE", "FR"], 20_000)})
>>> det = DriftDetector(categorical=["country"]).fit(ref)
>>> now = pa.table({"amount": rng.normal(0.5, 1, 2_000),
...                 "country": rng.choice(["DE", "FR"], 2_000)})
>>> det.score(now).drifted
['amount']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as sstats
from scipy.spatial.distance import jensenshannon

from keel.errors import ValidationError, did_you_mean

__all__ = [
    "DriftDetector",
    "DriftReport",
    "FeatureDrift",
    "chi2",
    "ks",
    "ks_wasserstein",
    "mmd",
    "psi",
]

EPS = 1e-6
CALIBRATION_ROWS = 100_000


def ks(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value (as ``scipy.stats.ks_2samp`` with
    ``method="asymp"``); the reference comes sorted, so a window costs one sort of itself."""
    cur = np.sort(current)
    n, m = len(reference_sorted), len(cur)
    both = np.concatenate([reference_sorted, cur])
    cdf_r = np.searchsorted(reference_sorted, both, side="right") / n
    cdf_c = np.searchsorted(cur, both, side="right") / m
    d = float(np.max(np.abs(cdf_r - cdf_c)))
    en = n * m / (n + m)
    return d, float(sstats.kstwo.sf(d, np.round(en)))


def ks_wasserstein(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float, float]:
    """KS statistic, its p-value and the Wasserstein-1 distance from one pass over both
    empirical CDFs (two sorted runs merge in near-linear time)."""
    ref, cur = reference_sorted, np.sort(current)
    n, m = len(ref), len(cur)
    both = np.sort(np.concatenate([ref, cur]), kind="stable")
    cdf_r = np.searchsorted(ref, both, side="right") / n
    cdf_c = np.searchsorted(cur, both, side="right") / m
    gap = np.abs(cdf_r - cdf_c)
    d = float(gap.max())
    w = float(np.sum(gap[:-1] * np.diff(both)))
    return d, float(sstats.kstwo.sf(d, np.round(n * m / (n + m)))), w


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Population stability index between two histograms over the same bins."""
    r = ref_counts / max(ref_counts.sum(), 1) + EPS
    c = cur_counts / max(cur_counts.sum(), 1) + EPS
    return float(np.sum((c - r) * np.log(c / r)))


def chi2(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity on two count vectors (as
    ``scipy.stats.chi2_contingency(..., correction=False)``); empty categories are dropped."""
    table = np.vstack([ref_counts, cur_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    return stat, float(sstats.chi2.sf(stat, table.shape[1] - 1))


def mmd(x: np.ndarray, y: np.ndarray, *, max_rows: int = 1000, seed: int = 0) -> float:
    """Squared maximum mean discrepancy with an RBF kernel whose width is the median pairwise
    distance (the median heuristic), on up to ``max_rows`` rows of each side."""
    rng = np.random.default_rng(seed)
    if len(x) > max_rows:
        x = x[rng.choice(len(x), max_rows, replace=False)]
    if len(y) > max_rows:
        y = y[rng.choice(len(y), max_rows, replace=False)]
    z = np.vstack([x, y]).astype(np.float64)
    sq = (z * z).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0)
    width = np.median(d2[np.triu_indices(len(z), 1)]) or 1.0
    k = np.exp(-d2 / width)
    n = len(x)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())


@dataclass
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical | vector
    statistic: str  # the one alerts use: ks, chi2 or mmd
    value: float
    threshold: float
    p_value: float | None
    psi: float | None
    wasserstein: float | None
    jensen_shannon: float | None
    dropped_nan: int = 0

    @property
    def drifted(self) -> bool:
        return self.value > self.threshold


@dataclass
class DriftReport:
    rows: int
    features: list[FeatureDrift] = field(default_factory=list)

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def by_feature(self) -> dict[str, FeatureDrift]:
        return {f.feature: f for f in self.features}


class DriftDetector:
    """Per-feature drift against a reference, with calibrated alert levels.

    Parameters
    ----------
    features
        Columns to watch (default: every column of the reference).
    categorical
        Columns compared as categories (strings are categorical anyway).
    bins
        Quantile bins for PSI and Jensen–Shannon on numeric columns.
    chunks
        How many pieces of the reference calibrate the alert levels.
    false_alert_rate
        The share of healthy windows allowed to alert, per feature.
    """

    def __init__(
        self,
        *,
        features: list[str] | None = None,
        categorical: list[str] = (),
        bins: int = 10,
        chunks: int = 20,
        false_alert_rate: float = 0.01,
    ) -> None:
        if bins < 2 or chunks < 4 or not 0 < false_alert_rate < 1:
            raise ValidationError("bins >= 2, chunks >= 4 and 0 < false_alert_rate < 1")
        self.features = features
        self.categorical = list(categorical)
        self.bins = bins
        self.chunks = chunks
        self.false_alert_rate = false_alert_rate

    # -- learning the reference ------------------------------------------------------------
    def fit(self, reference: Any) -> DriftDetector:
        table = _table(reference, "reference")
        names = self.features or table.column_names
        _require(table, names, "reference")
        self.kinds_: dict[str, str] = {}
        self.sorted_: dict[str, np.ndarray] = {}
        self.edges_: dict[str, np.ndarray] = {}
        self.categories_: dict[str, np.ndarray] = {}
        self.ref_counts_: dict[str, np.ndarray] = {}
        self.vectors_: dict[str, np.ndarray] = {}
        self.thresholds_: dict[str, float] = {}
        self.baseline_: dict[str, tuple[float, float]] = {}
        self.window_size_: dict[str, int] = {}
        self.calibration_rest_: dict[str, int] = {}
        self.reference_rows_: dict[str, int] = {}
        rows = table.num_rows
        if rows < self.chunks * 10:
            raise ValidationError(
                f"the reference has {rows} rows: calibrating {self.chunks} chunks needs at "
                f"least {self.chunks * 10}"
            )
        for name in names:
            col = table.column(name)
            kind = _kind(col.type, name in self.categorical)
            self.kinds_[name] = kind
            if kind == "categorical":
                clean = col.combine_chunks().drop_null().cast(pa.string())
                self.categories_[name] = pc.unique(clean)
            values, _ = self._values(col, name, "reference")
            self.reference_rows_[name] = len(values)
            if kind == "numeric":
                self.sorted_[name] = np.sort(values)
                qs = np.quantile(values, np.linspace(0, 1, self.bins + 1)[1:-1])
                self.edges_[name] = np.unique(qs)
                self.ref_counts_[name] = _hist(values, self.edges_[name])
            elif kind == "categorical":
                self.ref_counts_[name] = np.bincount(
                    values, minlength=len(self.categories_[name]) + 1
                )
            else:
                self.vectors_[name] = values
        self._calibrate(table, names)
        return self

    def _calibrate(self, table: pa.Table, names: list[str]) -> None:
        """Draw healthy windows from the reference (each against the rest of it), measure
        each statistic's spread, and set the level that ``false_alert_rate`` of them pass."""
        rng = np.random.default_rng(0)
        draws = max(self.chunks, 50)
        for name in names:
            kind = self.kinds_[name]
            values, _ = self._values(table.column(name), name, "reference")
            if len(values) > CALIBRATION_ROWS:  # the spread is measured on a sample
                values = values[rng.choice(len(values), CALIBRATION_ROWS, replace=False)]
            n = len(values)
            size = max(n // self.chunks, 2)
            spread = []
            for _ in range(draws):
                pick = np.zeros(n, dtype=bool)
                pick[rng.choice(n, size, replace=False)] = True
                window, rest = values[pick], values[~pick]
                if kind == "numeric":
                    spread.append(ks(np.sort(rest), window)[0])
                elif kind == "categorical":
                    width = len(self.categories_[name]) + 1
                    spread.append(
                        chi2(
                            np.bincount(rest, minlength=width), np.bincount(window, minlength=width)
                        )[0]
                    )
                else:
                    spread.append(mmd(rest, window))
            level = float(np.quantile(spread, 1 - self.false_alert_rate))
            self.thresholds_[name] = level + 1e-12
            self.window_size_[name] = size
            self.calibration_rest_[name] = n - size
            self.baseline_[name] = (float(np.mean(spread)), float(np.std(spread)))

    def threshold(self, name: str, rows: int) -> float:
        """The alert level for a window of ``rows`` rows: KS and MMD shrink with larger
        samples, so the level calibrated at one window size is rescaled to another."""
        level = self.thresholds_[name]
        kind = self.kinds_[name]
        if kind == "categorical":
            return level
        n = self.reference_rows_[name]
        c = self.window_size_[name]
        ratio = (1 / rows + 1 / n) / (1 / c + 1 / self.calibration_rest_[name])
        return level * (np.sqrt(ratio) if kind == "numeric" else ratio)

    def _values(self, col: Any, name: str, what: str) -> tuple[np.ndarray, int]:
        return _values_of(col, self.kinds_[name], name, what, self.categories_.get(name))

    def _statistic(self, name: str, values: np.ndarray) -> tuple[float, float | None]:
        kind = self.kinds_[name]
        if kind == "numeric":
            return ks(self.sorted_[name], values)
        if kind == "categorical":
            counts = np.bincount(values, minlength=len(self.categories_[name]) + 1)
            return chi2(self.ref_counts_[name], counts)
        return mmd(self.vectors_[name], values), None

    # -- scoring a window ---------------------------------------------------------------------
    def score(self, current: Any) -> DriftReport:
        """Every watched feature's drift statistics for one window, with its alert level."""
        if not hasattr(self, "thresholds_"):
            raise ValidationError("fit the detector on a reference before scoring")
        table = _table(current, "window")
        if table.num_rows == 0:
            raise ValidationError("the window has no rows: nothing to compare")
        names = list(self.kinds_)
        _require(table, names, "window")
        report = DriftReport(table.num_rows)
        for name in names:
            kind = self.kinds_[name]
            values, dropped = self._values(table.column(name), name, "window")
            was = psi_v = js = None
            counts = None
            if kind == "numeric":
                value, p, was = ks_wasserstein(self.sorted_[name], values)
                counts = _hist(values, self.edges_[name])
            else:
                value, p = self._statistic(name, values)
                if kind == "categorical":
                    counts = np.bincount(values, minlength=len(self.categories_[name]) + 1)
            if counts is not None:
                psi_v = psi(self.ref_counts_[name], counts)
                js = float(jensenshannon(self.ref_counts_[name] + EPS, counts + EPS))
            report.features.append(
                FeatureDrift(
                    name,
                    kind,
                    {"numeric": "ks", "categorical": "chi2"}.get(kind, "mmd"),
                    value,
                    self.threshold(name, len(values)),
                    p,
                    psi_v,
                    was,
                    js,
                    dropped,
                )
            )
        return report


def _values_of(
    col: Any, kind: str, name: str, what: str, categories: pa.Array | None
) -> tuple[np.ndarray, int]:
    """The column's usable values (category codes for categoricals; the last code is "not
    seen in the reference") and how many null/NaN ones were left out."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if kind == "vector":
        keep = col.drop_null() if col.null_count else col
        size = keep.type.list_size if pa.types.is_fixed_size_list(keep.type) else -1
        flat = keep.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        values, dropped = flat.reshape(len(keep), size), len(col) - len(keep)
    elif kind == "categorical":
        keep = col.drop_null().cast(pa.string())
        codes = pc.index_in(keep, value_set=categories)
        values = pc.fill_null(codes, len(categories)).to_numpy(zero_copy_only=False)
        values, dropped = values.astype(np.int64), col.null_count
    else:
        arr = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        ok = ~np.isnan(arr)
        values, dropped = arr[ok], int((~ok).sum())
    if len(values) == 0:
        raise ValidationError(f"{what} column {name!r} has no values (all null or NaN)")
    return values, int(dropped)


def _table(data: Any, what: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if type(data).__name__ == "DataFrame":
        return pa.Table.from_pandas(data, preserve_index=False)
    raise ValidationError(
        f"the {what} must be an Arrow table or a DataFrame, not {type(data).__name__}"
    )


def _require(table: pa.Table, names: list[str], what: str) -> None:
    for name in names:
        if name not in table.column_names:
            raise ValidationError(
                f"the {what} has no column {name!r}{did_you_mean(name, table.column_names)}"
            )


def _kind(dtype: pa.DataType, categorical: bool) -> str:
    if pa.types.is_fixed_size_list(dtype) or pa.types.is_list(dtype):
        return "vector"
    if (
        categorical
        or pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_dictionary(dtype)
    ):
        return "categorical"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return "numeric"
    raise ValidationError(f"cannot measure drift of a {dtype} column")


def _hist(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
