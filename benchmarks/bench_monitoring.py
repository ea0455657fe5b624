"""Drift scoring: fit a DriftDetector on a reference and score a window of the same size.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_monitoring.py [--features 100]
[--rows 1000000] [--workers N]``. Numeric features (float64, float32 and integer columns, a
third of them shifted in the window), then a smaller run of categorical and of vector
(embedding) columns. Prints the median seconds of ``--repeat`` fits and scores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from keel.monitoring import DriftDetector


def numeric_table(features: int, rows: int, seed: int, shift: float = 0.0) -> pa.Table:
    """A mix of what numeric features look like: normal and heavy-tailed floats, float32
    scores and integer counts (many ties); every third feature moves by ``shift``."""
    rng = np.random.default_rng(seed)
    columns = {}
    for i in range(features):
        s = shift if i % 3 == 0 else 0.0
        kind = i % 4
        if kind == 0:
            col = rng.normal(s, 1.0, rows)
        elif kind == 1:
            col = rng.lognormal(s, 1.0, rows)
        elif kind == 2:
            col = rng.normal(s, 1.0, rows).astype(np.float32)
        else:
            col = rng.poisson(20 * (1 + s), rows)
        columns[f"f{i}"] = col
    return pa.table(columns)


def categorical_table(features: int, rows: int, seed: int, shift: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    levels = pa.array([f"c{k}" for k in range(20)])
    p = np.linspace(1, 2 + shift, 20)
    codes = {f"c{i}": rng.choice(20, rows, p=p / p.sum()) for i in range(features)}
    return pa.table({name: levels.take(c) for name, c in codes.items()})


def vector_table(features: int, rows: int, dim: int, seed: int, shift: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            f"v{i}": pa.FixedSizeListArray.from_arrays(
                pa.array((rng.normal(0, 1, (rows, dim)) + shift).ravel()), dim
            )
            for i in range(features)
        }
    )


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls, and the last result."""
    seconds, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), result


def run(label: str, make: Callable[..., pa.Table], args: argparse.Namespace, **kw) -> None:
    reference, window = make(seed=1, **kw), make(seed=2, shift=0.3, **kw)
    detector = DriftDetector(
        categorical=[n for n in reference.column_names if n.startswith("c")],
        workers=args.workers,
    )
    fit_s, _ = timed(lambda: detector.fit(reference), args.repeat)
    score_s, report = timed(lambda: detector.score(window), args.repeat)
    cells = reference.num_columns
    print(
        f"| {label} | {cells} × {reference.num_rows:,} | {fit_s:.2f} | {score_s:.2f} | "
        f"{1e3 * score_s / cells:.1f} | {len(report.drifted)}/{cells} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--categorical", type=int, default=10, help="categorical features")
    ap.add_argument("--vectors", type=int, default=2, help="vector (embedding) features")
    ap.add_argument("--vector-rows", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=None, help="default: one per core")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print("| columns | features × rows | fit s | score s | score ms/feature | drifted |")
    print("|---|---|---|---|---|---|")
    run("numeric", numeric_table, args, features=args.features, rows=args.rows)
    if args.categorical:
        run("categorical", categorical_table, args, features=args.categorical, rows=args.rows)
    if args.vectors:
        run(
            "vector (dim 16)",
            vector_table,
            args,
            features=args.vectors,
            rows=args.vector_rows,
            dim=16,
        )


if __name__ == "__main__":
    main()
