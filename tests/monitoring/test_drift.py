"""Drift statistics and calibrated alert levels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from keel.errors import ValidationError
from keel.monitoring import DriftDetector
from keel.monitoring.drift import _ks_pvalue, _ks_spread, chi2, ks, ks_wasserstein, mmd


def test_ks_and_chi_square_agree_with_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.1, 1.2, 1700)
    d, p = ks(np.sort(a), b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert abs(d - ref.statistic) < 1e-9 and abs(p - ref.pvalue) < 1e-9
    d2, p2, w = ks_wasserstein(np.sort(a), b)
    assert (d2, p2) == (d, p)
    assert abs(w - stats.wasserstein_distance(a, b)) < 1e-9
    r, c = np.array([120, 340, 90, 50]), np.array([30, 80, 40, 2])
    stat, p = chi2(r, c)
    ref = stats.chi2_contingency(np.vstack([r, c]), correction=False)
    assert abs(stat - ref.statistic) < 1e-9 and abs(p - ref.pvalue) < 1e-9


@pytest.mark.parametrize(
    "draw",
    [
        pytest.param(lambda rng, n, s: rng.normal(s, 1, n), id="continuous"),
        pytest.param(lambda rng, n, s: rng.integers(0, 8 + int(3 * s), n) * 1.0, id="ties"),
        pytest.param(lambda rng, n, s: np.round(rng.gamma(2, 2 + s, n), 1), id="rounded"),
        pytest.param(lambda rng, n, s: rng.normal(5 * s, 1, n), id="disjoint"),
    ],
)
def test_ks_and_wasserstein_match_scipy_on_any_sample(draw) -> None:
    rng = np.random.default_rng(7)
    for n, m in [(3, 2), (5, 400), (400, 5), (2000, 2000), (3001, 777)]:
        a, b = draw(rng, n, 0.0), draw(rng, m, rng.uniform(0, 1))
        d, p, w = ks_wasserstein(np.sort(a), b)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert (d, p) == (ref.statistic, ref.pvalue)  # the same float operations, bit for bit
        assert abs(w - stats.wasserstein_distance(a, b)) < 1e-9


@pytest.mark.parametrize("n", [20_000, 60_001])
@pytest.mark.parametrize("nxx", [1.0, 2.2, 3.0, 12.0, 80.0, 369.0, 0.3 * 60_001])
def test_the_p_value_of_a_large_sample_matches_scipy(n: int, nxx: float) -> None:
    d = min(np.sqrt(nxx / n), 0.9)
    want = stats.kstwo.sf(d, n)
    assert abs(_ks_pvalue(d, n) - want) <= 1e-9 * want + 1e-300


def test_calibration_ks_equals_ks_of_each_window_against_the_rest() -> None:
    rng = np.random.default_rng(8)
    sample = np.sort(np.round(rng.normal(0, 1, 3000), 1))  # ties, as integer features have
    windows = np.sort([rng.choice(3000, 150, replace=False) for _ in range(10)], axis=1)
    for got, window in zip(_ks_spread(sample, windows), windows, strict=True):
        picked = np.zeros(3000, dtype=bool)
        picked[window] = True
        assert got == ks(sample[~picked], sample[picked])[0]


def make(
    rng: np.random.Generator, n: int, shift: float = 0.0, mix: float = 0.5, emb_shift: float = 0.0
) -> pa.Table:
    emb = rng.normal(0, 1, (n, 8)) + emb_shift
    return pa.table(
        {
            "amount": rng.gamma(2.0, 20.0, n) * (1 + shift),
            "hour": rng.integers(0, 24, n),
            "country": rng.choice(["DE", "FR", "US"], n, p=[mix, 0.8 - mix, 0.2]),
            "score": rng.normal(0, 1, n),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 8),
        }
    )


@pytest.fixture(scope="module")
def detector() -> DriftDetector:
    rng = np.random.default_rng(1)
    return DriftDetector(false_alert_rate=0.01, chunks=20).fit(make(rng, 40_000))


def test_injected_shifts_are_detected_and_named(detector: DriftDetector) -> None:
    rng = np.random.default_rng(2)
    report = detector.score(make(rng, 2000, shift=0.3, mix=0.3, emb_shift=0.5))
    assert set(report.drifted) == {"amount", "country", "emb"}
    amount = report.by_feature()["amount"]
    assert amount.psi > 0.05 and amount.wasserstein > 5 and amount.p_value < 1e-6


def test_unshifted_windows_stay_under_the_false_alert_rate(detector: DriftDetector) -> None:
    rng = np.random.default_rng(3)
    alerts = [detector.score(make(rng, 2000)).drifted for _ in range(40)]
    rate = sum(len(a) for a in alerts) / (40 * 5)
    assert rate <= 0.03  # target 1% per feature; 40 windows × 5 features


def test_bad_input_is_named(detector: DriftDetector) -> None:
    rng = np.random.default_rng(4)
    with pytest.raises(ValidationError, match="no rows"):
        detector.score(make(rng, 10).slice(0, 0))
    with pytest.raises(ValidationError, match="no column 'amount'"):
        detector.score(make(rng, 100).drop_columns(["amount"]))
    window = make(rng, 500)
    amounts = window["amount"].to_numpy().copy()
    amounts[:50] = np.nan
    report = detector.score(window.set_column(0, "amount", pa.array(amounts)))
    assert report.by_feature()["amount"].dropped_nan == 50
    all_nan = window.set_column(0, "amount", pa.array(np.full(500, np.nan)))
    with pytest.raises(ValidationError, match="'amount' has no values"):
        detector.score(all_nan)
    with pytest.raises(ValidationError, match="at least"):
        DriftDetector().fit(make(rng, 50))


def test_mmd_grows_with_the_shift() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (500, 4))
    assert mmd(x, rng.normal(0, 1, (500, 4))) < mmd(x, rng.normal(1, 1, (500, 4)))


def test_alert_levels_follow_the_window_size(detector: DriftDetector) -> None:
    rng = np.random.default_rng(6)
    small = detector.threshold("amount", 500)
    large = detector.threshold("amount", 8000)
    assert small > large  # a smaller window wanders more when healthy
    for rows in (500, 8000):
        alerts = sum("amount" in detector.score(make(rng, rows)).drifted for _ in range(30))
        assert alerts <= 2


def test_a_subset_or_one_column_scores_alone(detector: DriftDetector) -> None:
    rng = np.random.default_rng(9)
    window = make(rng, 2000, shift=0.3, emb_shift=0.5)
    full = detector.score(window).by_feature()
    part = detector.score(window.select(["amount", "emb"]), features=["amount", "emb"])
    assert [f.feature for f in part.features] == ["amount", "emb"]
    assert part.by_feature()["amount"] == full["amount"]
    one = detector.score_feature("amount", window["amount"].to_numpy())
    assert one == full["amount"] and one.drifted
    emb = np.asarray(window["emb"].combine_chunks().flatten()).reshape(-1, 8)
    assert detector.score_feature("emb", emb) == full["emb"]
    with pytest.raises(ValidationError, match="does not watch 'amout' — did you mean 'amount'"):
        detector.score_feature("amout", [1.0])
    with pytest.raises(ValidationError, match="no rows"):
        detector.score_feature("amount", [])


def test_threads_do_not_change_the_results() -> None:
    rng = np.random.default_rng(10)
    n = 60_000  # enough rows for the work to be shared out
    reference = pa.table(
        {"a": rng.normal(0, 1, n), "b": rng.poisson(3, n), "c": rng.gamma(2, 1, n)}
    )
    window = pa.table({"a": rng.normal(0.1, 1, n), "b": rng.poisson(3, n), "c": rng.gamma(2, 1, n)})
    alone = DriftDetector(workers=1).fit(reference)
    shared = DriftDetector(workers=3).fit(reference)
    assert alone.thresholds_ == shared.thresholds_
    assert list(shared.thresholds_) == ["a", "b", "c"]
    assert alone.score(window) == shared.score(window)


def test_a_time_ordered_reference_calibrates_on_contiguous_stretches() -> None:
    """Live windows are stretches of time, not random rows: with a daily cycle in the data,
    levels calibrated on random rows alert on healthy windows; on stretches they do not."""
    rng = np.random.default_rng(4)

    def cycle(n: int, phase: float = 0.0) -> np.ndarray:
        t = np.arange(n) / 1000 + phase  # 1,000 rows a day
        return np.sin(2 * np.pi * t) + rng.normal(0, 0.5, n)

    reference = pa.table({"x": cycle(20_000)})
    shuffled = DriftDetector(chunks=40).fit(reference)
    ordered = DriftDetector(chunks=40, ordered=True).fit(reference)
    healthy = [pa.table({"x": cycle(500, phase=rng.uniform(0, 1))}) for _ in range(60)]
    alerts_shuffled = sum(bool(shuffled.score(w).drifted) for w in healthy)
    alerts_ordered = sum(bool(ordered.score(w).drifted) for w in healthy)
    assert alerts_shuffled > 30
    assert alerts_ordered <= 3
    # A real shift is still caught.
    assert ordered.score(pa.table({"x": cycle(500) + 1.5})).drifted == ["x"]
