"""A materializer killed (SIGKILL) at random points and restarted ends with the same online
state as an uninterrupted run: no event lost, none counted twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from keel.features import FeatureStore
from keel.log import Topic, open_log

VIEW = textwrap.dedent(
    """
    from datetime import timedelta
    from keel.features import Aggregate, Entity, FeatureView, Last, Source
    view = FeatureView(
        "card", Entity("card", "card_id"), Source("pay", allowed_lateness=timedelta(minutes=5)),
        [Aggregate(None, "count", timedelta(hours=1)),
         Aggregate("amount", "sum", timedelta(days=1)),
         Aggregate("amount", "max", timedelta(hours=6)), Last("country")],
        tile=timedelta(minutes=10))
    """
)


def _view():
    scope: dict = {}
    exec(VIEW, scope)
    return scope["view"]


def _fill(log_url: str, n: int) -> None:
    log = open_log(log_url)
    log.create_topic(
        Topic(
            "pay",
            {"ts": "timestamp", "card_id": "int64", "amount": "float64", "country": "string"},
            event_time="ts",
            key="card_id",
            partitions=3,
        )
    )
    rng = np.random.default_rng(11)
    t0 = np.datetime64("2026-11-01T00:00:00", "us").astype(np.int64)
    # Mostly in order with some jitter, a few events far too late.
    ts = t0 + np.sort(rng.integers(0, 2 * 86400 * 10**6, n)) + rng.integers(-120, 120, n) * 10**6
    ts[rng.random(n) < 0.01] -= 3600 * 10**6
    for i in range(0, n, 1000):
        sl = slice(i, i + 1000)
        log.append(
            "pay",
            pa.table(
                {
                    "ts": pa.array(ts[sl], pa.timestamp("us", tz="UTC")),
                    "card_id": rng.integers(0, 300, len(ts[sl])),
                    "amount": np.round(rng.gamma(2, 30, len(ts[sl])), 2),
                    "country": pa.array(rng.choice(["DE", "FR", "US"], len(ts[sl]))),
                }
            ),
        )
    log.close()


RUNNER = VIEW + textwrap.dedent(
    """
    import sys, tempfile
    from keel.features import FeatureStore
    from keel.log import open_log
    store = FeatureStore(open_log(sys.argv[1]), views=[view], online=sys.argv[2],
                         offline=tempfile.mkdtemp())
    m = store.materializer("card")
    while m.step(max_records=200).events:
        print("step", flush=True)
    print("done", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_sigkill_then_restart_equals_uninterrupted(tmp_path: Path, request, backend) -> None:
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    _fill(log_url, 12_000)
    if backend == "sqlite":
        online_url = f"sqlite:///{tmp_path / 'online.db'}"
    else:
        online_url = (
            f"{request.getfixturevalue('redis_server')}?prefix="
            f"{request.getfixturevalue('redis_prefix')}"
        )
    rnd = random.Random(5)
    kills = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(60):
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, log_url, online_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        # Let it commit a few steps, then kill it at a random moment, often mid-step.
        lines = [proc.stdout.readline() for _ in range(rnd.randint(1, 4))]
        if b"done\n" in lines or b"" in lines:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
            break
        time.sleep(rnd.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
    else:
        pytest.fail("the materializer never finished")
    assert kills >= 3, f"only {kills} runs were killed"

    log = open_log(log_url)
    crashed = FeatureStore(log, views=[_view()], online=online_url, offline=tmp_path / "o1")
    clean = FeatureStore(log, views=[_view()], online="memory://", offline=tmp_path / "o2")
    clean.materialize()
    assert crashed.online.progress("card").events == 12_000
    assert crashed.online.progress("card").late == clean.online.progress("card").late > 0
    keys = list(range(300))
    at = datetime(2026, 11, 3, 1, tzinfo=UTC)  # a fixed instant after the events
    a = crashed.get_online(["card"], keys, at=at)
    b = clean.get_online(["card"], keys, at=at)
    for name in b.values:
        x, y = np.asarray(a.values[name]), np.asarray(b.values[name])
        if x.dtype == object:
            assert x.tolist() == y.tolist(), name
        else:
            np.testing.assert_allclose(x, y, rtol=1e-9, err_msg=name)
        np.testing.assert_array_equal(a.missing[name], b.missing[name])
    crashed.online.close()
