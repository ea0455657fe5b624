"""Drift statistics and calibrated alert levels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from keel.errors import ValidationError
from keel.monitoring import DriftDetector
from keel.monitoring.drift import chi2, ks, ks_wasserstein, mmd


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
