"""Data drift per feature, with alert levels calibrated on history.

Two-sample KS for numeric features, PSI on bins from the reference's quantiles (or its
categories), chi-square for categoricals, Wasserstein and Jensen–Shannon distances, and MMD
(RBF kernel, median heuristic) for embedding columns. :class:`DriftDetector` sets each
feature's alert level so that fresh healthy windows (not the reference's own rows) alert at
the configured rate, per feature or per window across all features: from the statistic's law
between a window and a reference that are both samples (the two-sample KS law, or draws of
both from the reference's shares), and, for a reference in time order, no tighter than the
spread between its own stretches, which is what keeps real data's slow wandering (a daily
cycle, a burst) from firing on large windows.

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
from collections.abc import Callable, Sequence
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
from keel.monitoring import ecdf

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
MMD_ROWS = 1000  # mmd's default max_rows: the rows of each side it compares
TIE_SHARE = 1e-3  # a number whose most repeated value holds more of the rows is discrete
NULL_CELLS = 128  # cells of a discrete number's null draws (more distinct values merge)
NULL_DRAWS = 4096  # draws of a discrete feature's null: the level at 1% from 41 beyond it
NULL_MIN_DRAWS = 1024
NULL_GRID = 1.02  # window sizes whose null is drawn: a geometric grid
COARSE_VALUES = 8  # a merged cell of this many distinct values is watched as a continuum
NULL_BUDGET = 2**21  # draws x cells: fewer draws for features of many cells
TAIL_FROM = 0.02  # rarer than this, a null's tail is extended from its draws
JOINT_ROWS = 20_000  # rows whose windows measure how the features' statistics correlate
JOINT_WINDOW = 200
JOINT_DRAWS = 2048
JOINT_TOP = 4  # each feature's alerts among those windows, at the least
JOINT_BINS = 32  # quantile cells of a continuous number there
SMIRNOV_LOOP = 10_000  # from here scipy's scalar Smirnov sum costs more than ~10 ms
PARALLEL_ROWS = 50_000  # below this a window scores faster on one thread than handed around


def ks(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value (as ``scipy.stats.ks_2samp`` with
    ``method="asymp"``); the reference comes sorted, so a window costs one sort of itself."""
    cur = np.sort(current)
    return _ks(reference_sorted, _Ranks.of(reference_sorted, cur))


def _ks_was(
    ref: np.ndarray, prefix: np.ndarray, centre: float, cur: np.ndarray
) -> tuple[float, float, float]:
    """KS statistic, its p-value and the Wasserstein distance of sorted ``cur`` against
    sorted ``ref``: one compiled merge pass when numba is installed (:mod:`.ecdf`), else
    from the window's ranks in NumPy."""
    merge = ecdf.kernel()
    if merge is None:
        ranks = _Ranks.of(ref, cur)
        d, p = _ks(ref, ranks)
        return d, p, _wasserstein(ref, prefix, centre, ranks)
    above, below, area = merge(ref, prefix, centre, cur)
    n, m = len(ref), len(cur)
    d = max(above, below, 0.0)
    return d, _ks_pvalue(d, int(np.round(n * m / (n + m)))), float(area)


