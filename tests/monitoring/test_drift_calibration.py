"""Alert levels keep their false-alert rate on fresh healthy windows: data from the
reference's distribution but not its rows, compared with a fixed reference that is itself a
sample.

The counts are sized so a calibrated detector passes by a wide margin. At a rate p over N
windows the alerts spread by sqrt(N p (1 - p)); every band below is +-50% of the target and
lies 4 to 7 such spreads from it (more than the binomial spread for windows that share a
reference, which the numbers of references keep small). Seeds are fixed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from keel.errors import ValidationError
from keel.monitoring import DriftDetector

LEVELS = np.array(["a", "b", "c", "d", "e"])
#: What a feature looks like, by the kind of test its alerts rest on.
GROUPS = {
    "continuous": ["normal", "lognormal"],
    "discrete": ["counts", "hour", "zeros"],
    "binary": ["binary", "flag"],
    "categorical": ["category", "channel"],
}
CATEGORICAL = ["category", "channel"]


def mixed(rng: np.random.Generator, n: int) -> pa.Table:
    return pa.table(
        {
            "normal": rng.normal(0, 1, n),
            "lognormal": rng.lognormal(0, 1, n),
            "counts": rng.poisson(3, n),  # integer counts, few values
            "hour": rng.integers(0, 24, n),
            "zeros": np.where(rng.random(n) < 0.3, 0.0, rng.lognormal(3, 1, n)),  # 30% zeros
            "binary": (rng.random(n) < 0.3).astype(np.int64),
            "flag": rng.random(n) < 0.1,  # boolean: categorical
            "category": LEVELS[rng.choice(5, n, p=[0.4, 0.25, 0.2, 0.1, 0.05])],
            "channel": rng.choice(["web", "app", "store"], n, p=[0.6, 0.3, 0.1]),
        }
    )


def alert_counts(
    fit: Callable[[pa.Table, float], DriftDetector],
    configs: list[tuple[int, tuple[int, ...], int, int]],
    rates: tuple[float, ...],
    seed: int,
) -> dict[tuple[float, int, int], dict[str, int]]:
    """Alerts per feature of fresh healthy windows, per (rate, reference rows, window rows).
    ``configs`` holds (reference rows, window sizes, references, windows per reference and
    size). Each rate gets its own detector; the statistic does not depend on the rate, so one
    scoring serves all of them."""
    out: dict[tuple[float, int, int], dict[str, int]] = {}
    for n, sizes, refs, windows in configs:
        for ref in range(refs):
            rng = np.random.default_rng([seed, n, ref])
            reference = mixed(rng, n)
            detectors = {rate: fit(reference, rate) for rate in rates}
            first = detectors[rates[0]]
            for m in sizes:
                for _ in range(windows):
                    for drift in first.score(mixed(rng, m)).features:
                        for rate, det in detectors.items():
                            counts = out.setdefault((rate, n, m), {})
                            hit = drift.value > det.threshold(drift.feature, m)
                            counts[drift.feature] = counts.get(drift.feature, 0) + hit
    return out


def within_half(alerts: int, trials: int, target: float) -> bool:
    return 0.5 * target <= alerts / trials <= 1.5 * target


# (reference rows, window sizes, references, windows per reference and size): 400 windows of
# each size for each reference size, 4,400 in all
GRID = [
    (5_000, (200, 500, 2_000), 20, 20),
    (20_000, (200, 500, 2_000, 5_000), 8, 50),
    (200_000, (200, 500, 2_000, 5_000), 2, 200),
]
SIZES = [(n, m) for n, sizes, *_ in GRID for m in sizes]


@pytest.fixture(scope="module")
def grid_alerts() -> dict[tuple[float, int, int], dict[str, int]]:
    def fit(reference: pa.Table, rate: float) -> DriftDetector:
        return DriftDetector(categorical=CATEGORICAL, false_alert_rate=rate).fit(reference)

    return alert_counts(fit, GRID, (0.01, 0.05), seed=1)


@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("rate", [0.01, 0.05])
def test_each_kind_of_feature_alerts_at_its_rate(grid_alerts, group: str, rate: float) -> None:
    """Over every reference and window size; at 1% the 8,800 windows of a group expect 88
    alerts (spread 9.3, the band +-44), at 5% 440 (spread 20, the band +-220)."""
    features = GROUPS[group]
    trials = 400 * len(SIZES) * len(features)
    alerts = sum(grid_alerts[(rate, n, m)][f] for n, m in SIZES for f in features)
    assert within_half(alerts, trials, rate), f"{group}: {alerts} alerts in {trials}"


@pytest.mark.parametrize(("n", "m"), [pytest.param(n, m, id=f"{n}-{m}") for n, m in SIZES])
def test_every_reference_and_window_size_alerts_at_the_rate(grid_alerts, n: int, m: int) -> None:
    """At 5%, the 400 windows of a size times 9 features expect 180 alerts (spread 13)."""
    counts = grid_alerts[(0.05, n, m)]
    trials = 400 * len(counts)
    assert within_half(sum(counts.values()), trials, 0.05), counts


@pytest.mark.slow
def test_a_time_ordered_reference_keeps_the_rate_on_healthy_data() -> None:
    """``ordered`` (as routes fit) adds to a level only what the reference's stretches show
    beyond sampling noise, which on rows without time structure is next to nothing."""

    def fit(reference: pa.Table, rate: float) -> DriftDetector:
        return DriftDetector(categorical=CATEGORICAL, false_alert_rate=rate, ordered=True).fit(
            reference
        )

    configs = [(20_000, (200, 2_000), 8, 100)]
    alerts = alert_counts(fit, configs, (0.05,), seed=2)
    for group, features in GROUPS.items():  # 3,200 or 4,800 trials: 160 or 240 expected
        trials = 1600 * len(features)
        hits = sum(alerts[(0.05, 20_000, m)][f] for m in (200, 2_000) for f in features)
        assert within_half(hits, trials, 0.05), f"{group}: {hits} alerts in {trials}"


def test_a_continuous_level_is_never_below_the_ks_quantile() -> None:
    """The user's case: a 20,000-row reference and 2,000-row windows, in time order."""
    rng = np.random.default_rng(3)
    n = 20_000
    det = DriftDetector(false_alert_rate=0.01, ordered=True).fit(
        pa.table({"x": rng.normal(0, 1, n)})
    )
    for m in (200, 500, 2_000, 5_000, 50_000):
        pairs = round(n * m / (n + m))
        assert det.threshold("x", m) >= stats.kstwo.isf(0.01, pairs)
        assert det.threshold("x", m) >= stats.kstwobign.isf(0.01) / np.sqrt(pairs) * 0.98


