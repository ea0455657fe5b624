"""Concept drift before labels arrive: estimate the production model's loss per window.

Direct loss estimation: a LightGBM regressor, trained on held-out labelled rows, learns the
production model's per-row loss from the model's inputs and its output. In production it
estimates each window's mean loss from the inputs and outputs alone, so a shift of traffic
towards inputs the model gets wrong shows as a rise in estimated loss before any label comes
back. It cannot see a change in P(label | inputs) that leaves the inputs and outputs alike:
that shows only in the realized loss, once labels arrive.

P-values fire on every tiny shift when windows are large, so the alert level is calibrated
instead. The labelled rows are cross-fitted: split into folds, each fold's rows are estimated
by a loss model that did not learn from them, so every labelled row also calibrates. Many
healthy windows of the live window's size are drawn from those estimates, and the level is
set where ``false_alert_rate`` of them would pass it. Only a rise in loss alerts.

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

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from keel.config import LOSSES
from keel.errors import UnavailableError, ValidationError, did_you_mean
from keel.monitoring.drift import as_table as _table

__all__ = ["LOSSES", "LossEstimator", "PerformanceEstimate", "row_loss"]

logger = logging.getLogger(__name__)


# Probabilities are clipped this far from 0 and 1 so one confident miss costs ~34.5, not inf.
PROBABILITY_EPS = 1e-15
DRAWS = 2000
# Past this many rows a window's healthy spread is measured at this size and rescaled: the
# level scales as 1/sqrt(rows) either way, and the draws stay cheap.
MAX_CALIBRATION_WINDOW = 10_000
MIN_WINDOW = 10
MIN_TRAINING_ROWS = 100
DEFAULT_FOLDS = 5
# Estimates that differ by less than this share of their mean are one constant.
NOISE = 1e-9
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
        The labelled rows are split into this many windows' worth: a calibration window has
        ``labelled rows // chunks`` rows (with ``ordered``, the longest stretch of consecutive
        rows that healthy windows are built from).
    folds
        The labelled rows are cross-fitted in this many folds: each fold's rows are estimated
        by a loss model trained on the others (the final model learns on all of them).
    min_rise
        The least rise over the healthy mean estimate that alerts, as a share of it: a loss
        model that learned little (labelled rows that nearly all cost the same) is sure of
        tiny moves, and a 1% rise in loss is rarely worth a retrain however sure it is.
    params
        LightGBM parameters, merged over the defaults (a round count may be among them).
    seed
        Seeds the folds, LightGBM and the calibration draws.
    ordered
        The labelled rows are in time order: folds are consecutive stretches of time, and a
        healthy window is a stretch of consecutive rows (or, when the rows hold fewer than
        ``chunks`` windows of its size, consecutive stretches of ``labelled rows // chunks``
        rows at random places, joined), so what varies within a day counts as healthy
        spread, as it does between live windows.

    Attributes
    ----------
    features_
        The feature columns, in the order the loss model takes them (the output comes last).
    model_
        The LightGBM booster that estimates a row's loss.
    reference_loss_, reference_estimate_
        Mean realized and mean (cross-fitted) estimated loss on the labelled rows.
    calibration_
        Each labelled row's cross-fitted estimated loss, in the order given.
    baseline_
        Mean and standard deviation of the estimated loss over healthy windows of
        ``calibration_window_`` rows.
    level_
        The alert level for a window of ``calibration_window_`` rows.
    """

    def __init__(
        self,
        *,
        loss: str = "logloss",
        false_alert_rate: float = 0.01,
        chunks: int = 20,
        folds: int = DEFAULT_FOLDS,
        min_rise: float = 0.1,
        params: dict[str, Any] | None = None,
        seed: int = 0,
        ordered: bool = False,
    ) -> None:
        if loss not in LOSSES:
            raise ValidationError(
                f"unknown loss {loss!r}{did_you_mean(loss, LOSSES)} (expected one of {LOSSES})"
            )
        if not isinstance(chunks, int) or chunks < 4:
            raise ValidationError(f"chunks must be an integer >= 4, got {chunks!r}")
        if not isinstance(folds, int) or folds < 2:
            raise ValidationError(f"folds must be an integer >= 2, got {folds!r}")
        if not min_rise >= 0:  # NaN too
            raise ValidationError(f"min_rise must be >= 0, got {min_rise}")
        if not 0 < false_alert_rate < 1:
            raise ValidationError(f"false_alert_rate must be within (0, 1), got {false_alert_rate}")
        self.loss = loss
        self.false_alert_rate = false_alert_rate
        self.chunks = chunks
        self.folds = folds
        self.min_rise = min_rise
        self.params = params
        self.seed = seed
        self.ordered = ordered

    # -- learning from labelled rows ----------------------------------------------------------
    def fit(self, features: Any, outputs: Any, labels: Any) -> LossEstimator:
        """Train the loss model on the labelled rows and calibrate on its cross-fitted
        estimates of them.

        ``features`` are the production model's numeric inputs as served (an Arrow table or
        a DataFrame; missing values are allowed), ``outputs`` its scores (the positive
        class's probability for a binary classifier) and ``labels`` the truth, one per row.
        """
        table = _table(features, "labelled rows")
        rows = table.num_rows
        needed = self.rows_needed()
        if rows < needed:
            raise ValidationError(
                f"the labelled rows number {rows}: {self.chunks} calibration windows of at "
                f"least {MIN_WINDOW} rows, cross-fitted in {self.folds} folds, need at least "
                f"{needed}"
            )
        x = _matrix(table, table.column_names, "labelled rows")
        out = _vector(outputs, "outputs", rows)
        y = _vector(labels, "labels", rows)
        target = row_loss(self.loss, y, out)
        inputs = np.column_stack([x, out])

        rng = np.random.default_rng(self.seed)
        fold = np.arange(rows) * self.folds // rows  # consecutive stretches of time
        if not self.ordered:
            fold = rng.permutation(fold)
        given = dict(self.params or {})
        rounds = DEFAULT_ROUNDS
        for alias in _ROUND_ALIASES:
            if alias in given:
                rounds = int(given.pop(alias))
        params = {**DEFAULT_PARAMS, **given, "seed": self.seed}
        lgb = _lightgbm()

        def train(picked: np.ndarray) -> Any:
            data = lgb.Dataset(inputs[picked], label=target[picked], params={"verbose": -1})
            return lgb.train(params, data, num_boost_round=rounds)

        estimated = np.empty(rows)
        for k in range(self.folds):
            held = fold == k
            estimated[held] = np.clip(train(~held).predict(inputs[held]), 0.0, None)
        self.features_: list[str] = list(table.column_names)
        self.model_ = train(np.ones(rows, bool))
        self.calibration_ = estimated
        if np.ptp(estimated) <= NOISE * max(abs(float(estimated.mean())), 1e-300):
            logger.warning(
                "the loss model estimates every labelled row alike (%d rows, mean loss %.4g): "
                "their loss varies in no way it could learn from the inputs (all labels alike, "
                "say), so its estimate will not move",
                rows,
                float(target.mean()),
            )
        self.reference_loss_ = float(target.mean())
        self.reference_estimate_ = float(estimated.mean())
        self.calibration_rows_ = rows
        self.calibration_window_ = rows // self.chunks
        self._levels: dict[int, float] = {}
        means = self._healthy_means(self.calibration_window_)
        self.baseline_ = (float(means.mean()), float(means.std()))
        self.level_ = self._level(self.calibration_window_)
        return self

    def rows_needed(self) -> int:
        """The fewest labelled rows ``fit`` accepts: enough for ``chunks`` calibration windows
        of at least 10 rows, and 100 training rows outside each fold."""
        return max(
            self.chunks * MIN_WINDOW, math.ceil(MIN_TRAINING_ROWS * self.folds / (self.folds - 1))
        )

    # -- production windows -------------------------------------------------------------------
    def predict_many(self, features: Any, outputs: Any) -> np.ndarray:
        """Each row's estimated loss (never below zero)."""
        return self._predict(np.column_stack(self._window(features, outputs)))

    def threshold(self, rows: int) -> float:
        """The alert level for a window of ``rows`` rows.

        Healthy windows of that size are drawn from the cross-fitted estimates (past
        ``MAX_CALIBRATION_WINDOW`` rows, of that size, their spread rescaled by
        ``1/sqrt(rows)``); the level is their ``1 - false_alert_rate`` quantile. The healthy
        mean they wander around is itself measured on ``calibration_rows_`` rows, so the
        level's distance from it is widened by that uncertainty too. It is at least
        ``min_rise`` above the healthy mean.
        """
        self._check_fitted()
        if rows < 1:
            raise ValidationError(f"a window needs at least one row, not {rows}")
        size = min(rows, MAX_CALIBRATION_WINDOW)
        centre = self.reference_estimate_
        scale = math.sqrt(size * (1 / rows + 1 / self.calibration_rows_))
        level = centre + (self._level(size) - centre) * scale
        return max(level, centre * (1 + self.min_rise))

    def _level(self, size: int) -> float:
        if size not in self._levels:
            means = self._healthy_means(size)
            self._levels[size] = float(np.quantile(means, 1 - self.false_alert_rate))
        return self._levels[size]

    def _healthy_means(self, size: int) -> np.ndarray:
        """Mean estimated loss of ``DRAWS`` healthy windows of ``size`` rows (the same draws
        for a size whenever asked)."""
        rng = np.random.default_rng([self.seed, size])
        estimated = self.calibration_
        if not self.ordered:
            return _window_means(estimated, size, rng)
        # One stretch of the window's size while the rows hold ``chunks`` of them.
        whole = size * self.chunks <= len(estimated)
        return _block_means(estimated, size, size if whole else self.calibration_window_, rng)

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


def _block_means(
    estimated: np.ndarray, window: int, block: int, rng: np.random.Generator
) -> np.ndarray:
    """Means of ``DRAWS`` windows of ``window`` rows, each joined from contiguous stretches of
    ``block`` rows at random offsets (a moving-block bootstrap: what depends on its
    neighbours within a stretch stays together)."""
    blocks = -(-window // block)
    lengths = np.full(blocks, block)
    lengths[-1] = window - block * (blocks - 1)
    total = np.concatenate([[0.0], np.cumsum(estimated)])
    starts = rng.integers(0, len(estimated) - block + 1, (DRAWS, blocks))
    return (total[starts + lengths] - total[starts]).sum(axis=1) / window


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
