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

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import special
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
#: The statistic alerts use, by column kind.
ALERT_STATISTIC = {"numeric": "ks", "categorical": "chi2", "vector": "mmd"}
CALIBRATION_ROWS = 100_000
SMIRNOV_LOOP = 10_000  # from here scipy's scalar Smirnov sum costs more than ~10 ms
PARALLEL_ROWS = 50_000  # below this a window scores faster on one thread than handed around


def ks(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value (as ``scipy.stats.ks_2samp`` with
    ``method="asymp"``); the reference comes sorted, so a window costs one sort of itself."""
    cur = np.sort(current)
    return _ks(reference_sorted, _Ranks.of(reference_sorted, cur))


def ks_wasserstein(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float, float]:
    """KS statistic, its p-value and the Wasserstein-1 distance, from the window's places
    in the reference (see :func:`ks`)."""
    cur = np.sort(current)
    ranks = _Ranks.of(reference_sorted, cur)
    prefix, centre = _prefix(reference_sorted)
    d, p = _ks(reference_sorted, ranks)
    return d, p, _wasserstein(reference_sorted, prefix, centre, ranks)


@dataclass(frozen=True, slots=True)
class _Ranks:
    """Where each distinct value of a sorted window sits: how many window values lie below it
    and up to it, and how many reference values do."""

    values: np.ndarray
    cur_below: np.ndarray
    cur_upto: np.ndarray
    ref_below: np.ndarray
    ref_upto: np.ndarray
    m: int

    @classmethod
    def of(cls, reference_sorted: np.ndarray, cur: np.ndarray) -> _Ranks:
        m = len(cur)
        new = np.empty(m, dtype=bool)
        new[0] = True
        np.not_equal(cur[1:], cur[:-1], out=new[1:])
        first = np.flatnonzero(new)
        values = cur if len(first) == m else cur[first]
        upto = np.empty_like(first)
        upto[:-1], upto[-1] = first[1:], m
        ref_upto = np.searchsorted(reference_sorted, values, side="right")
        # One search gives both bounds unless a value also occurs in the reference, which
        # only ties (integer-valued features) pay for.
        tied = reference_sorted[np.maximum(ref_upto - 1, 0)] == values
        tied &= ref_upto > 0
        ref_below = ref_upto
        if tied.any():
            ref_below = ref_upto.copy()
            ref_below[tied] = np.searchsorted(reference_sorted, values[tied], side="left")
        return cls(values, first, upto, ref_below, ref_upto, m)


def _ks(reference_sorted: np.ndarray, r: _Ranks) -> tuple[float, float]:
    # F_ref - F_cur rises only at reference values, so its maximum is met just below a window
    # value, and its minimum at one: the window's places suffice, and each difference is the
    # very expression scipy evaluates on the merged sample, so the result is bit-identical.
    n, m = len(reference_sorted), r.m
    above = float(np.max(r.ref_below / n - r.cur_below / m))
    below = float(np.max(r.cur_upto / m - r.ref_upto / n))
    d = max(above, below, 0.0)
    return d, _ks_pvalue(d, int(np.round(n * m / (n + m))))


def _ks_pvalue(d: float, n: int) -> float:
    """``scipy.stats.kstwo.sf(d, n)``. For a drift that is clear but not huge scipy sums
    Smirnov's n-term series in a scalar loop (0.7 s at n = 500,000); that branch is summed
    here over the terms that matter, vectorized (relative difference under 1e-9)."""
    t, nxx = n * d, n * d * d
    if n > SMIRNOV_LOOP and 1 < t < n - 1 and d < 1 and (d >= 0.5 or 2.2 <= nxx < 370):
        return min(max(2 * _smirnov(n, d), 0.0), 1.0)
    return float(sstats.kstwo.sf(d, n))


def _smirnov(n: int, x: float) -> float:
    """One-sided KS tail P(D+ >= x), Birnbaum–Tingey: x * sum_j C(n, j) (1 - x - j/n)^(n-j)
    (x + j/n)^(j-1), summed in logs on the stretch of j within e^-60 of the largest term."""

    def log_terms(j: np.ndarray) -> np.ndarray:
        rest = np.maximum(1 - x - j / n, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_c = special.gammaln(n + 1) - special.gammaln(j + 1) - special.gammaln(n - j + 1)
            out = log_c + (n - j) * np.log(rest) + (j - 1) * np.log(x + j / n)
        return np.where(rest > 0, out, -np.inf)

    last = int(n * (1 - x))
    step = max(last // 4096, 1)
    coarse = np.arange(0, last + 1, step, dtype=np.float64)
    rough = log_terms(coarse)
    near = np.flatnonzero(rough > rough.max() - 60)
    lo, hi = max(coarse[near[0]] - step, 0), min(coarse[near[-1]] + step, last)
    logs = log_terms(np.arange(lo, hi + 1, dtype=np.float64))
    top = logs.max()
    return float(x * np.exp(top) * np.exp(logs - top).sum())


def _prefix(reference_sorted: np.ndarray) -> tuple[np.ndarray, float]:
    """Running sums of the sorted reference about its median (centred so that the sums, and
    the rounding they carry, stay on the scale of the spread rather than of the values)."""
    centre = float(reference_sorted[len(reference_sorted) // 2])
    prefix = np.empty(len(reference_sorted) + 1)
    prefix[0] = 0.0
    np.cumsum(reference_sorted - centre, out=prefix[1:])
    return prefix, centre


def _wasserstein(
    reference_sorted: np.ndarray, prefix: np.ndarray, centre: float, r: _Ranks
) -> float:
    """The area between the two empirical CDFs without walking the reference: between two
    window values F_cur is a constant t, F_ref crosses t once (at a reference value known by
    its index), and the integral of F_ref over any stretch comes from the running sums."""
    ref, n, m = reference_sorted, len(reference_sorted), r.m
    k = len(r.values) + 1  # stretches [a, b) with F_cur = level / m
    # One array of bounds (and of reference counts at them) serves as both a and b, shifted.
    v = np.empty(k + 1)
    v[0], v[1:-1], v[-1] = min(ref[0], r.values[0]), r.values, max(ref[-1], r.values[-1])
    kv = np.empty(k + 1, dtype=np.int64)
    kv[0], kv[1:-1], kv[-1] = 0, r.ref_upto, n
    a, b, ka, kb = v[:-1], v[1:], kv[:-1], kv[1:]
    level = np.empty(k, dtype=np.int64)
    level[0], level[1:] = 0, r.cur_upto
    # F_ref >= t from the s-th smallest reference value on, s = ceil(t n), in integers.
    s = level * n
    np.negative(s, out=s)
    np.floor_divide(s, m, out=s)
    np.negative(s, out=s)
    sm1 = np.maximum(s - 1, 0)
    cross = ref[sm1]
    before = cross <= a
    before |= s == 0
    after = cross >= b
    c = np.where(before, a, np.where(after, b, cross))
    kc = np.where(before, ka, np.where(after, kb, sm1))
    # n * integral of F_ref from -inf to x, given k reference values at or below x.
    g = kv * (v - centre)
    g -= prefix[kv]
    gc = kc * (c - centre)
    gc -= prefix[kc]
    # area = t (2c - a - b) + (ga + gb - 2 gc) / n, summed over the stretches
    c2 = c + c
    c2 -= a
    c2 -= b
    c2 *= level
    c2 /= m
    gc *= -2.0
    gc += g[:-1]
    gc += g[1:]
    gc /= n
    c2 += gc
    return float(c2.sum())


def _counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Values per bin (bin i holds edges[i-1] <= v < edges[i]) of a sorted array, from the
    edges' places in it rather than each value's place among the edges."""
    cut = np.searchsorted(sorted_values, edges, side="left")
    return np.diff(cut, prepend=0, append=len(sorted_values))


def _quantiles(sorted_values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.quantile`` (linear) read off an already sorted array, without its partition."""
    pos = (len(sorted_values) - 1) * q
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, len(sorted_values) - 1)
    a, b, frac = sorted_values[lo], sorted_values[hi], pos - lo
    return np.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)


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
    sq = np.einsum("ij,ij->i", z, z)
    d2 = z @ z.T  # squared distances, built in place: the matrices dominate the cost
    d2 *= -2
    d2 += sq[:, None]
    d2 += sq[None, :]
    np.maximum(d2, 0, out=d2)
    width = float(np.median(d2[_upper_triangle(len(z))])) or 1.0
    d2 *= -1 / width
    k = np.exp(d2, out=d2)
    n = len(x)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())


@functools.lru_cache(maxsize=4)
def _upper_triangle(size: int) -> np.ndarray:
    return np.triu(np.ones((size, size), dtype=bool), 1)


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
    workers
        Threads that fit and score features side by side (default: one per core); numpy
        sorts and searches without holding the interpreter lock.
    ordered
        The reference's rows are in time order (a training set is): calibration windows are
        then contiguous stretches of it at random offsets, so what varies within a day or a
        burst counts as healthy spread, as it will between live windows.
    """

    def __init__(
        self,
        *,
        features: list[str] | None = None,
        categorical: list[str] = (),
        bins: int = 10,
        chunks: int = 20,
        false_alert_rate: float = 0.01,
        workers: int | None = None,
        ordered: bool = False,
    ) -> None:
        if bins < 2 or chunks < 4 or not 0 < false_alert_rate < 1:
            raise ValidationError("bins >= 2, chunks >= 4 and 0 < false_alert_rate < 1")
        if workers is not None and workers < 1:
            raise ValidationError(f"workers must be at least 1, not {workers}")
        self.features = features
        self.categorical = list(categorical)
        self.bins = bins
        self.chunks = chunks
        self.false_alert_rate = false_alert_rate
        self.workers = workers
        self.ordered = ordered

    # -- learning the reference ------------------------------------------------------------
    def fit(self, reference: Any) -> DriftDetector:
        table = as_table(reference, "reference")
        names = self.features or table.column_names
        _require(table, names, "reference")
        rows = table.num_rows
        if rows < self.chunks * 10:
            raise ValidationError(
                f"the reference has {rows} rows: calibrating {self.chunks} chunks needs at "
                f"least {self.chunks * 10}"
            )
        self.kinds_: dict[str, str] = {}
        self.sorted_: dict[str, np.ndarray] = {}
        self.prefix_: dict[str, tuple[np.ndarray, float]] = {}
        self.edges_: dict[str, np.ndarray] = {}
        self.categories_: dict[str, pa.Array] = {}
        self.ref_counts_: dict[str, np.ndarray] = {}
        self.vectors_: dict[str, np.ndarray] = {}
        self.thresholds_: dict[str, float] = {}
        self.baseline_: dict[str, tuple[float, float]] = {}
        self.window_size_: dict[str, int] = {}
        self.calibration_rest_: dict[str, int] = {}
        self.reference_rows_: dict[str, int] = {}
        for name in names:
            self.kinds_[name] = _kind(table.column(name).type, name in self.categorical)
        # Each feature draws from its own stream, so the levels do not depend on the threads.
        seeds = np.random.SeedSequence(0).spawn(len(names))
        jobs = list(zip(names, seeds, strict=True))
        learned = self._map(lambda job: self._fit_one(*job, table), jobs, rows)
        for name, state in zip(names, learned, strict=True):
            for attr, value in state.items():
                getattr(self, attr)[name] = value
        return self

    def _fit_one(self, name: str, seed: np.random.SeedSequence, table: pa.Table) -> dict:
        """One feature's learned state, keyed by the attribute that holds it."""
        kind, col = self.kinds_[name], table.column(name)
        state: dict[str, Any] = {}
        categories = None
        if kind == "categorical":
            categories = pc.unique(col.combine_chunks().drop_null().cast(pa.string()))
            state["categories_"] = categories
        values, _ = _values_of(col, kind, name, "reference", categories)
        state["reference_rows_"] = len(values)
        if kind == "numeric":
            edges = np.unique(_quantiles(values, np.linspace(0, 1, self.bins + 1)[1:-1]))
            state.update(sorted_=values, prefix_=_prefix(values), edges_=edges)
            state["ref_counts_"] = _counts(values, edges)
        elif kind == "categorical":
            state["ref_counts_"] = np.bincount(values, minlength=len(categories) + 1)
        else:
            state["vectors_"] = values
        rng = np.random.default_rng(seed)
        if self.ordered:
            spread, size, rest = self._calibrate_ordered(kind, col, values, rng)
        else:
            spread, size, rest = self._calibrate(kind, values, rng)
        state["thresholds_"] = float(np.quantile(spread, 1 - self.false_alert_rate)) + 1e-12
        state["baseline_"] = (float(np.mean(spread)), float(np.std(spread)))
        state.update(window_size_=size, calibration_rest_=rest)
        return state

    def _calibrate(
        self, kind: str, values: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, int, int]:
        """Draw healthy windows from the reference (each against the rest of it) and measure
        the statistic on each: the level that ``false_alert_rate`` of them pass is the alert
        level. Returns the statistics, the window size and the size of the rest."""
        draws = max(self.chunks, 50)
        if len(values) > CALIBRATION_ROWS:  # the spread is measured on a sample
            keep = rng.choice(len(values), CALIBRATION_ROWS, replace=False)
            if kind == "numeric":  # picking by a mask keeps the sample sorted
                mask = np.zeros(len(values), dtype=bool)
                mask[keep] = True
                values = values[mask]
            else:
                values = values[keep]
        n = len(values)
        size = max(n // self.chunks, 2)
        if kind == "vector":
            # mmd looks at no more than max_rows of each side, so only those are drawn.
            w, r = min(size, 1000), min(n - size, 1000)
            picks = (rng.choice(n, w + r, replace=False) for _ in range(draws))
            return np.array([mmd(values[p[w:]], values[p[:w]]) for p in picks]), size, n - size
        windows = np.sort([rng.choice(n, size, replace=False) for _ in range(draws)], axis=1)
        if kind == "numeric":
            return _ks_spread(values, windows), size, n - size
        return _chi2_spread(values, windows), size, n - size

    def _calibrate_ordered(
        self, kind: str, col: Any, values: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, int, int]:
        """As :meth:`_calibrate`, with each healthy window a contiguous stretch of the
        reference in its own (time) order."""
        draws = max(self.chunks, 50)
        if kind == "numeric":
            arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            raw = arr.to_numpy(zero_copy_only=False).astype(np.float64)
            raw = raw[~np.isnan(raw)]
        else:
            raw = values  # codes and vectors keep the rows' order
        if len(raw) > CALIBRATION_ROWS:  # every k-th row keeps the order and the cycles
            raw = raw[:: -(-len(raw) // CALIBRATION_ROWS)]
        n = len(raw)
        size = max(n // self.chunks, 2)
        starts = rng.integers(0, n - size + 1, draws)
        blocks = starts[:, None] + np.arange(size)
        if kind == "vector":
            spread = []
            for block in blocks:
                outside = np.ones(n, dtype=bool)
                outside[block] = False
                rest = np.flatnonzero(outside)
                rest = rest[rng.choice(len(rest), min(len(rest), 1000), replace=False)]
                spread.append(mmd(raw[rest], raw[block[: min(size, 1000)]]))
            return np.array(spread), size, n - size
        if kind == "numeric":
            order = np.argsort(raw, kind="stable")
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(n)
            return _ks_spread(raw[order], np.sort(rank[blocks], axis=1)), size, n - size
        return _chi2_spread(raw, blocks), size, n - size

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
        if self.ordered:  # rows in time order are not independent: a longer window keeps it
            ratio = max(ratio, 1.0)
        return float(level * (np.sqrt(ratio) if kind == "numeric" else ratio))

    # -- scoring a window ---------------------------------------------------------------------
    def score(self, current: Any, *, features: list[str] | None = None) -> DriftReport:
        """Every watched feature's drift statistics for one window, with its alert level;
        ``features`` limits the report (and the columns the window needs) to some of them."""
        self._check_fitted()
        table = as_table(current, "window")
        if table.num_rows == 0:
            raise ValidationError("the window has no rows: nothing to compare")
        names = list(self.kinds_) if features is None else list(features)
        for name in names:
            self._check_watched(name)
        _require(table, names, "window")
        drifts = self._map(lambda name: self._score_one(name, table), names, table.num_rows)
        return DriftReport(table.num_rows, drifts)

    def score_feature(self, name: str, values: Any) -> FeatureDrift:
        """One watched feature's drift for a window of its values alone (an Arrow array, a
        numpy array — 2-D for a vector column — or a list), such as a model's predictions.

        Example
        -------
        >>> import numpy as np, pyarrow as pa
        >>> rng = np.random.default_rng(0)
        >>> det = DriftDetector().fit(pa.table({"p": rng.uniform(0, 1, 5_000)}))
        >>> det.score_feature("p", rng.uniform(0.2, 1, 1_000)).drifted
        True
        """
        self._check_fitted()
        self._check_watched(name)
        if isinstance(values, np.ndarray) and values.ndim == 2:
            flat = pa.array(np.ascontiguousarray(values).ravel())
            values = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        elif not isinstance(values, pa.Array | pa.ChunkedArray):
            values = pa.array(values)
        if len(values) == 0:
            raise ValidationError(f"the window of {name!r} has no rows: nothing to compare")
        return self._score_one(name, values)

    def _score_one(self, name: str, window: pa.Table | pa.Array | pa.ChunkedArray) -> FeatureDrift:
        col = window.column(name) if isinstance(window, pa.Table) else window
        kind = self.kinds_[name]
        values, dropped = _values_of(col, kind, name, "window", self.categories_.get(name))
        p = was = psi_v = js = counts = None
        if kind == "numeric":
            ranks = _Ranks.of(self.sorted_[name], values)
            value, p = _ks(self.sorted_[name], ranks)
            was = _wasserstein(self.sorted_[name], *self.prefix_[name], ranks)
            counts = _counts(values, self.edges_[name])
        elif kind == "categorical":
            counts = np.bincount(values, minlength=len(self.categories_[name]) + 1)
            value, p = chi2(self.ref_counts_[name], counts)
        else:
            value = mmd(self.vectors_[name], values)
        if counts is not None:
            psi_v = psi(self.ref_counts_[name], counts)
            js = float(jensenshannon(self.ref_counts_[name] + EPS, counts + EPS))
        return FeatureDrift(
            name,
            kind,
            ALERT_STATISTIC[kind],
            value,
            self.threshold(name, len(values)),
            p,
            psi_v,
            was,
            js,
            dropped,
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "thresholds_"):
            raise ValidationError("fit the detector on a reference before scoring")

    def _check_watched(self, name: str) -> None:
        if name not in self.kinds_:
            raise ValidationError(
                f"the detector does not watch {name!r}{did_you_mean(name, self.kinds_)}; "
                f"it was fitted on {sorted(self.kinds_)}"
            )

    def _map(self, fn: Callable[[Any], Any], items: list[Any], rows: int) -> list[Any]:
        """``fn`` over ``items``, on threads when there is enough work to share."""
        workers = min(len(items), self.workers or _cores())
        if workers < 2 or rows < PARALLEL_ROWS:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(workers, thread_name_prefix="keel-drift") as pool:
            return list(pool.map(fn, items))


def _ks_spread(sample_sorted: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """KS between each window of ``windows`` (rows of sorted positions in the sorted sample)
    and the rest of the sample, all draws at once and without sorting either side: a value's
    place in the rest is its place in the sample less its place in the window."""
    n = len(sample_sorted)
    draws, size = windows.shape
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(sample_sorted[1:], sample_sorted[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    below = starts[group]  # sample values under each position's value, then up to it
    upto = np.append(starts[1:], n)[group]
    # Row r lives in [r n, (r + 1) n), so one search over the flattened rows serves them all.
    shift = n * np.arange(draws)[:, None]
    flat = (windows + shift).ravel()
    base = size * np.arange(draws)[:, None]
    cur_below = np.searchsorted(flat, (below[windows] + shift).ravel()).reshape(draws, size) - base
    cur_upto = np.searchsorted(flat, (upto[windows] + shift).ravel()).reshape(draws, size) - base
    rest = n - size
    ref_below = below[windows] - cur_below
    ref_upto = upto[windows] - cur_upto
    above = np.max(ref_below / rest - cur_below / size, axis=1)
    under = np.max(cur_upto / size - ref_upto / rest, axis=1)
    return np.maximum(np.maximum(above, under), 0.0)


def _chi2_spread(codes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Chi-square between each window (a row of positions in ``codes``) and the rest, the
    category counts of all draws from one bincount."""
    draws = len(windows)
    width = int(codes.max()) + 1
    total = np.bincount(codes, minlength=width)
    offset = width * np.arange(draws)[:, None]
    picked = np.bincount((codes[windows] + offset).ravel(), minlength=draws * width)
    return np.array([chi2(total - w, w)[0] for w in picked.reshape(draws, width)])


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _values_of(
    col: Any, kind: str, name: str, what: str, categories: pa.Array | None
) -> tuple[np.ndarray, int]:
    """The column's usable values (category codes for categoricals, the last code being "not
    seen in the reference"; sorted float64 for numeric columns) and how many null/NaN ones
    were left out."""
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
        arr = col.to_numpy(zero_copy_only=False)  # nulls come back as NaN
        dropped = 0
        if arr.dtype.kind == "f":
            nan = np.isnan(arr)
            dropped = int(np.count_nonzero(nan))
            if dropped:
                arr = arr[~nan]
        # Sorting in the column's own type is cheaper (half the bytes for float32) and the
        # cast to float64 afterwards keeps the order.
        values = np.sort(arr).astype(np.float64, copy=False)
    if len(values) == 0:
        raise ValidationError(f"{what} column {name!r} has no values (all null or NaN)")
    return values, int(dropped)


def as_table(data: Any, what: str) -> pa.Table:
    """``data`` as an Arrow table (from a table or a pandas DataFrame), or a clear error."""
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