def ks_wasserstein(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float, float]:
    """KS statistic, its p-value and the Wasserstein-1 distance, from the window's places
    in the reference (see :func:`ks`)."""
    prefix, centre = _prefix(reference_sorted)
    return _ks_was(reference_sorted, prefix, centre, np.sort(current))


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

    A feature's level is what a fresh healthy window of that size passes with probability
    ``1 - false_alert_rate``. The window is compared with one fixed reference, itself a
    sample, so the level comes from the statistic's law between a window of m rows and a
    reference of n, both drawn from the same distribution: the two-sample Kolmogorov–Smirnov
    law for continuous numbers, and for discrete numbers and categories that of draws of both
    samples from the reference's own shares (ties and small counts leave no closed form).

    Parameters
    ----------
    features
        Columns to watch (default: every column of the reference).
    categorical
        Columns compared as categories (strings are categorical anyway).
    bins
        Quantile bins for PSI and Jensen–Shannon on numeric columns.
    chunks
        How many pieces of the reference measure its healthy spread (``baseline_``; with
        ``ordered``, the floor of the levels; for vector columns, the levels).
    false_alert_rate
        The share of healthy windows allowed to alert, per feature.
    window_false_alert_rate
        The share of healthy windows allowed to alert on any of the features; when given it
        decides, and the per-feature rate it implies is ``feature_false_alert_rate_``.
    workers
        Threads that fit and score features side by side (default: one per core); numpy
        sorts and searches without holding the interpreter lock.
    ordered
        The reference's rows are in time order (a training set is): contiguous stretches of
        it at random offsets are compared with the rest, and no level is tighter than those
        stretches show, so what varies within a day or a burst counts as healthy spread, as
        it will between live windows.

    Attributes
    ----------
    feature_false_alert_rate_
        The per-feature rate the levels keep: ``false_alert_rate``, or the one that
        ``window_false_alert_rate`` implies for these features and their correlations.
    baseline_
        Mean and standard deviation of each feature's statistic between a chunk of the
        reference and the rest of it.
    """

    def __init__(
        self,
        *,
        features: list[str] | None = None,
        categorical: Sequence[str] = (),
        bins: int = 10,
        chunks: int = 20,
        false_alert_rate: float = 0.01,
        window_false_alert_rate: float | None = None,
        workers: int | None = None,
        ordered: bool = False,
    ) -> None:
        if bins < 2 or chunks < 4 or not 0 < false_alert_rate < 1:
            raise ValidationError("bins >= 2, chunks >= 4 and 0 < false_alert_rate < 1")
        if window_false_alert_rate is not None and not 0 < window_false_alert_rate < 0.5:
            raise ValidationError(
                f"window_false_alert_rate must be within (0, 0.5), got {window_false_alert_rate}"
            )
        if workers is not None and workers < 1:
            raise ValidationError(f"workers must be at least 1, not {workers}")
        self.features = features
        self.categorical = list(categorical)
        self.bins = bins
        self.chunks = chunks
        self.false_alert_rate = false_alert_rate
        self.window_false_alert_rate = window_false_alert_rate
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
        self.cells_: dict[str, _Cells | None] = {}
        self.spread_: dict[str, np.ndarray] = {}
        self.excess_: dict[str, float] = {}
        self.thresholds_: dict[str, float] = {}
        self.baseline_: dict[str, tuple[float, float]] = {}
        self.window_size_: dict[str, int] = {}
        self.calibration_rest_: dict[str, int] = {}
        self.reference_rows_: dict[str, int] = {}
        self._levels: dict[tuple[str, int], float] = {}
        self._nulls: dict[tuple[str, int, int], np.ndarray] = {}
        for name in names:
            self.kinds_[name] = _kind(table.column(name).type, name in self.categorical)
        # Each feature draws from its own stream, so the levels do not depend on the threads.
        seeds = np.random.SeedSequence(0).spawn(len(names))
        self._seeds = dict(zip(names, seeds, strict=True))
        jobs = list(zip(names, seeds, strict=True))
        learned = self._map(lambda job: self._fit_one(job[0], job[1], table), jobs, rows)
        for name, state in zip(names, learned, strict=True):
            for attr, value in state.items():
                getattr(self, attr)[name] = value
        self.feature_false_alert_rate_ = self._feature_rate(table, names)
        excess = self._map(self._excess, names, rows)
        self.excess_ = dict(zip(names, excess, strict=True))
        for name in names:
            self.thresholds_[name] = self.threshold(name, self.window_size_[name])
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
        state["cells_"] = None
        if kind == "numeric":
            edges = np.unique(_quantiles(values, np.linspace(0, 1, self.bins + 1)[1:-1]))
            state.update(sorted_=values, prefix_=_prefix(values), edges_=edges)
            state["ref_counts_"] = _counts(values, edges)
            state["cells_"] = _numeric_cells(values)
        elif kind == "categorical":
            assert categories is not None
            counts = np.bincount(values, minlength=len(categories) + 1)
            state["ref_counts_"] = counts
            state["cells_"] = _Cells(np.arange(len(categories)), counts[:-1] / len(values))
        else:
            state["vectors_"] = values
        rng = np.random.default_rng(seed)
        if self.ordered:
            spread, size, rest = self._calibrate_ordered(kind, col, values, rng)
        else:
            spread, size, rest = self._calibrate(kind, values, rng)
        state["spread_"] = spread
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

    # -- alert levels -------------------------------------------------------------------------
    def threshold(self, name: str, rows: int) -> float:
        """The alert level for a window of ``rows`` rows: healthy windows of that size pass it
        but for ``feature_false_alert_rate_`` of them."""
        key = (name, rows)
        level = self._levels.get(key)
        if level is None:
            level = self._levels[key] = self._level(name, rows)
        return level

    def _level(self, name: str, m: int) -> float:
        kind, alpha = self.kinds_[name], self.feature_false_alert_rate_
        if kind == "vector":
            return self._vector_level(name, alpha, m) + 1e-12
        n = self.reference_rows_[name]
        level = self._null_level(name, alpha, m, n)
        excess = self.excess_.get(name, 0.0)
        if excess > 0:
            # KS (and the root of chi-square per pair of rows) is a distance: a window's
            # distance to the reference is at most its sampling noise plus how far its stretch
            # of time sits from the whole. The reference's own stretches passed the null level
            # by ``excess``, which a window carries whatever its length; one shorter than the
            # stretches gets it scaled up, as its noise is.
            pairs = _pairs(m, n)
            grow = max(
                1.0, np.sqrt(_pairs(self.window_size_[name], self.calibration_rest_[name]) / pairs)
            )
            if kind == "numeric":
                level += excess * grow
            else:
                level = pairs * (np.sqrt(level / pairs) + excess * grow) ** 2
        return float(level) + 1e-12

    def _null_level(self, name: str, alpha: float, m: int, n: int) -> float:
        """The level that a share ``alpha`` of windows of m rows pass against a reference of n
        rows, both drawn from the same distribution."""
        kind, cells = self.kinds_[name], self.cells_[name]
        if cells is None:  # a continuous number: the two-sample KS law, n m / (n + m) pairs
            return _ks_level(alpha, max(round(_pairs(m, n)), 1))
        # Draws are made for sizes on a 2% grid (windows that lost some nulls differ in size
        # by a few rows) and KS rescaled from there; chi-square does not scale with the rows.
        grid = max(round(NULL_GRID ** round(np.log(m) / np.log(NULL_GRID))), 1)
        key = (name, grid, n)
        draws = self._nulls.get(key)
        if draws is None:
            seed = self._seeds[name]
            rng = np.random.default_rng(
                np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, grid, n))
            )
            draws = self._nulls[key] = _null_sample(cells.shares, grid, n, kind, rng)
        level = _draws_level(draws, alpha, 2 if kind == "numeric" else 1)
        if kind == "numeric":
            level *= np.sqrt(_pairs(grid, n) / _pairs(m, n))
        # Where merged cells hold a continuum of values the draws see the walk only at their
        # edges and miss its excursions in between: Broadie, Glasserman and Kou's correction
        # for a Brownian path watched at steps of `gap` lifts the level by 0.5826 sqrt(gap),
        # here in KS units and for the share of the rows it concerns.
        return level + 0.5826 * cells.coarse * np.sqrt(cells.gap / _pairs(m, n))

    def _excess(self, name: str) -> float:
        """How far the reference's own healthy stretches (``ordered``) pass the null level at
        their size, as a distance; 0 when they do not, or when the rows are not in order."""
        kind = self.kinds_[name]
        if not self.ordered or kind == "vector":
            return 0.0
        alpha = self.feature_false_alert_rate_
        size, rest = self.window_size_[name], self.calibration_rest_[name]
        seen = float(np.quantile(self.spread_[name], 1 - alpha))
        null = self._null_level(name, alpha, size, rest)
        if kind == "categorical":  # chi-square grows with the rows: compare distances
            pairs = _pairs(size, rest)
            seen, null = np.sqrt(seen / pairs), np.sqrt(null / pairs)
        return max(float(seen - null), 0.0)

    def _vector_level(self, name: str, alpha: float, m: int) -> float:
        """MMD has no law to read a level from: a gamma fitted to the reference's own chunks
        (the null of a squared MMD is a weighted sum of chi-squares), rescaled to the window;
        no tighter than the chunks themselves with ``ordered``."""
        spread = self.spread_[name]
        mean, var = float(np.mean(spread)), float(np.var(spread))
        level = float(np.max(spread))
        if mean > 0 and var > 0:
            level = float(sstats.gamma.isf(alpha, mean * mean / var, scale=var / mean))
        if self.ordered:
            level = max(level, float(np.quantile(spread, 1 - alpha)))
        # mmd compares at most MMD_ROWS rows of each side, and its null mean goes as 1/m + 1/n.
        size, rest = self.window_size_[name], self.calibration_rest_[name]
        n = self.reference_rows_[name]
        ratio = (1 / min(m, MMD_ROWS) + 1 / min(n, MMD_ROWS)) / (
            1 / min(size, MMD_ROWS) + 1 / min(rest, MMD_ROWS)
        )
        if self.ordered:  # rows in time order are not independent: a longer window keeps it
            ratio = max(ratio, 1.0)
        return level * ratio

    def _feature_rate(self, table: pa.Table, names: list[str]) -> float:
        """The per-feature rate: ``false_alert_rate``, or the one at which healthy windows
        alert on any feature at ``window_false_alert_rate``.

        Independent features would need Šidák's 1 - (1 - r)^(1/k); correlated ones alert
        together, so fewer tests are in effect. How many is measured on healthy windows drawn
        from the reference (stretches of it with ``ordered``): with each feature alerting on
        its own top ``a`` share of them, the share of windows alerting on any feature gives
        the effective count k' (1 - (1 - a)^k'), and the rate is Šidák's for k' tests. A
        Gaussian copula of the statistics would not do: near-copies of a feature have KS
        statistics far more alike in the tail than in the bulk."""
        rate = self.window_false_alert_rate
        if rate is None:
            return self.false_alert_rate
        k = len(names)
        sidak = float(-np.expm1(np.log1p(-rate) / k))
        if k == 1:
            return sidak
        rng = np.random.default_rng(np.random.SeedSequence(1))
        rows = table.num_rows
        size = min(JOINT_ROWS, rows)
        if self.ordered:
            take = np.arange(0, rows, -(-rows // size))
        else:
            take = np.sort(rng.choice(rows, size, replace=False))
        n = len(take)
        w = max(min(JOINT_WINDOW, n // 10), 2)
        if self.ordered:
            windows = rng.integers(0, n - w + 1, JOINT_DRAWS)[:, None] + np.arange(w)
        else:  # disjoint windows of random permutations
            per = n // w
            perms = [rng.permutation(n)[: per * w] for _ in range(-(-JOINT_DRAWS // per))]
            windows = np.concatenate(perms).reshape(-1, w)[:JOINT_DRAWS]
        picked = pa.array(take)
        stats = self._map(
            lambda name: self._joint_statistic(table.column(name).take(picked), name, windows),
            names,
            rows,
        )
        # Each feature alerts on exactly its top `top` windows: ties (discrete statistics, or
        # a vector's, not measured here) are broken at random.
        top = max(JOINT_TOP, round(JOINT_DRAWS * sidak))
        alerted = np.zeros(JOINT_DRAWS, dtype=bool)
        for stat in stats:
            alerted[np.lexsort((rng.random(JOINT_DRAWS), stat))[-top:]] = True
        share = top / JOINT_DRAWS
        effective = np.log1p(-alerted.mean()) / np.log1p(-share)
        return float(np.clip(-np.expm1(np.log1p(-rate) / max(effective, 1.0)), sidak, rate))

    def _joint_statistic(self, col: Any, name: str, windows: np.ndarray) -> np.ndarray:
        """The feature's statistic between each window (rows of positions in ``col``) and the
        rest of ``col``, on the cells of its values (quantile bins for continuous numbers)."""
        kind = self.kinds_[name]
        if kind == "vector":
            return np.zeros(len(windows))
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if kind == "categorical":
            categories = self.categories_[name]
            codes = pc.index_in(col.cast(pa.string()), value_set=categories)
            codes = pc.fill_null(codes, len(categories)).to_numpy(zero_copy_only=False)
            return _window_vs_rest(codes.astype(np.int64), len(categories), windows, kind)
        cells = self.cells_[name]
        if cells is None:
            q = np.linspace(0, 1, JOINT_BINS + 1)[1:-1]
            upper = np.append(np.unique(_quantiles(self.sorted_[name], q)), np.inf)
        else:
            upper = cells.upper
        x = col.to_numpy(zero_copy_only=False).astype(np.float64)
        codes = np.searchsorted(upper, x, side="left")
        codes[np.isnan(x)] = len(upper)  # missing: in no cell
        return _window_vs_rest(codes, len(upper), windows, kind)

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
            value, p, was = _ks_was(self.sorted_[name], *self.prefix_[name], values)
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


@dataclass(frozen=True, slots=True)
class _Cells:
    """A discrete feature's cells and the reference's share of each: its categories, or the
    distinct values of a number (``upper`` the largest value in each cell). ``coarse`` is the
    share of the rows in cells that merge many distinct values, ``gap`` the largest such
    cell's share."""

    upper: np.ndarray
    shares: np.ndarray
    coarse: float = 0.0
    gap: float = 0.0


