"""Throughput and p50/p99 between two scrapes of a server's Prometheus metrics."""

from __future__ import annotations

import pytest

from keel.ui.metrics import MetricsSampler


def scrape(requests: float, errors: float, buckets: dict[str, float]) -> str:
    lines = [
        "# TYPE keel_requests counter",
        f'keel_requests_total{{route="fraud",version="fraud@1",status="ok"}} {requests - errors}',
        f'keel_requests_total{{route="fraud",version="fraud@1",status="Overloaded"}} {errors}',
        "# TYPE keel_request_latency_seconds histogram",
    ]
    for le, count in buckets.items():
        lines.append(
            f'keel_request_latency_seconds_bucket{{route="fraud",version="fraud@1",le="{le}"}} '
            f"{count}"
        )
    return "\n".join(lines) + "\n"


def test_rates_come_from_the_difference_between_scrapes() -> None:
    sampler = MetricsSampler("http://127.0.0.1:9")
    sampler.add(scrape(100, 0, {"0.01": 50, "0.1": 100, "+Inf": 100}), at=1000.0)
    assert sampler.rates("fraud") == []  # one scrape: no interval yet
    sampler.add(scrape(300, 2, {"0.01": 150, "0.1": 298, "+Inf": 300}), at=1010.0)
    (rate,) = sampler.rates("fraud")
    assert rate.rps == pytest.approx(20.0) and rate.error_rate == pytest.approx(0.01)
    # 200 requests: 100 under 10 ms, 98 more under 100 ms, 2 over.
    assert rate.p50_ms == pytest.approx(10.0)
    assert 10.0 < rate.p99_ms <= 100.0
    # A restarted server's counters begin again: that interval is no rate.
    sampler.add(scrape(5, 0, {"0.01": 5, "0.1": 5, "+Inf": 5}), at=1020.0)
    assert len(sampler.rates("fraud")) == 1


def test_no_server_is_no_sample() -> None:
    sampler = MetricsSampler("http://127.0.0.1:9", timeout_s=0.5)
    assert sampler.sample() is False and sampler.answering is False
    assert sampler.rates("fraud") == []
