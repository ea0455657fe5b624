"""The monitor job: a route's prediction log, in windows, against its model's training set.

For each window of ``window_rows`` logged predictions, :class:`Monitor` measures

- data drift of every model input and prediction drift of every output (embedding drift for
  vector outputs) with :class:`~keel.monitoring.drift.DriftDetector`, whose alert levels are
  calibrated on the reference;
- the model's estimated loss before labels arrive (:class:`~keel.monitoring.concept.LossEstimator`,
  learned on the held-out end of the training set), and its realized loss once they do;
- the staleness of every joined feature, as served;
- request skew: entity concentration, each version's share against the configured split, and
  training/serving skew (the same entity's features rebuilt offline at the served time,
  compared with what was served);
- for a tree model (LightGBM, XGBoost), global feature importance: the mean absolute TreeSHAP
  contribution of every model input over the window's rows, beside the reference's.

The reference is the model version's training set, rebuilt from its lineage. Each window is
one ``window`` event on the ``keel.monitor`` topic, which also records where the next window
starts, so a restarted monitor carries on where it stopped. Alerts are ``alert`` events (and
Prometheus gauges); an estimated loss that crosses its threshold also emits a
``retrain_request`` event.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.clock import Clock, SystemClock
from keel.config import MonitorConfig, RouteConfig
from keel.errors import NotFoundError, ValidationError
from keel.log import OFFSET
from keel.monitoring.concept import LossEstimator, row_loss
from keel.monitoring.drift import ALERT_STATISTIC, DriftDetector, FeatureDrift
from keel.monitoring.events import MONITOR, events, has_topic, history
from keel.monitoring.gauges import Gauges
from keel.monitoring.skew import concentration, staleness, training_serving
from keel.prediction_log import KEY_PREFIX, META, OUTPUT_PREFIX, STALE_PREFIX, topic_name

__all__ = ["MONITOR", "Monitor", "events", "history"]

KEEP_WINDOWS = 50  # windows whose request ids still wait for their labels
IMPORTANCE_ROWS = 5_000  # reference rows sampled (seeded) for its global importance

logger = logging.getLogger(__name__)


@dataclass
class Reference:
    """What a route is compared with: its model's training set, with the model's outputs."""

    version: str
    table: pa.Table  # the watched inputs and output__* columns
    features: list[str]
    outputs: list[str]
    rows: int
    labelled: int = 0
    # Mean |TreeSHAP contribution| per feature over the reference (tree models only).
    importance: dict[str, float] | None = None


@dataclass
class _Pending:
    """A scored window whose outcomes are still arriving."""

    index: int
    scores: dict[str, float] = field(default_factory=dict)  # request id -> output
    loss_sum: float = 0.0
    labelled: int = 0


class Monitor:
    """Watches one route's prediction log.

    Parameters
    ----------
    route
        The route's configuration (its ``monitor`` block, or the defaults).
    log, registry, features
        The project's log, registry and feature store.
    clock
        Stamps the events (injectable, as everywhere).
    metrics
        A ``prometheus_client.CollectorRegistry`` to export gauges to (optional).
    start
        Where a route that was never monitored starts: ``"earliest"`` (the whole log) or
        ``"latest"`` (from now on). A route monitored before resumes after its last window.
    """

    def __init__(
        self,
        route: RouteConfig,
        *,
        log_: Any,
        registry: Any,
        features: Any = None,
        clock: Clock | None = None,
        metrics: Any = None,
        start: str = "earliest",
    ) -> None:
        if start not in ("earliest", "latest"):
            raise ValidationError(f"monitor start must be 'earliest' or 'latest', not {start!r}")
        self.route = route
        self.config = route.monitor or MonitorConfig()
        self.log = log_
        self.registry = registry
        self.features = features
        self.clock = clock or SystemClock()
        self.topic = topic_name(route.name)
        self.metrics = Gauges(metrics, route.name) if metrics is not None else None
        log_.create_topic(MONITOR, exist_ok=True)
        self.reference_: Reference | None = None
        self.detector_: DriftDetector | None = None
        self.estimator_: LossEstimator | None = None
        self.explainer_: Any = None  # a TreeExplainer of the reference's model, if a tree model
        self._pending: list[_Pending] = []
        self._unrestored: tuple[list[tuple[int, int, int]], dict[int, tuple[float, int]]] = ([], {})
        self._labels: Any = None
        self._alerting = False
        self.next_offset_, self.windows_ = self._resume()
        if self.windows_ == 0 and start == "latest" and has_topic(log_, self.topic):
            self.next_offset_ = self.log.end_offsets(self.topic)[0]

    # -- the reference -------------------------------------------------------------------
    def fit(self) -> Monitor:
        """Rebuild the reference from the model's lineage and learn the alert levels."""
        from keel.runtimes import runtime_for

        name, _, ref = self.route.model.partition("@")
        self.explainer_ = None
        if self.config.reference_rows:
            return self._fit_from_log(self.config.reference_rows)
        if self.route.model.startswith("builtin:"):
            raise ValidationError(
                f"route {self.route.name!r} serves a builtin model, which has no training set "
                "to compare with: set reference_rows in its [routes.monitor] block to take the "
                "first logged predictions as the reference"
            )
        version = self.registry.get(name, ref or "latest")
        if self.features is None:
            raise ValidationError("monitoring a route needs the project's feature store")
        train = self.registry.training_set(name, version.version, self.features)
        stamp = (version.lineage.get("training_set") or {}).get("timestamp", "ts")
        if stamp in train.column_names:  # time order: calibration windows are stretches of it
            train = train.sort_by(stamp)
        runtime = runtime_for(self.registry.load(name, version.version), version.format)
        names = list(getattr(runtime, "feature_names", []) or [])
        if not names:
            raise ValidationError(
                f"{version.ref} takes tensors, not named features: set reference_rows in the "
                "route's [routes.monitor] block to take the first logged predictions as the "
                "reference"
            )
        missing = [n for n in names if n not in train.column_names]
        if missing:
            raise ValidationError(
                f"{version.ref}'s training set has no column {missing[0]!r} that the model takes"
            )
        matrix = _matrix(train, names)
        outputs = runtime.predict({runtime.inputs[0].name: matrix})
        columns = {n: train[n] for n in names}
        out_names = []
        for out, values in outputs.items():
            arr = np.asarray(values)
            if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1):
                columns[OUTPUT_PREFIX + out] = pa.array(arr.reshape(len(arr), -1)[:, 0])
                out_names.append(OUTPUT_PREFIX + out)
        table = pa.table(columns)
        self.detector_ = DriftDetector(
            features=names + out_names,
            categorical=self.config.categorical,
            false_alert_rate=self.config.false_alert_rate,
            window_false_alert_rate=self.config.window_false_alert_rate,
            ordered=True,
        ).fit(table)
        reference = Reference(version.ref, table, names, out_names, table.num_rows)
        self.reference_ = reference
        self._fit_importance(reference, runtime, matrix)
        self._fit_estimator(reference, train, table, names, out_names)
        return self

    def _fit_from_log(self, rows: int) -> Monitor:
        """The first ``rows`` logged predictions as the reference: every number and vector
        the route logged (inputs and outputs; embeddings are compared by MMD)."""
        if not has_topic(self.log, self.topic):
            raise NotFoundError(
                f"route {self.route.name!r} has no prediction log yet ({self.topic}): its "
                f"reference is its first {rows:,} logged predictions"
            )
        logged = self.log.end_offsets(self.topic)[0]
        if logged < rows:
            raise NotFoundError(
                f"route {self.route.name!r} has logged {logged:,} predictions; its reference "
                f"is the first {rows:,}"
            )
        table = self.log.read(self.topic, 0, 0, rows)
        skip = {*META, OFFSET}
        watched = [
            c
            for c in table.column_names
            if c not in skip
            and not c.startswith((KEY_PREFIX, STALE_PREFIX))
            and (c in self.config.categorical or not pa.types.is_string(table.schema.field(c).type))
        ]
        outputs = [c for c in watched if c.startswith(OUTPUT_PREFIX)]
        features = [c for c in watched if c not in outputs]
        reference = table.select(watched)
        self.detector_ = DriftDetector(
            features=watched,
            categorical=self.config.categorical,
            false_alert_rate=self.config.false_alert_rate,
            window_false_alert_rate=self.config.window_false_alert_rate,
            ordered=True,
        ).fit(reference)
        version = table["version"][table.num_rows - 1].as_py()
        self.reference_ = Reference(version, reference, features, outputs, rows)
        if self.windows_ == 0:
            self.next_offset_ = max(self.next_offset_, int(table.column(OFFSET)[-1].as_py()) + 1)
        return self

    def _fit_importance(self, reference: Reference, runtime: Any, matrix: np.ndarray) -> None:
        """For a tree model: its explainer, and the reference's global importance over a
        seeded sample of at most ``IMPORTANCE_ROWS`` of its rows."""
        from keel.explain import TreeExplainer, methods_for

        if "tree" not in methods_for(runtime):
            return
        self.explainer_ = TreeExplainer(runtime, features=reference.features)
        if len(matrix) > IMPORTANCE_ROWS:
            rng = np.random.default_rng(0)
            matrix = matrix[np.sort(rng.choice(len(matrix), IMPORTANCE_ROWS, replace=False))]
        reference.importance = _mean_abs(self.explainer_, matrix)

    def _fit_estimator(
        self,
        reference: Reference,
        train: pa.Table,
        table: pa.Table,
        names: list[str],
        outputs: list[str],
    ) -> None:
        """Learn the model's loss on the end of its training set that it did not learn from
        (a time split: the training set is in time order)."""
        labels = self.config.labels
        if labels is None or labels.label not in train.column_names or not outputs:
            return
        y = train[labels.label].to_numpy(zero_copy_only=False).astype(np.float64)
        start = int(len(y) * (1 - self.config.holdout))
        held = table.slice(start)
        estimator = LossEstimator(
            loss=self.config.loss,
            # One test per window: the per-feature rate (set low because a window tests
            # every feature) would make the loss test needlessly deaf.
            false_alert_rate=self.config.loss_false_alert_rate,
            min_rise=self.config.min_loss_rise,
            ordered=True,
        )
        if held.num_rows < estimator.rows_needed():
            logger.warning(
                "route %s: %d held-out rows, the loss estimator needs %d; no concept-drift "
                "estimate",
                self.route.name,
                held.num_rows,
                estimator.rows_needed(),
            )
            return
        self.estimator_ = estimator.fit(held.select(names), held[outputs[0]].to_numpy(), y[start:])
        reference.labelled = held.num_rows

    def calibration(self) -> dict[str, dict[str, Any]]:
        """Each watched column's baseline (the statistic between healthy chunks of the
        reference) and the alert level chosen from it; the loss estimate's too."""
        det = self.detector_
        if det is None:
            det = self.fit().detector_
            assert det is not None  # fit() learns one
        size = self.config.window_rows
        out = {}
        for name, kind in det.kinds_.items():
            mean, std = det.baseline_[name]
            out[name] = {
                "statistic": ALERT_STATISTIC[kind],
                "baseline_mean": mean,
                "baseline_std": std,
                "level": det.threshold(name, size),
                "window_rows": size,
                "false_alert_rate": getattr(det, "feature_false_alert_rate_", det.false_alert_rate),
            }
        est = self.estimator_
        if est is not None:
            out[f"estimated {est.loss}"] = {
                "statistic": f"mean {est.loss}",
                "baseline_mean": est.baseline_[0],
                "baseline_std": est.baseline_[1],
                "level": est.threshold(size),
                "window_rows": size,
                "false_alert_rate": est.false_alert_rate,
            }
        return out

    def current(self) -> pa.Table | None:
        """The rows of the last scored window, as served."""
        if self.windows_ == 0:
            return None
        size = self.config.window_rows
        return self.log.read(self.topic, 0, max(self.next_offset_ - size, 0), size)

    def report(self, path: Any) -> Any:
        """Write the HTML report of this route's monitored windows to ``path``."""
        from keel.monitoring.report import write_report

        ref = self.reference_
        if ref is None:
            ref = self.fit().reference_
            assert ref is not None  # fit() builds one
        return write_report(
            path,
            route=self.route.name,
            model=f"{self.route.model} ({ref.version})",
            history=history(self.log, self.route.name),
            reference=ref.table,
            current=self.current(),
            calibration=self.calibration(),
        )

    # -- following the route's version ----------------------------------------------------
    def follow(self) -> dict[str, Any] | None:
        """Take the version the route serves now as the reference, if its model's alias
        moved (a promotion): its training set and loss estimator, from its lineage, and its
        own prediction topic when its inputs differ. Windows restart at its first logged
        prediction. Returns the ``reference`` event published, or None if nothing moved."""
        ref = self.reference_
        if ref is None or self.config.reference_rows or self.route.model.startswith("builtin:"):
            return None
        name, _, alias = self.route.model.partition("@")
        try:
            serving = self.registry.get(name, alias or "latest").ref
        except NotFoundError:
            return None
        if serving == ref.version:
            return None
        previous = ref.version
        self.fit()
        self.topic = self._topic_of(serving)
        self.next_offset_ = self._first_offset(serving)
        self._pending.clear()
        self._alerting = False
        event = {
            "version": serving,
            "previous": previous,
            "topic": self.topic,
            "from_offset": self.next_offset_,
            "rows": self.reference_.rows if self.reference_ else 0,
        }
        self._publish("reference", event)
        logger.info("route %s: monitoring %s (was %s)", self.route.name, serving, previous)
        return event

    def _topic_of(self, version: str) -> str:
        """The prediction topic ``version``'s requests are logged on: the route's own, or
        the one the server opened beside it for a version whose inputs differ."""
        base = topic_name(self.route.name)
        names = [t.name for t in self.log.topics() if t.name.startswith(base + ".")]
        for name in [base, *sorted(names)]:
            end = self.log.end_offsets(name)[0] if has_topic(self.log, name) else 0
            if end and self.log.read(name, 0, end - 1, 1)["version"][0].as_py() == version:
                return name
        return base

    def _first_offset(self, version: str) -> int:
        """Where ``version``'s first logged prediction is, from the current position on
        (the end of the topic if it has none yet)."""
        if not has_topic(self.log, self.topic):
            return 0
        offset = self.next_offset_ if self.topic == topic_name(self.route.name) else 0
        end = self.log.end_offsets(self.topic)[0]
        while offset < end:
            chunk = self.log.read(self.topic, 0, offset, 10_000)
            if not chunk.num_rows:
                break
            hits = pc.index(chunk["version"], version).as_py()
            if hits >= 0:
                return int(chunk.column(OFFSET)[hits].as_py())
            offset = int(chunk.column(OFFSET)[-1].as_py()) + 1
        return end

    # -- windows -------------------------------------------------------------------------
    def step(self) -> list[dict[str, Any]]:
        """Score every complete window logged since the last one; join arrived labels.
        Returns the new window records."""
        if self.detector_ is None:
            self.fit()
        else:
            self.follow()
        records = []
        size = self.config.window_rows
        if not has_topic(self.log, self.topic):
            raise NotFoundError(
                f"route {self.route.name!r} has no prediction log yet ({self.topic}): serve it "
                "with a [routes.monitor] block and send it requests"
            )
        while True:
            end = self.log.end_offsets(self.topic)[0]
            if end - self.next_offset_ < size:
                break
            window = self.log.read(self.topic, 0, self.next_offset_, size)
            if window.num_rows < size:
                break
            # The last offset read, not next + size: retention may have dropped the start.
            records.append(self._score(window, int(window.column(OFFSET)[-1].as_py()) + 1))
        self._join_labels()
        return records

    def _score(self, window: pa.Table, next_offset: int) -> dict[str, Any]:
        ref = self.reference_
        if ref is None or self.detector_ is None:
            raise ValidationError("fit the monitor before scoring windows")
        index = self.windows_
        missing = [c for c in ref.features + ref.outputs if c not in window.column_names]
        if missing:
            raise ValidationError(
                f"route {self.route.name!r}: the prediction log has no column {missing[0]!r}, "
                f"which {ref.version} was trained on; was another model served?"
            )
        watched = ref.features + ref.outputs
        # A column with no values at all in this window (a feature that stopped arriving) is
        # an alert of its own, not a reason to skip the window.
        empty = [n for n in watched if _empty(window[n])]
        scored = [n for n in watched if n not in empty]
        by_name: dict[str, FeatureDrift | dict[str, Any]] = {}
        if scored:
            by_name.update(self.detector_.score(window, features=scored).by_feature())
        by_name.update({n: _no_values(n, self.detector_.kinds_[n]) for n in empty})
        ts = window["ts"]
        record: dict[str, Any] = {
            "route": self.route.name,
            "version": ref.version,
            "window": index,
            "start": pc.min(ts).as_py().isoformat(),
            "end": pc.max(ts).as_py().isoformat(),
            "rows": window.num_rows,
            "topic": self.topic,
            "first_offset": int(window.column(OFFSET)[0].as_py()),
            "next_offset": next_offset,
            "features": [_drift_dict(by_name[n]) for n in ref.features],
            "prediction": _drift_dict(by_name[ref.outputs[0]]) if ref.outputs else None,
            "performance": self._performance(window),
            "staleness": staleness(window),
            "skew": self._skew(window),
            "importance": self._importance(window),
        }
        record["alerts"] = self._alerts(record)
        self._publish("window", record)
        for alert in record["alerts"]:
            self._publish("alert", {"window": index, "alert": alert, "version": ref.version})
        perf = record["performance"]
        if perf is not None and perf["alert"] and not self._alerting:
            self._publish(
                "retrain_request",
                {
                    "window": index,
                    "model": self.route.model,
                    "version": ref.version,
                    "reason": f"estimated {perf['metric']} {perf['estimated']:.4f} crossed "
                    f"its threshold {perf['threshold']:.4f} (reference {perf['reference']:.4f})",
                },
            )
        self._alerting = bool(perf and perf["alert"])
        if self.config.labels is not None and ref.outputs:
            ids = window["request_id"].to_pylist()
            scores = window[ref.outputs[0]].to_numpy(zero_copy_only=False)
            self._pending.append(_Pending(index, dict(zip(ids, scores.tolist(), strict=True))))
            del self._pending[:-KEEP_WINDOWS]
        if self.metrics is not None:
            self.metrics.update(record)
        self.windows_ = index + 1
        self.next_offset_ = next_offset
        return record

    def _performance(self, window: pa.Table) -> dict[str, Any] | None:
        ref = self.reference_
        if self.estimator_ is None or ref is None:
            return None
        est = self.estimator_.estimate(
            window.select(ref.features), window[ref.outputs[0]].to_numpy(zero_copy_only=False)
        )
        return {
            "metric": est.metric,
            "estimated": est.estimated,
            "threshold": est.threshold,
            "reference": est.reference,
            "alert": bool(est.alert),
            "realized": None,
            "labelled": 0,
        }

    def _importance(self, window: pa.Table) -> dict[str, Any] | None:
        """The window's global importance (mean |contribution| per model input, in the
        model's raw output) beside the reference's; None for a model that is no tree model."""
        ref = self.reference_
        if self.explainer_ is None or ref is None or ref.importance is None:
            return None
        return {
            "features": _mean_abs(self.explainer_, _matrix(window, ref.features)),
            "reference": dict(ref.importance),
            "method": self.explainer_.method,
            "output": self.explainer_.output,
        }

    def _alerts(self, record: dict[str, Any]) -> list[str]:
        alerts = [
            f"{'missing' if f['value'] is None else 'drift'}:{f['feature']}"
            for f in record["features"]
            if f["drifted"]
        ]
        if record["prediction"] is not None and record["prediction"]["drifted"]:
            alerts.append("prediction")
        if record["performance"] is not None and record["performance"]["alert"]:
            alerts.append("performance")
        limit = self.config.max_staleness_s
        if limit is not None:
            alerts += [f"staleness:{f}" for f, s in record["staleness"].items() if s["p99"] > limit]
        skew = record["skew"] or {}
        for feature, got in (skew.get("training_serving") or {}).items():
            if got["compared"] and got["mismatched"] / got["compared"] > 0.01:
                alerts.append(f"skew:{feature}")
        return alerts

    # -- skew ----------------------------------------------------------------------------
    def _skew(self, window: pa.Table) -> dict[str, Any]:
        out = concentration(window)
        out["expected"] = self._expected_split()
        watched = self.reference_.features if self.reference_ else []
        out["training_serving"] = training_serving(
            window, self.features, self.route.features, watched
        )
        return out

    def _expected_split(self) -> dict[str, float]:
        primary = self.reference_.version if self.reference_ else self.route.model
        canary = self.route.canary
        if canary is None or not canary.percent:  # 0: rolled back
            return {primary: 1.0}
        name, _, alias = canary.model.partition("@")
        try:
            canary_ref = self.registry.get(name, alias).ref
        except NotFoundError:
            canary_ref = canary.model
        share = canary.percent / 100
        return {primary: 1 - share, canary_ref: share}

    # -- labels --------------------------------------------------------------------------
    def _join_labels(self) -> None:
        labels = self.config.labels
        if labels is not None and self._unrestored[0]:
            self._restore_pending()
        if labels is None or not self._pending or not has_topic(self.log, labels.topic):
            return
        if self._labels is None:
            self._labels = self.log.consumer(f"keel-monitor.{self.route.name}", labels.topic)
        batch = self._labels.poll(100_000)
        if not batch.num_rows:
            return
        got = dict(
            zip(
                (str(i) for i in batch[labels.id].to_pylist()),
                batch[labels.label].to_pylist(),
                strict=True,
            )
        )
        for pending in self._pending:
            ids = [i for i in pending.scores if i in got and got[i] is not None]
            if not ids:
                continue
            y = np.array([float(got[i]) for i in ids])
            s = np.array([pending.scores.pop(i) for i in ids])
            pending.loss_sum += float(row_loss(self.config.loss, y, s).sum())
            pending.labelled += len(ids)
            realized = pending.loss_sum / pending.labelled
            self._publish(
                "realized",
                {"window": pending.index, "realized": realized, "labelled": pending.labelled},
            )
            if self.metrics is not None:
                self.metrics.realized.labels(self.route.name).set(realized)
        self._labels.commit()

    # -- events --------------------------------------------------------------------------
    def _publish(self, kind: str, payload: dict[str, Any]) -> None:
        self.log.append(
            MONITOR.name,
            [
                {
                    "ts": datetime.fromtimestamp(self.clock.now(), UTC),
                    "route": self.route.name,
                    "kind": kind,
                    "payload": json.dumps(payload, default=_jsonable),
                }
            ],
        )

    def _resume(self) -> tuple[int, int]:
        """Where the last window of this route ended (a restart carries on from there), and
        which recent windows may still receive labels. A ``reference`` event (the monitor
        followed a new version) moves the start to that version's first prediction."""
        last = None
        windows = 0
        spans: list[tuple[int, int, int]] = []
        realized: dict[int, tuple[float, int]] = {}
        kinds = ("window", "realized", "reference")
        for event in events(self.log, self.route.name, kinds):
            if event["kind"] == "realized":
                realized[event["window"]] = (event["realized"], event["labelled"])
                continue
            last = event
            if event["kind"] == "reference":
                spans = []  # the old version's windows wait for no more labels here
                continue
            windows = int(event["window"]) + 1
            end = int(event["next_offset"])
            spans.append(
                (event["window"], int(event.get("first_offset", end - event["rows"])), end)
            )
        self._unrestored = (spans[-KEEP_WINDOWS:], realized)
        if last is None:
            return 0, 0
        self.topic = last.get("topic", self.topic)
        if last["kind"] == "reference":
            return int(last["from_offset"]), windows
        # An alert still standing asked for its retrain already.
        self._alerting = bool((last.get("performance") or {}).get("alert"))
        return int(last["next_offset"]), windows

    def _restore_pending(self) -> None:
        """After a restart: the request ids and scores of the recent windows, read back from
        the prediction log, so labels arriving now still join them."""
        spans, realized = self._unrestored
        self._unrestored = ([], {})
        restored = []
        for index, start, end in spans:
            rows = self.log.read(self.topic, 0, start, end - start)
            outputs = [
                c
                for c in rows.column_names
                if c.startswith(OUTPUT_PREFIX) and pa.types.is_floating(rows.schema.field(c).type)
            ]
            if not rows.num_rows or not outputs:
                continue
            ids = rows["request_id"].to_pylist()
            scores = rows[outputs[0]].to_numpy(zero_copy_only=False).tolist()
            value, labelled = realized.get(index, (0.0, 0))
            restored.append(
                _Pending(index, dict(zip(ids, scores, strict=True)), value * labelled, labelled)
            )
        self._pending[:0] = restored