def _numeric_cells(sorted_values: np.ndarray) -> _Cells | None:
    """The cells of a number whose values repeat (counts, flags, rounded amounts); None for a
    continuous one, whose KS follows the two-sample law. Beyond NULL_CELLS distinct values the
    small ones are merged (a value holding 1/NULL_CELLS of the rows keeps its own cell)."""
    n = len(sorted_values)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=new[1:])
    ends = np.append(np.flatnonzero(new)[1:], n)  # rows up to each distinct value
    mass = np.diff(ends, prepend=0)
    if mass.max() <= TIE_SHARE * n:
        return None
    if len(ends) <= NULL_CELLS:
        return _Cells(sorted_values[ends - 1], mass / n)
    big = mass * NULL_CELLS >= n
    keep = np.diff(ends * NULL_CELLS // n, prepend=0) > 0
    keep |= big
    keep[:-1] |= big[1:]  # a large value's cell starts where the one below it ends
    keep[-1] = True
    shares = np.diff(ends[keep], prepend=0) / n
    values = np.diff(np.flatnonzero(keep), prepend=-1)  # distinct values per cell
    coarse = values >= COARSE_VALUES
    gap = float(shares[coarse].max()) if coarse.any() else 0.0
    return _Cells(sorted_values[ends[keep] - 1], shares, float(shares[coarse].sum()), gap)


def _pairs(m: float, n: float) -> float:
    """The effective sample size of two samples, m n / (m + n): KS and chi-square per pair
    scale with its root."""
    return m * n / (m + n)


@functools.lru_cache(maxsize=4096)
def _ks_level(alpha: float, pairs: int) -> float:
    """The level two continuous samples with ``pairs`` effective rows pass but for ``alpha``."""
    return float(sstats.kstwo.isf(alpha, pairs))


def _null_sample(
    shares: np.ndarray, m: int, n: int, kind: str, rng: np.random.Generator
) -> np.ndarray:
    """Sorted draws of the statistic (KS for numbers, chi-square for categories) between a
    window of m rows and a reference of n, both drawn from ``shares``: every draw carries the
    reference's own sampling error, as a live window's comparison does."""
    draws = int(np.clip(NULL_BUDGET // len(shares), NULL_MIN_DRAWS, NULL_DRAWS))
    # Poisson counts, twice as fast as multinomial ones: given its total each draw is a
    # multinomial sample, and its size, m or n give or take a root, barely moves the law.
    cur = rng.poisson(m * shares, size=(draws, len(shares)))
    ref = rng.poisson(n * shares, size=(draws, len(shares)))
    return np.sort(_ks_rows(ref, cur) if kind == "numeric" else _chi2_rows(ref, cur))


def _draws_level(draws: np.ndarray, alpha: float, power: int) -> float:
    """The level a share ``alpha`` of the (sorted) draws pass. Where the draws are many enough
    it is read off them: the value with the share above it nearest ``alpha``, since the
    statistic of discrete data sits on a lattice. Further out the tail of ``statistic **
    power`` (KS squared, chi-square) is extended as an exponential, its scale the draws' mean
    excess: both tails are of that shape."""
    b = len(draws)
    q = max(alpha, TAIL_FROM)
    near = np.unique(draws[int(b * max(1 - 4 * q, 0)) :])
    above = (b - np.searchsorted(draws, near, side="right")) / b
    near, above = near[above > 0], above[above > 0]
    if len(near) == 0:  # every draw is the same: only a value never seen alerts
        return float(draws[-1])
    i = int(np.argmin(np.abs(np.log(above / q))))
    level, share = float(near[i]), float(above[i])
    if alpha >= TAIL_FROM:
        return level
    scale = float(np.mean(draws[draws > level] ** power - level**power))
    return float((level**power + scale * np.log(share / alpha)) ** (1 / power))


def _ks_rows(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """KS between each row of ``cur`` and of ``ref``, both counts over the same ordered cells."""
    a = np.cumsum(ref, axis=1) / np.maximum(ref.sum(axis=1, keepdims=True), 1)
    b = np.cumsum(cur, axis=1) / np.maximum(cur.sum(axis=1, keepdims=True), 1)
    return np.abs(a - b).max(axis=1)


def _chi2_rows(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """:func:`chi2`'s statistic for each row pair of count tables at once."""
    ref, cur = ref.astype(np.float64), cur.astype(np.float64)
    col = ref + cur
    r1, r2 = ref.sum(axis=1, keepdims=True), cur.sum(axis=1, keepdims=True)
    share = col / np.maximum(r1 + r2, 1)
    e1, e2 = r1 * share, r2 * share
    used = col > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(used, (ref - e1) ** 2 / e1 + (cur - e2) ** 2 / e2, 0.0)
    stat = terms.sum(axis=1)
    stat[used.sum(axis=1) < 2] = 0.0
    return stat


def _window_vs_rest(codes: np.ndarray, cells: int, windows: np.ndarray, kind: str) -> np.ndarray:
    """The statistic between each window (a row of positions in ``codes``) and the rest, from
    cell counts (codes of ``cells`` or more are in no cell)."""
    draws = len(windows)
    width = cells + 1
    codes = np.minimum(codes, cells)
    total = np.bincount(codes, minlength=width)
    offset = width * np.arange(draws)[:, None]
    cur = np.bincount((codes[windows] + offset).ravel(), minlength=draws * width)
    cur = cur.reshape(draws, width)
    ref, cur = (total - cur)[:, :cells], cur[:, :cells]
    return _ks_rows(ref, cur) if kind == "numeric" else _chi2_rows(ref, cur)


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
        # fit() learns the categories of every feature it marks categorical.
        assert categories is not None
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