def correlated(rng: np.random.Generator, n: int) -> pa.Table:
    """32 features: 8 independent ones, then 4 groups of 6 near-copies of one variable
    (correlation ~0.99) in different shapes: the same number, its exponential, a count, a
    flag and two categories."""
    columns = {}
    for i in range(8):
        columns[f"solo{i}"] = [rng.normal(0, 1, n), rng.poisson(4, n)][i % 2]
    for g in range(4):
        base = rng.normal(0, 1, n)
        copy = [base + 0.1 * rng.normal(0, 1, n) for _ in range(6)]
        columns[f"g{g}_num"] = copy[0]
        columns[f"g{g}_exp"] = np.exp(copy[1])
        columns[f"g{g}_count"] = np.floor(2 * copy[2] + 6).clip(0, 12)
        columns[f"g{g}_flag"] = (copy[3] > 0.3).astype(np.int64)
        columns[f"g{g}_cat"] = LEVELS[np.digitize(copy[4], [-1, 0, 0.8, 1.5])]
        columns[f"g{g}_num2"] = copy[5]
    return pa.table(columns)


def test_window_false_alert_rate_holds_across_correlated_features() -> None:
    """At 10% of windows, 800 windows expect 80 alerting (spread 8.5, the band +-40). With
    the features this correlated, Šidák's per-feature rate would alert on far fewer."""
    rate, trials, alerting = 0.1, 0, 0
    for n, m, ordered in [(20_000, 500, True), (20_000, 2_000, False), (200_000, 1_000, True)]:
        for ref in range(2):
            rng = np.random.default_rng([4, n, m, ref])
            det = DriftDetector(
                categorical=[f"g{g}_cat" for g in range(4)],
                window_false_alert_rate=rate,
                ordered=ordered,
            ).fit(correlated(rng, n))
            sidak = 1 - (1 - rate) ** (1 / 32)
            assert det.feature_false_alert_rate_ > 1.2 * sidak
            for _ in range(134 if m == 1_000 else 133):
                alerting += bool(det.score(correlated(rng, m)).drifted)
                trials += 1
    assert within_half(alerting, trials, rate), f"{alerting} of {trials} windows alerted"


def test_independent_features_get_sidaks_rate() -> None:
    rng = np.random.default_rng(5)
    n = 20_000
    table = pa.table({f"x{i}": rng.normal(0, 1, n) for i in range(20)})
    det = DriftDetector(window_false_alert_rate=0.05).fit(table)
    sidak = 1 - 0.95 ** (1 / 20)
    assert sidak <= det.feature_false_alert_rate_ <= 1.2 * sidak
    assert det.thresholds_ == DriftDetector(window_false_alert_rate=0.05).fit(table).thresholds_


def test_window_false_alert_rate_is_checked_and_decides() -> None:
    rng = np.random.default_rng(6)
    table = pa.table({"a": rng.normal(0, 1, 5_000), "b": rng.poisson(3, 5_000)})
    for bad in (0, 0.5, 1.2, -0.1):
        with pytest.raises(ValidationError, match="window_false_alert_rate must be within"):
            DriftDetector(window_false_alert_rate=bad)
    plain = DriftDetector(false_alert_rate=0.02).fit(table)
    assert plain.feature_false_alert_rate_ == 0.02
    both = DriftDetector(false_alert_rate=0.02, window_false_alert_rate=0.02).fit(table)
    assert both.window_false_alert_rate == 0.02
    assert both.feature_false_alert_rate_ < 0.02  # two features share the window's 2%
    assert both.threshold("a", 1_000) > plain.threshold("a", 1_000)
    one = DriftDetector(features=["a"], window_false_alert_rate=0.03).fit(table)
    assert one.feature_false_alert_rate_ == pytest.approx(0.03)


@pytest.mark.parametrize("ordered", [False, True], ids=["shuffled", "ordered"])
def test_a_small_shift_is_still_caught(ordered: bool) -> None:
    """A 0.2-sd move of the mean (and a 10% rise in a count) on 2,000-row windows, among 30
    features at a 1% window rate."""
    rng = np.random.default_rng(7)
    n, m = 50_000, 2_000

    def table(rows: int, shift: float = 0.0) -> pa.Table:
        columns = {f"x{i}": rng.normal(0, 1, rows) for i in range(28)}
        columns["amount"] = rng.normal(shift, 1, rows)
        columns["visits"] = rng.poisson(5 * (1 + shift / 2), rows)
        return pa.table(columns)

    det = DriftDetector(window_false_alert_rate=0.01, ordered=ordered).fit(table(n))
    caught = {"amount": 0, "visits": 0}
    for _ in range(40):
        drifted = det.score(table(m, shift=0.2)).drifted
        for name in caught:
            caught[name] += name in drifted
    assert caught["amount"] >= 36 and caught["visits"] >= 28, caught
