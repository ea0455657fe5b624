"""Concept drift before labels arrive: estimate the production model's loss per window.

Direct loss estimation: a LightGBM regressor, trained on held-out labelled rows, learns the
production model's per-row loss from the model's inputs and its output. In production it
estimates each window's mean loss from the inputs and outputs alone, so a shift of traffic
towards inputs the model gets wrong shows as a rise in estimated loss before any label comes
back. It cannot see a change in P(label | inputs) that leaves the inputs and outputs alike:
that shows only in the realized loss, once labels arrive.

P-values fire on every tiny shift when windows are large, so the alert level is calibrated
instead: part of the labelled rows is kept out of training, many windows are drawn from it,
and the level is set where ``false_alert_rate`` of those healthy windows' estimates would
pass it. Only a rise in loss alerts.

Example
-------
>>> import numpy as np, pyarrow as pa
>>> from scipy.special import expit
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(-1, 1, 8000)          # held-out labelled rows, mostly where x < 0
>>> y = (rng.random(8000) < np.where(x < 0, expit(4 * x), 0.5)).astype(int)
>>> est = LossEstimator().fit(pa.table({"x": x}), expit(4 * x), y)
>>> later = rng.normal(1, 1, 1000)       # traffic moves where the model is confidently wrong
>>> est.estimate(pa.table({"x": later}), expit(4 * later)).alert
True
>>> same = rng.normal(-1, 1, 1000)
>>> est.estimate(pa.table({"x": same}), expit(4 * same)).alert
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from keel.config import LOSSES
from keel.errors import UnavailableError, ValidationError, did_you_mean
from keel.monitoring.drift import as_table as _table

__all__ = ["LOSSES", "LossEstimator", "PerformanceEstimate", "row_loss"]


# Probabilities are clipped this far from 0 and 1 so one confident miss costs ~34.5, not inf.
PROBABILITY_EPS = 1e-15
DRAWS = 2000
# Past this many rows a calibration window's spread is measured at this size and rescaled:
# the level scales as 1/sqrt(rows) either way, and the draws stay cheap.
MAX_CALIBRATION_WINDOW = 10_000
MIN_WINDOW = 10
MIN_TRAINING_ROWS = 100
DEFAULT_ROUNDS = 200
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "regression",  # L2: the model estimates the conditional mean loss
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 40,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbose": -1,
}
# LightGBM warns when a round count is given in params and as an argument, so it is taken
# out of the params under whichever name it came.
_ROUND_ALIASES = (
    "num_iterations",
    "num_iteration",
    "n_iter",
    "num_tree",
    "num_trees",
    "num_round",
    "num_rounds",
    "nrounds",
    "num_boost_round",
    "n_estimators",
    "max_iter",
)


def row_loss(kind: str, labels: Any, outputs: Any) -> np.ndarray:
    """Per-row loss of ``outputs`` against ``labels``.

    ``logloss`` takes the probability of the positive class and 0/1 labels (probabilities
    are clipped to ``[1e-15, 1 - 1e-15]``); ``squared`` and ``abs`` any real values;
    ``error`` is 1 where ``outputs >= 0.5`` disagrees with the 0/1 label.

    Example
    -------
    >>> row_loss("squared", [1.0, 2.0], [1.5, 2.0]).tolist()
    [0.25, 0.0]
    """
    if kind not in LOSSES:
        raise ValidationError(
            f"unknown loss {kind!r}{did_you_mean(kind, LOSSES)} (expected one of {LOSSES})"
        )
    y = np.asarray(labels, dtype=np.float64)
    o = np.asarray(outputs, dtype=np.float64)
    if y.shape != o.shape:
        raise ValidationError(f"labels have shape {y.shape} but outputs {o.shape}")
    if kind in ("logloss", "error"):
        bad = int(np.count_nonzero((y != 0) & (y != 1)))
        if bad:
            raise ValidationError(f"the {kind} loss needs 0/1 labels; {bad} labels are neither")
    if kind == "logloss":
        outside = int(np.count_nonzero((o < 0) | (o > 1)))
        if outside:
            raise ValidationError(
                f"the logloss needs outputs that are probabilities in [0, 1]; {outside} are not"
            )
        p = np.clip(o, PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        return -(y * np.log(p) + (1 - y) * np.log1p(-p))
    if kind == "squared":
        return (y - o) ** 2
    if kind == "abs":
        return np.abs(y - o)
    return ((o >= 0.5) != (y == 1)).astype(np.float64)


@dataclass(frozen=True, slots=True)
class PerformanceEstimate:
    """One window's estimated loss against its alert level.

    ``reference`` is the mean realized loss on the held-out labelled rows; ``realized`` the
    window's own mean loss, when its labels were given.
    """

    metric: str
    rows: int
    estimated: float
    reference: float
    threshold: float
    realized: float | None = None

    @property
    def alert(self) -> bool:
        return self.estimated > self.threshold


class LossEstimator:
    """Estimates a production model's loss per window from its inputs and outputs.

    Parameters
    ----------
    loss
        The per-row loss to estimate, one of :data:`LOSSES`.
    false_alert_rate
        The share of healthy windows allowed to alert.
    chunks
        The calibration rows are split into this many windows' worth: a calibration window
        has ``calibration rows // chunks`` rows.
    calibration_share
        The share of the labelled rows kept out of training to calibrate the alert level.
    params
        LightGBM parameters, merged over the defaults (a round count may be among them).
    seed
        Seeds the split, LightGBM and the calibration draws.
    ordered
        The labelled rows are in time order: the loss model learns on the earlier rows, is
        calibrated on the later ones, and calibration windows are contiguous stretches of
        them (so what varies within a day counts as healthy spread, as between live windows).

    Attributes
    ----------
    features_
        The feature columns, in the order the loss model takes them (the output comes last).
    model_
        The LightGBM booster that estimates a row's loss.
    reference_loss_, reference_estimate_
        Mean realized and mean estimated loss on the calibration rows.
    baseline_
        Mean and standard deviation of the estimated loss over healthy calibration windows.
    level_
        The alert level for a window of ``calibration_window_`` rows, drawn from
        ``calibration_rows_`` held-out rows.
    """

    def __init__(
        self,
        *,
        loss: str = "logloss",
        false_alert_rate: float = 0.01,
        chunks: int = 20,
        calibration_share: float = 0.3,
        params: dict[str, Any] | None = None,
        seed: int = 0,
        ordered: bool = False,
    ) -> None:
        if loss not in LOSSES:
            raise ValidationError(
                f"unknown loss {loss!r}{did_you_mean(loss, LOSSES)} (expected one of {LOSSES})"
            )
        if chunks < 4 or not 0 < false_alert_rate < 1 or not 0 < calibration_share < 1:
            raise ValidationError(
                "chunks >= 4, 0 < false_alert_rate < 1 and 0 < calibration_share < 1"
            )
        self.loss = loss
        self.false_alert_rate = false_alert_rate
        self.chunks = chunks
        self.calibration_share = calibration_share
        self.params = params
        self.seed = seed
        self.ordered = ordered

    # -- learning from labelled rows ----------------------------------------------------------
    def fit(self, features: Any, outputs: Any, labels: Any) -> LossEstimator:
        """Train the loss model on part of the labelled rows and calibrate on the rest.

        ``features`` are the production model's numeric inputs as served (an Arrow table or
        a DataFrame; missing values are allowed), ``outputs`` its scores (the positive
        class's probability for a binary classifier) and ``labels`` the truth, one per row.
        """
        table = _table(features, "labelled rows")
        rows = table.num_rows
        needed = self.rows_needed()
        if rows < needed:
            raise ValidationError(
                f"the labelled rows number {rows}: training and calibrating {self.chunks} "
                f"chunks with calibration_share={self.calibration_share} needs at least {needed}"
            )
        x = _matrix(table, table.column_names, "labelled rows")
        out = _vector(outputs, "outputs", rows)
        y = _vector(labels, "labels", rows)
        target = row_loss(self.loss, y, out)
        inputs = np.column_stack([x, out])

        rng = np.random.default_rng(self.seed)
        n_cal = round(rows * self.calibration_share)
        if self.ordered:  # learn on the past, calibrate on what followed
            order = np.arange(rows)
            train, cal = order[: rows - n_cal], order[rows - n_cal :]
        else:
            order = rng.permutation(rows)
            cal, train = order[:n_cal], order[n_cal:]

        given = dict(self.params or {})
        rounds = DEFAULT_ROUNDS
        for alias in _ROUND_ALIASES:
            if alias in given:
                rounds = int(given.pop(alias))
        params = {**DEFAULT_PARAMS, **given, "seed": self.seed}
        lgb = _lightgbm()
        data = lgb.Dataset(inputs[train], label=target[train], params={"verbose": -1})
        self.features_: list[str] = list(table.column_names)
        self.model_ = lgb.train(params, data, num_boost_round=rounds)

        estimated = self._predict(inputs[cal])
        self.reference_loss_ = float(target[cal].mean())
        self.reference_estimate_ = float(estimated.mean())
        window = min(n_cal // self.chunks, MAX_CALIBRATION_WINDOW)
        means = (
            _stretch_means(estimated, window, rng)
            if self.ordered
            else _window_means(estimated, window, rng)
        )
        self.calibration_window_ = window
        self.calibration_rows_ = n_cal
        self.baseline_ = (float(means.mean()), float(means.std()))
        self.level_ = float(np.quantile(means, 1 - self.false_alert_rate))
        return self

    def rows_needed(self) -> int:
        """The fewest labelled rows ``fit`` accepts: enough for ``chunks`` calibration windows
        of at least 10 rows, and 100 training rows."""
        return max(
            math.ceil(self.chunks * MIN_WINDOW / self.calibration_share),
            math.ceil(MIN_TRAINING_ROWS / (1 - self.calibration_share)),
        )

    # -- production windows -------------------------------------------------------------------
    def predict_many(self, features: Any, outputs: Any) -> np.ndarray:
        """Each row's estimated loss (never below zero)."""
        return self._predict(np.column_stack(self._window(features, outputs)))

    def threshold(self, rows: int) -> float:
        """The alert level for a window of ``rows`` rows.

        A window's mean wanders from the healthy mean with variance proportional to
        ``1/rows``, and the healthy mean, measured on the calibration rows, is itself off by
        a variance proportional to ``1/calibration_rows_``; the level calibrated on windows
        of ``calibration_window_`` rows is rescaled around the healthy mean by both. Rows in
        time order are not independent (a day has its hours), so with ``ordered`` a longer
        window keeps the calibrated level instead of narrowing it.
        """
        self._check_fitted()
        if rows < 1:
            raise ValidationError(f"a window needs at least one row, not {rows}")
        centre = self.baseline_[0]
        scale = math.sqrt(self.calibration_window_ * (1 / rows + 1 / self.calibration_rows_))
        if self.ordered:
            scale = max(scale, 1.0)
        return centre + (self.level_ - centre) * scale

    def estimate(self, features: Any, outputs: Any, labels: Any = None) -> PerformanceEstimate:
        """The window's estimated mean loss and its alert level; with ``labels`` (once they
        arrive) the realized loss too, to plot beside the estimate."""
        x, out = self._window(features, outputs)
        rows = len(out)
        realized = None
        if labels is not None:
            realized = float(row_loss(self.loss, _vector(labels, "labels", rows), out).mean())
        per_row = self._predict(np.column_stack([x, out]))
        return PerformanceEstimate(
            metric=self.loss,
            rows=rows,
            estimated=float(per_row.mean()),
            reference=self.reference_loss_,
            threshold=self.threshold(rows),
            realized=realized,
        )

    def _window(self, features: Any, outputs: Any) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        table = _table(features, "window")
        if table.num_rows == 0:
            raise ValidationError("the window has no rows: nothing to estimate")
        return _matrix(table, self.features_, "window"), _vector(outputs, "outputs", table.num_rows)

    def _predict(self, inputs: np.ndarray) -> np.ndarray:
        return np.clip(self.model_.predict(inputs), 0.0, None)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ValidationError("fit the loss estimator on labelled rows before estimating")


def _window_means(estimated: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``DRAWS`` windows drawn with replacement: the spread an independent healthy
    window of that size would show."""
    means = np.empty(DRAWS)
    batch = max(1, 2_000_000 // window)
    for start in range(0, DRAWS, batch):
        stop = min(start + batch, DRAWS)
        picks = rng.integers(0, len(estimated), (stop - start, window))
        means[start:stop] = estimated[picks].mean(axis=1)
    return means


def _stretch_means(estimated: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``DRAWS`` contiguous stretches of ``window`` rows at random offsets."""
    total = np.concatenate([[0.0], np.cumsum(estimated)])
    starts = rng.integers(0, len(estimated) - window + 1, DRAWS)
    return (total[starts + window] - total[starts]) / window


def _lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UnavailableError(
            "the loss estimator needs LightGBM: pip install 'keel-ml[ml]'"
        ) from exc
    return lightgbm


def _matrix(table: pa.Table, names: list[str], what: str) -> np.ndarray:
    """The named columns as a float matrix; nulls become NaN, which LightGBM treats as
    missing."""
    columns = []
    for name in names:
        if name not in table.column_names:
            raise ValidationError(
                f"the {what} have no feature column {name!r}"
                f"{did_you_mean(name, table.column_names)}"
            )
        col = table.column(name)
        dtype = col.type
        if not (
            pa.types.is_integer(dtype)
            or pa.types.is_floating(dtype)
            or pa.types.is_boolean(dtype)
            or pa.types.is_decimal(dtype)
        ):
            raise ValidationError(
                f"feature column {name!r} of the {what} is {dtype}: the loss estimator takes "
                "numeric columns (encode categories as numbers first)"
            )
        columns.append(col.cast(pa.float64()).to_numpy())
    if not columns:
        raise ValidationError(f"the {what} have no feature columns")
    return np.column_stack(columns)


def _vector(data: Any, what: str, rows: int) -> np.ndarray:
    if isinstance(data, pa.ChunkedArray | pa.Array):
        data = data.to_numpy(zero_copy_only=False)
    try:
        values = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"the {what} must be numbers: {exc}") from exc
    if values.ndim != 1:
        raise ValidationError(f"the {what} must be one value per row, not shape {values.shape}")
    if len(values) != rows:
        raise ValidationError(f"the {what} have {len(values)} values for {rows} feature rows")
    missing = int(np.count_nonzero(~np.isfinite(values)))
    if missing:
        raise ValidationError(
            f"the {what} have {missing} NaN, null or infinite values (of {rows}): every row "
            "needs a finite one"
        )
    return values
