"""The monitor's Prometheus gauges: each window's drift statistics and alert levels, the
estimated and realized loss, served staleness, and alerts raised."""

from __future__ import annotations

from typing import Any

__all__ = ["Gauges"]


class Gauges:
    """The monitor's Prometheus gauges for one route."""

    def __init__(self, registry: Any, route: str) -> None:
        from prometheus_client import Counter, Gauge

        self.route = route
        self.statistic = Gauge(
            "keel_drift_statistic",
            "Drift statistic of the latest window",
            ["route", "feature", "statistic"],
            registry=registry,
        )
        self.threshold = Gauge(
            "keel_drift_threshold",
            "Calibrated alert level of the latest window",
            ["route", "feature"],
            registry=registry,
        )
        self.drifted = Gauge(
            "keel_drift_alert",
            "1 when the feature drifted",
            ["route", "feature"],
            registry=registry,
        )
        self.estimated = Gauge(
            "keel_estimated_loss",
            "Estimated loss of the latest window",
            ["route"],
            registry=registry,
        )
        self.realized = Gauge(
            "keel_realized_loss",
            "Realized loss of the latest labelled window",
            ["route"],
            registry=registry,
        )
        self.stale = Gauge(
            "keel_served_staleness_p99_seconds",
            "p99 staleness of served features in the latest window",
            ["route", "feature"],
            registry=registry,
        )
        self.alerts = Counter(
            "keel_monitor_alerts", "Alerts raised", ["route", "kind"], registry=registry
        )

    def update(self, record: dict[str, Any]) -> None:
        r = self.route
        entries = list(record["features"])
        if record["prediction"] is not None:
            entries.append(record["prediction"])
        for f in entries:
            if f["value"] is not None:
                self.statistic.labels(r, f["feature"], f["statistic"]).set(f["value"])
                self.threshold.labels(r, f["feature"]).set(f["threshold"])
            self.drifted.labels(r, f["feature"]).set(1 if f["drifted"] else 0)
        if record["performance"] is not None:
            self.estimated.labels(r).set(record["performance"]["estimated"])
        for feature, s in record["staleness"].items():
            self.stale.labels(r, feature).set(s["p99"])
        for alert in record["alerts"]:
            self.alerts.labels(r, alert.split(":", 1)[0]).inc()