def _matrix(table: pa.Table, names: list[str]) -> np.ndarray:
    """The columns ``names`` of ``table`` as a float64 matrix (nulls as NaN)."""
    return np.column_stack(
        [table[n].cast(pa.float64()).to_numpy(zero_copy_only=False) for n in names]
    )


def _mean_abs(explainer: Any, matrix: np.ndarray) -> dict[str, float]:
    """Global importance: each feature's mean absolute contribution over the rows."""
    explained = explainer.explain(matrix)
    means = np.abs(explained.contributions).mean(axis=0)
    return dict(zip(explained.features, means.tolist(), strict=True))


def _empty(column: Any) -> bool:
    if column.null_count == len(column):
        return True
    if pa.types.is_floating(column.type):
        return not pc.any(pc.invert(pc.is_nan(column.drop_null()))).as_py()
    return False


def _no_values(name: str, kind: str) -> dict[str, Any]:
    return {
        "feature": name,
        "kind": kind,
        "statistic": "missing",
        "value": None,
        "threshold": None,
        "p_value": None,
        "psi": None,
        "wasserstein": None,
        "jensen_shannon": None,
        "drifted": True,
    }


def _drift_dict(f: FeatureDrift | dict[str, Any]) -> dict[str, Any]:
    if isinstance(f, dict):
        return f
    return {
        "feature": f.feature,
        "kind": f.kind,
        "statistic": f.statistic,
        "value": f.value,
        "threshold": f.threshold,
        "p_value": f.p_value,
        "psi": f.psi,
        "wasserstein": f.wasserstein,
        "jensen_shannon": f.jensen_shannon,
        "drifted": f.drifted,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
