"""Log throughput: 1M events of 10 fields appended in batches of 10k, then read back.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_log.py [--events N] [--redis URL]``.
Prints events/s for append and for one consumer reading everything back, per backend.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from keel.log import Topic, open_log

FIELDS = {
    "ts": "timestamp",
    "user_id": "int64",
    "item_id": "int64",
    "session_id": "int64",
    "amount": "float64",
    "quantity": "int32",
    "score": "float32",
    "event_type": "string",
    "country": "string",
    "is_mobile": "bool",
}


def make_batches(n_events: int, batch: int, seed: int = 0) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2026-11-01T00:00:00", "us").astype(np.int64)
    kinds = pa.array(["view", "cart", "purchase"])
    countries = pa.array(["DE", "FR", "US", "GB", "NL", "ES"])
    out = []
    for start in range(0, n_events, batch):
        n = min(batch, n_events - start)
        ts = t0 + (start + np.arange(n)) * 1000
        out.append(
            pa.table(
                {
                    "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                    "user_id": rng.integers(0, 100_000, n),
                    "item_id": rng.integers(0, 50_000, n),
                    "session_id": rng.integers(0, 1_000_000, n),
                    "amount": rng.gamma(2.0, 20.0, n),
                    "quantity": rng.integers(1, 5, n).astype(np.int32),
                    "score": rng.random(n, dtype=np.float32),
                    "event_type": kinds.take(rng.integers(0, 3, n)),
                    "country": countries.take(rng.integers(0, 6, n)),
                    "is_mobile": rng.random(n) < 0.6,
                }
            )
        )
    return out


def run(url: str, batches: list[pa.Table], partitions: int) -> dict[str, float]:
    log = open_log(url)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    log.create_topic(Topic(name, FIELDS, event_time="ts", key="user_id", partitions=partitions))
    n = sum(b.num_rows for b in batches)
    t = time.perf_counter()
    for b in batches:
        log.append(name, b)
    append_s = time.perf_counter() - t
    consumer = log.consumer("bench", name)
    t = time.perf_counter()
    seen = sum(batch.num_rows for batch in consumer)
    read_s = time.perf_counter() - t
    if seen != n:
        raise SystemExit(f"{url}: read back {seen} events, appended {n}")
    stats = log.stats(name)
    log.delete_topic(name)
    log.close()
    return {
        "append_eps": n / append_s,
        "read_eps": n / read_s,
        "append_s": append_s,
        "read_s": read_s,
        "mb": stats.bytes / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    batches = make_batches(args.events, args.batch)
    print(
        f"{args.events:,} events x {len(FIELDS)} fields, batches of {args.batch:,}, "
        f"{args.partitions} partitions, median of {args.repeat} runs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'log.db'}"}
        if args.redis:
            urls["redis"] = f"{args.redis}?prefix=bench-{uuid.uuid4().hex[:6]}"
        for label, url in urls.items():
            runs = [run(url, batches, args.partitions) for _ in range(args.repeat)]
            med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            print(
                f"{label:7s} append {med['append_eps'] / 1e6:6.2f} M events/s "
                f"({med['append_s']:.2f} s)   read {med['read_eps'] / 1e6:6.2f} M events/s "
                f"({med['read_s']:.2f} s)   stored {med['mb']:.0f} MB"
            )


if __name__ == "__main__":
    main()
