"""Throughput and latency over time from a running server's Prometheus metrics.

The server exports counters and histograms (``keel_requests_total``,
``keel_request_latency_seconds``): totals since it started. The console scrapes ``/metrics``
every few seconds while it runs and keeps the last samples; between two samples, the
requests counted give the throughput, and the histogram's buckets the p50 and p99 (as
Prometheus' ``histogram_quantile`` estimates them, within a bucket by linear interpolation).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass

__all__ = ["MetricsSampler", "Rate", "quantile"]

logger = logging.getLogger(__name__)

KEEP = 360  # samples per route: half an hour at one every 5 s


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    requests: float
    errors: float
    buckets: dict[float, float]  # upper bound → cumulative count


@dataclass(frozen=True, slots=True)
class Rate:
    """One interval between two scrapes of a route's metrics."""

    at: float
    rps: float
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """The ``q`` quantile (seconds) of the observations made between two cumulative
    histograms, or None when none was made.

    >>> quantile(0.5, {0.1: 0, 1.0: 0, math.inf: 0}, {0.1: 10, 1.0: 20, math.inf: 20})
    0.1
    """
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


class MetricsSampler:
    """Scrapes ``url``/metrics on :meth:`sample`; :meth:`run` samples until stopped."""

    def __init__(self, url: str, *, every_s: float = 5.0, timeout_s: float = 2.0) -> None:
        self.url = url
        self.every_s = every_s
        self.timeout_s = timeout_s
        #: Whether the server answered the last scrape.
        self.answering = False
        self._series: dict[str, deque[_Sample]] = {}
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.sample()
            stop.wait(self.every_s)

    def sample(self) -> bool:
        """Scrape once; whether the server answered."""
        headers = {}
        token = os.environ.get("KEEL_TOKEN")
        if token:
            headers["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url.rstrip("/") + "/metrics", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                text = resp.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError):
            self.answering = False
            return False
        self.answering = True
        self.add(text, time.time())
        return True

    def add(self, text: str, at: float) -> None:
        """Fold one scrape's text (Prometheus' exposition format) in, as of ``at``."""
        from prometheus_client.parser import text_string_to_metric_families

        requests: dict[str, float] = {}
        errors: dict[str, float] = {}
        buckets: dict[str, dict[float, float]] = {}
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            logger.warning("%s/metrics is not Prometheus' text format; skipped", self.url)
            return
        for family in families:
            for s in family.samples:
                route = s.labels.get("route")
                if route is None:
                    continue
                if s.name == "keel_requests_total":
                    requests[route] = requests.get(route, 0.0) + s.value
                    if s.labels.get("status") != "ok":
                        errors[route] = errors.get(route, 0.0) + s.value
                elif s.name == "keel_request_latency_seconds_bucket":
                    le = float(s.labels["le"])
                    per = buckets.setdefault(route, {})
                    per[le] = per.get(le, 0.0) + s.value
        with self._lock:
            for route, total in requests.items():
                series = self._series.setdefault(route, deque(maxlen=KEEP))
                series.append(_Sample(at, total, errors.get(route, 0.0), buckets.get(route, {})))

    def rates(self, route: str) -> list[Rate]:
        """The route's throughput, error rate and p50/p99 between consecutive scrapes."""
        with self._lock:
            samples = list(self._series.get(route, ()))
        out = []
        for a, b in itertools.pairwise(samples):
            seconds = b.at - a.at
            done = b.requests - a.requests
            if seconds <= 0 or done < 0:  # the server restarted: its counters began again
                continue
            p50 = quantile(0.5, a.buckets, b.buckets)
            p99 = quantile(0.99, a.buckets, b.buckets)
            out.append(
                Rate(
                    at=b.at,
                    rps=done / seconds,
                    error_rate=(b.errors - a.errors) / done if done else 0.0,
                    p50_ms=None if p50 is None else p50 * 1000,
                    p99_ms=None if p99 is None else p99 * 1000,
                )
            )
        return out
