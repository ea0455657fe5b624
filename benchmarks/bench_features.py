"""Feature store benchmarks: online lookups, the HTTP endpoint, the materializer, training sets.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_features.py [--only NAME]``
(names: lookup, http, materialize, training). Prints medians and p99s from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from keel.features import Aggregate, Entity, FeatureStore, FeatureView, Last, Source
from keel.log import Topic, open_log

REDIS = "redis://127.0.0.1:6379/0"
H, D = timedelta(hours=1), timedelta(days=1)
FIELDS = {"ts": "timestamp", "user_id": "int64", "amount": "float64", "country": "string"}


def ten_features() -> list:
    return [
        Aggregate(None, "count", H),
        Aggregate(None, "count", D),
        Aggregate(None, "count", 7 * D),
        Aggregate("amount", "sum", H),
        Aggregate("amount", "sum", D),
        Aggregate("amount", "mean", 7 * D),
        Aggregate("amount", "max", D),
        Aggregate("amount", "min", D),
        Aggregate("amount", "last", D),
        Last("country"),
    ]


def view(features: list | None = None) -> FeatureView:
    return FeatureView(
        "u",
        Entity("user", "user_id"),
        Source("pay"),
        features or ten_features(),
        tile=timedelta(minutes=15),
    )


def fill_log(url: str, n: int, users: int, days: float, end: datetime, seed: int = 0) -> None:
    """``n`` payments of ``users`` users over the ``days`` before ``end``, in time order."""
    log = open_log(url)
    log.create_topic(
        Topic("pay", FIELDS, event_time="ts", key="user_id", partitions=4), exist_ok=True
    )
    rng = np.random.default_rng(seed)
    t_end = int(end.timestamp() * 1e6)
    span = int(days * 86400e6)
    countries = pa.array(["DE", "FR", "US", "GB"])
    for i in range(0, n, 200_000):
        m = min(200_000, n - i)
        ts = t_end - span + (np.arange(i, i + m, dtype=np.int64) * (span // n))
        log.append(
            "pay",
            pa.table(
                {
                    "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                    "user_id": rng.integers(0, users, m),
                    "amount": np.round(rng.gamma(2, 20, m), 2),
                    "country": countries.take(rng.integers(0, 4, m)),
                }
            ),
        )
    log.close()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_lookup(tmp: Path, redis: str) -> None:
    now = datetime.now(UTC)
    url = f"sqlite:///{tmp / 'lookup.db'}"
    fill_log(url, 500_000, 50_000, 7, now)
    log = open_log(url)
    rng = np.random.default_rng(1)
    rows = []
    for label, online in (
        ("memory", "memory://"),
        ("redis", f"{redis}?prefix=bench-{uuid.uuid4().hex[:6]}"),
    ):
        store = FeatureStore(log, views=[view()], online=online, offline=tmp / "off")
        store.materialize()
        for n_keys, reps in ((1, 20_000 if label == "memory" else 5_000), (256, 1_000)):
            lat = []
            for _ in range(reps):
                keys = rng.integers(0, 50_000, n_keys).tolist()
                t = time.perf_counter_ns()
                store.get_online(["u"], keys)
                lat.append((time.perf_counter_ns() - t) / 1e3)
            rows.append((label, n_keys, pct(lat, 50), pct(lat, 99)))
        if label == "redis":
            store.online.clear("u")
        store.online.close()
    print("online lookup, 10 features, 50k users with 7 days of events, read at now")
    for label, n_keys, p50, p99 in rows:
        print(f"  {label:6s} {n_keys:4d} key(s): p50 {p50:8.1f} us   p99 {p99:8.1f} us")


def bench_materialize(tmp: Path, redis: str) -> None:
    now = datetime.now(UTC)
    url = f"sqlite:///{tmp / 'mat.db'}"
    fill_log(url, 1_000_000, 100_000, 7, now)
    log = open_log(url)
    print("materializer, 1M events of 100k users, 10 features")
    for label, online in (
        ("memory", "memory://"),
        ("sqlite", f"sqlite:///{tmp / 'online.db'}"),
        ("redis", f"{redis}?prefix=bench-{uuid.uuid4().hex[:6]}"),
    ):
        store = FeatureStore(log, views=[view()], online=online, offline=tmp / "off")
        t = time.perf_counter()
        stats = store.materialize()["u"]
        s = time.perf_counter() - t
        print(f"  {label:6s} {stats.events / s / 1e3:8.0f} k events/s ({s:.2f} s)")
        if label == "redis":
            store.online.clear("u")
        store.online.close()


def bench_training(tmp: Path, events: int, labels: int) -> None:
    now = datetime.now(UTC)
    url = f"sqlite:///{tmp / 'train.db'}"
    fill_log(url, events, 100_000, 30, now)
    feats = [
        Aggregate(None, "count", H),
        Aggregate("amount", "sum", D),
        Aggregate("amount", "mean", 7 * D),
        Aggregate("amount", "max", D),
        Aggregate(None, "count", 7 * D),
    ]
    store = FeatureStore(open_log(url), views=[view(feats)], offline=tmp / "train-off")
    t = time.perf_counter()
    store.land()
    land_s = time.perf_counter() - t
    rng = np.random.default_rng(2)
    t_end = int(now.timestamp() * 1e6)
    table = pa.table(
        {
            "user_id": rng.integers(0, 100_000, labels),
            "ts": pa.array(
                t_end - rng.integers(0, 23 * 86400 * 10**6, labels), pa.timestamp("us", tz="UTC")
            ),
        }
    )
    t = time.perf_counter()
    out = store.training_set(table, ["u"], land=False)
    s = time.perf_counter() - t
    print(f"training set: {labels:,} label rows over {events:,} events, 5 windowed features")
    print(
        f"  point-in-time join {s:.1f} s ({out.num_rows:,} rows); landing the log as "
        f"Parquet took {land_s:.1f} s before it"
    )


SERVER = textwrap.dedent(
    """
    import sys, tempfile
    import uvicorn
    sys.path.insert(0, sys.argv[3])
    from bench_features import view
    from keel.features import FeatureStore
    from keel.features.http import create_app
    from keel.log import open_log
    store = FeatureStore(open_log(sys.argv[1]), views=[view()], offline=tempfile.mkdtemp())
    store.materialize()
    uvicorn.run(create_app(store), host="127.0.0.1", port=int(sys.argv[2]),
                log_level="warning", access_log=False)
    """
)


async def _client(port: int, body: bytes, stop: float, lat: list[float]) -> int:
    # A minimal keep-alive HTTP/1.1 client: on a 2-core machine the load generator must cost
    # far less CPU per request than the server it measures, which general clients do not.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        b"POST /v1/features HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json"
        b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    done = 0
    while time.perf_counter() < stop:
        t = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        payload = await reader.readexactly(length)
        lat.append((time.perf_counter() - t) * 1e3)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(payload.decode())
        done += 1
    writer.close()
    return done


async def _load(port: int, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    rng = np.random.default_rng(concurrency)
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    bodies = [
        json.dumps({"features": ["u"], "keys": [int(k)]}).encode()
        for k in rng.integers(0, 50_000, concurrency)
    ]
    t = time.perf_counter()
    counts = await asyncio.gather(*(_client(port, b, stop, lat) for b in bodies))
    return sum(counts) / (time.perf_counter() - t), lat


def bench_http(tmp: Path) -> None:
    now = datetime.now(UTC)
    url = f"sqlite:///{tmp / 'http.db'}"
    fill_log(url, 500_000, 50_000, 7, now)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, url, str(port), here],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("feature server did not start") from None
                time.sleep(0.2)
        asyncio.run(_load(port, 4, 1.0))  # warm up
        print("HTTP POST /v1/features, 1 key x 10 features, keep-alive, one server process")
        for concurrency in (4, 8, 16, 32):
            rps, lat = asyncio.run(_load(port, concurrency, 5.0))
            print(
                f"  concurrency {concurrency:3d}: {rps:7.0f} req/s   p50 {pct(lat, 50):6.2f} ms"
                f"   p99 {pct(lat, 99):6.2f} ms"
            )
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=["lookup", "http", "materialize", "training"])
    ap.add_argument("--redis", default=REDIS)
    ap.add_argument("--events", type=int, default=10_000_000, help="training-set events")
    ap.add_argument("--labels", type=int, default=1_000_000, help="training-set label rows")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only in (None, "lookup"):
            bench_lookup(tmp, args.redis)
        if args.only in (None, "http"):
            bench_http(tmp)
        if args.only in (None, "materialize"):
            bench_materialize(tmp, args.redis)
        if args.only in (None, "training"):
            bench_training(tmp, args.events, args.labels)


if __name__ == "__main__":
    main()
