"""Direct loss estimation: tracking the realized loss, calibrated alerts, bad input."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
from scipy.special import expit
from sklearn import metrics
from sklearn.linear_model import LogisticRegression

from keel.errors import ValidationError
from keel.monitoring.concept import LOSSES, LossEstimator, PerformanceEstimate, row_loss

HEALTHY = -1.0  # where the reference's (and healthy traffic's) first input is centred


def draw(rng: np.random.Generator, n: int, centre: float) -> tuple[pa.Table, np.ndarray]:
    """Rows whose label follows ``b`` where ``a < 0`` and the opposite where ``a > 0``: a
    model that learned only ``a < 0`` is confidently wrong on the other side."""
    a, b, c = rng.normal(centre, 1, n), rng.normal(0, 1, n), rng.normal(0, 1, n)
    logit = np.where(a < 0, 3 * b, -3 * b) + c
    labels = (rng.random(n) < expit(logit)).astype(int)
    return pa.table({"a": a, "b": b, "c": c}), labels


def as_matrix(table: pa.Table) -> np.ndarray:
    return np.column_stack([table.column(n).to_numpy() for n in ("a", "b", "c")])


@dataclass
class Setup:
    model: LogisticRegression
    estimator: LossEstimator

    def scores(self, table: pa.Table) -> np.ndarray:
        return self.model.predict_proba(as_matrix(table))[:, 1]


@pytest.fixture(scope="module")
def setup() -> Setup:
    rng = np.random.default_rng(1)
    train, labels = draw(rng, 4000, -1.5)
    easy = as_matrix(train)[:, 0] < 0
    model = LogisticRegression().fit(as_matrix(train)[easy], labels[easy])
    reference, ref_labels = draw(rng, 20_000, HEALTHY)
    scores = model.predict_proba(as_matrix(reference))[:, 1]
    return Setup(model, LossEstimator().fit(reference, scores, ref_labels))


def test_estimate_tracks_the_realized_loss_on_a_concept_shift(setup: Setup) -> None:
    rng = np.random.default_rng(2)
    centres = np.repeat(np.linspace(HEALTHY, 1.5, 11), 2)
    results = []
    for centre in centres:
        window, labels = draw(rng, 1000, centre)
        results.append(setup.estimator.estimate(window, setup.scores(window), labels))
    estimated = np.array([r.estimated for r in results])
    realized = np.array([r.realized for r in results])
    assert np.corrcoef(estimated, realized)[0, 1] > 0.95
    # Traffic in the hard region triples the loss; the estimate follows within 10%.
    assert realized[-1] > 3 * setup.estimator.reference_loss_
    shifted = centres >= 0
    np.testing.assert_allclose(estimated[shifted], realized[shifted], rtol=0.1)
    alerts = np.array([r.alert for r in results])
    assert not alerts[centres == HEALTHY].any()
    assert alerts[centres >= -0.5].all()
    assert {r.metric for r in results} == {"logloss"}
    assert all(r.reference == setup.estimator.reference_loss_ for r in results)


def test_healthy_windows_rarely_alert(setup: Setup) -> None:
    rng = np.random.default_rng(3)
    windows, rows = 300, 1000
    table, _ = draw(rng, windows * rows, HEALTHY)
    per_row = setup.estimator.predict_many(table, setup.scores(table))
    means = per_row.reshape(windows, rows).mean(axis=1)
    alerts = int(np.count_nonzero(means > setup.estimator.threshold(rows)))
    # The target holds on average over references; a finite reference's own sampling error
    # moves one estimator's rate around it, measured between 0 and 3x across seeds.
    assert alerts <= 3 * setup.estimator.false_alert_rate * windows


def test_a_sure_but_small_rise_does_not_alert() -> None:
    """Labelled rows that nearly all cost the same: the loss model is sure of tiny moves,
    which alert only once they pass min_rise."""
    rng = np.random.default_rng(10)
    n = 3000
    x = rng.normal(0, 1, n)
    table = pa.table({"x": x})
    out = np.where(x > 0, 0.011, 0.010)  # two nearly alike scores, every label 0
    levels = {
        rise: LossEstimator(min_rise=rise).fit(table, out, np.zeros(n)).threshold(200)
        for rise in (0.0, 0.1)
    }
    centre = float(np.mean(-np.log1p(-out)))
    assert levels[0.0] < centre * 1.01 < centre * 1.1 == pytest.approx(levels[0.1])
    est = LossEstimator().fit(table, out, np.zeros(n))
    shifted = pa.table({"x": np.abs(rng.normal(0, 1, 200))})  # every row on the costlier side
    estimate = est.estimate(shifted, np.full(200, 0.011))
    assert estimate.estimated > levels[0.0] and not estimate.alert


def test_threshold_narrows_with_window_size_towards_the_healthy_mean(setup: Setup) -> None:
    est = setup.estimator
    levels = [est.threshold(rows) for rows in (50, 300, 1000, 10_000, 10**9)]
    assert levels == sorted(levels, reverse=True)
    centre, spread = est.baseline_
    assert levels[-1] > centre
    # At the calibration window size the level sits a few spreads above the healthy mean.
    at_window = (est.threshold(est.calibration_window_) - centre) / spread
    assert 1.5 < at_window < 4


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        pytest.param("logloss", metrics.log_loss, id="logloss"),
        pytest.param("squared", metrics.mean_squared_error, id="squared"),
        pytest.param("abs", metrics.mean_absolute_error, id="abs"),
        pytest.param("error", lambda y, p: metrics.zero_one_loss(y, p >= 0.5), id="error"),
    ],
)
def test_row_loss_means_agree_with_sklearn(kind: str, reference) -> None:
    rng = np.random.default_rng(4)
    outputs = rng.uniform(0.01, 0.99, 500)
    labels = (rng.random(500) < outputs).astype(int)
    assert row_loss(kind, labels, outputs).mean() == pytest.approx(reference(labels, outputs))


def test_logloss_clips_certain_mistakes() -> None:
    loss = row_loss("logloss", [1, 0], [0.0, 1.0])
    assert np.isfinite(loss).all() and loss[0] == pytest.approx(-np.log(1e-15))


def test_a_regression_model_with_missing_inputs_and_a_dataframe() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    n = 3000
    x = rng.normal(0, 1, n)
    y = x + rng.normal(0, 0.1 + (x > 1), n)  # noisier, so worse predicted, where x > 1
    frame = pd.DataFrame({"x": np.where(rng.random(n) < 0.1, np.nan, x)})
    est = LossEstimator(loss="squared", params={"n_estimators": 50}).fit(frame, x, y)
    assert est.params == {"n_estimators": 50}
    high = np.full(200, 2.0)
    low = np.full(200, -1.0)
    estimate = est.estimate(pd.DataFrame({"x": high}), high)
    assert isinstance(estimate, PerformanceEstimate) and estimate.metric == "squared"
    assert estimate.estimated > est.estimate(pa.table({"x": low}), low).estimated
    assert est.predict_many(pa.table({"x": [np.nan, 0.0]}), [0.0, 0.0]).min() >= 0


@pytest.fixture(scope="module")
def small() -> LossEstimator:
    rng = np.random.default_rng(6)
    table, labels = draw(rng, 1000, 0.0)
    return LossEstimator(loss="error", params={"num_iterations": 10}).fit(
        table, np.full(1000, 0.7), labels
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda e: e.estimate(pa.table({"a": [], "b": [], "c": []}), []),
            "the window has no rows",
            id="empty-window",
        ),
        pytest.param(
            lambda e: e.estimate(pa.table({"a": [1.0], "bb": [1.0], "c": [1.0]}), [0.5]),
            "no feature column 'b' — did you mean 'bb'?",
            id="missing-column",
        ),
        pytest.param(
            lambda e: e.estimate(
                pa.table({"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}), [0.5, np.nan, None]
            ),
            "the outputs have 2 NaN, null or infinite values (of 3)",
            id="nan-outputs",
        ),
        pytest.param(
            lambda e: e.estimate(pa.table({"a": [1.0], "b": ["x"], "c": [1.0]}), [0.5]),
            "feature column 'b' of the window is string",
            id="string-column",
        ),
        pytest.param(
            lambda e: e.estimate(pa.table({"a": [1.0], "b": [1.0], "c": [1.0]}), [0.5, 0.5]),
            "the outputs have 2 values for 1 feature rows",
            id="length-mismatch",
        ),
        pytest.param(lambda e: e.threshold(0), "at least one row", id="zero-rows"),
        pytest.param(lambda e: e.estimate([[1.0]], [0.5]), "not list", id="not-a-table"),
    ],
)
def test_bad_windows_say_what_is_wrong(small: LossEstimator, call, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        call(small)


def test_bad_labelled_rows_say_what_is_wrong() -> None:
    rng = np.random.default_rng(7)
    table, labels = draw(rng, 1000, 0.0)
    scores = np.full(1000, 0.4)
    est = LossEstimator()
    with pytest.raises(ValidationError, match="the labels have 3 NaN, null or infinite values"):
        est.fit(table, scores, np.where(np.arange(1000) < 3, np.nan, labels))
    few = table.slice(0, 150)
    with pytest.raises(ValidationError, match=r"number 150: .* 5 folds, need at least 200"):
        est.fit(few, scores[:150], labels[:150])
    assert est.rows_needed() == 200
    assert LossEstimator(folds=2).rows_needed() == 200
    assert LossEstimator(chunks=4, folds=2).rows_needed() == 200  # 100 outside each fold
    with pytest.raises(ValidationError, match="0/1 labels; 1000 labels are neither"):
        est.fit(table, scores, labels + 2)
    with pytest.raises(ValidationError, match=re.escape("probabilities in [0, 1]; 1 are not")):
        est.fit(table, np.where(np.arange(1000) == 0, 1.5, scores), labels)
    with pytest.raises(ValidationError, match="fit the loss estimator"):
        est.estimate(table, scores)
    with pytest.raises(ValidationError, match="did you mean 'logloss'"):
        LossEstimator(loss="log_loss")
    with pytest.raises(ValidationError, match="folds must be an integer >= 2, got 1"):
        LossEstimator(folds=1)
    with pytest.raises(ValidationError, match="chunks must be an integer >= 4, got 2"):
        LossEstimator(chunks=2)
    with pytest.raises(ValidationError, match="false_alert_rate must be within"):
        LossEstimator(false_alert_rate=1.0)
    assert set(LOSSES) == {"logloss", "squared", "abs", "error"}


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param(40, id="stretches"),  # 600-row stretches: a window is one of them
        pytest.param(240, id="blocks"),  # 100-row stretches: a window joins three
    ],
)
def test_ordered_calibration_counts_daily_cycles_as_healthy(chunks: int) -> None:
    """With a daily cycle in how hard rows are, windows of consecutive rows wander more than
    random rows do; calibrating on stretches keeps healthy consecutive windows quiet."""
    rng = np.random.default_rng(8)
    n = 24_000
    hour = (np.arange(n) // 50) % 24  # 50 rows an hour, in time order
    hard = 0.5 + 0.5 * np.sin(2 * np.pi * hour / 24)  # how ambiguous rows are by hour
    x = rng.normal(0, 1, n)
    p_true = 1 / (1 + np.exp(-x / (0.3 + hard)))
    y = (rng.random(n) < p_true).astype(float)
    out = 1 / (1 + np.exp(-x / 0.3))  # a model that is sure at every hour
    table = pa.table({"x": x, "hour": hour.astype(float)})
    fitted = {
        ordered: LossEstimator(ordered=ordered, chunks=chunks).fit(table, out, y)
        for ordered in (False, True)
    }
    assert fitted[True].ordered and not fitted[False].ordered
    # Healthy live windows: consecutive rows (about five hours each), at any hour.
    starts = rng.integers(0, n - 250, 60)
    alerts = {
        ordered: sum(est.estimate(table.slice(s, 250), out[s : s + 250]).alert for s in starts)
        for ordered, est in fitted.items()
    }
    assert alerts[True] <= 3 < alerts[False]


def test_a_loss_that_never_varies_is_said_and_never_alerts(caplog) -> None:
    """All labelled rows alike (a held-out stretch without a single fraud, say): the loss
    model learns one constant, says so, and its estimates never alert on rounding."""
    with pytest.raises(ValidationError, match="min_rise must be >= 0"):
        LossEstimator(min_rise=-0.1)
    rng = np.random.default_rng(9)
    table, _ = draw(rng, 600, 0.0)
    scores = np.full(600, 0.01)
    with caplog.at_level("WARNING", logger="keel.monitoring.concept"):
        est = LossEstimator().fit(table, scores, np.zeros(600))
    assert "estimates every labelled row alike" in caplog.text
    # Means of a constant over windows of many sizes differ from it in the last bits.
    for rows in range(10, 400, 7):
        window, _ = draw(np.random.default_rng(rows), rows, 3.0)
        estimate = est.estimate(window, np.full(rows, 0.01))
        assert not estimate.alert and estimate.estimated == pytest.approx(-np.log(0.99))
