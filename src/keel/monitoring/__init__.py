"""Monitoring: what models see and say, against what they were trained on.

Drift per feature and of the predictions (:class:`DriftDetector`, with alert levels calibrated
on the reference), concept drift before labels arrive (:class:`LossEstimator`), and the
:class:`Monitor` job that watches a route's prediction log in windows, with staleness, request
skew, alerts on the log and Prometheus gauges.
"""

from __future__ import annotations

from keel.monitoring.concept import LOSSES, LossEstimator, PerformanceEstimate, row_loss
from keel.monitoring.drift import DriftDetector, DriftReport, FeatureDrift
from keel.monitoring.events import times_level
from keel.monitoring.monitor import MONITOR, Monitor, events, history

__all__ = [
    "LOSSES",
    "MONITOR",
    "DriftDetector",
    "DriftReport",
    "FeatureDrift",
    "LossEstimator",
    "Monitor",
    "PerformanceEstimate",
    "events",
    "history",
    "row_loss",
    "times_level",
]
