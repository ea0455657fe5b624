"""Monitoring: drift per feature with calibrated alert levels (more to come: prediction and
embedding drift over the prediction log, concept drift, staleness and skew)."""

from __future__ import annotations

from keel.monitoring.drift import DriftDetector, DriftReport, FeatureDrift

__all__ = ["DriftDetector", "DriftReport", "FeatureDrift"]
