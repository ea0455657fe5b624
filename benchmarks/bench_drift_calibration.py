"""Drift alerts on fresh healthy data: how often a fitted DriftDetector alerts on windows
drawn from the reference's own distribution (but not from its rows).

Run: ``.venv/bin/python benchmarks/bench_drift_calibration.py [--refs 4] [--windows 300]
[--ordered]``. For each reference size, ``--refs`` references (one seed each) of seven
features — continuous (normal, lognormal), integer counts (Poisson 3), hours (0–23), a 0/1
number, a 5-level category and a rare boolean flag — and for each window size ``--windows``
fresh windows per reference. Prints per-feature false-alert rates against the target, then
the share of windows of 60 mixed features (40 of them in groups of five near-copies) that alert on
at least one feature, with ``window_false_alert_rate`` set (and, for comparison, with every
feature at Šidák's rate for 60 independent ones).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

from keel.monitoring import DriftDetector

FEATURES = ["normal", "lognormal", "counts", "hour", "binary", "category", "flag"]
LEVELS = np.array(["a", "b", "c", "d", "e"])


def mixed(rng: np.random.Generator, n: int) -> pa.Table:
    """One row per event; the columns are independent."""
    return pa.table(
        {
            "normal": rng.normal(0, 1, n),
            "lognormal": rng.lognormal(0, 1, n),
            "counts": rng.poisson(3, n),
            "hour": rng.integers(0, 24, n),
            "binary": (rng.random(n) < 0.3).astype(np.int64),
            "category": LEVELS[rng.choice(5, n, p=[0.4, 0.25, 0.2, 0.1, 0.05])],
            "flag": rng.random(n) < 0.1,
        }
    )


def wide(rng: np.random.Generator, n: int, features: int = 60) -> pa.Table:
    """``features`` columns of mixed shapes: the first third independent, the rest in groups
    of five near-copies of one variable (correlation ~0.99)."""
    columns: dict[str, np.ndarray] = {}
    solo = features // 3
    groups = rng.normal(0, 1, (n, -(-(features - solo) // 5)))
    for i in range(features):
        if i < solo:
            x = rng.normal(0, 1, n)
        else:
            x = groups[:, (i - solo) // 5] + 0.1 * rng.normal(0, 1, n)
        kind = i % 5
        if kind == 0:
            col = x
        elif kind == 1:
            col = np.exp(x)
        elif kind == 2:
            col = np.floor(2 * x + 6).clip(0, 12)  # integer counts
        elif kind == 3:
            col = LEVELS[np.digitize(x, [-1, 0, 0.8, 1.5])]
        else:
            col = (x > 0.5).astype(np.int64)
        columns[f"f{i}"] = col
    return pa.table(columns)


def feature_rates(args: argparse.Namespace) -> None:
    print("| reference rows | window rows | " + " | ".join(FEATURES) + " |")
    print("|---|---|" + "---|" * len(FEATURES))
    totals = np.zeros(len(FEATURES))
    count = 0
    for n in args.reference_rows:
        sizes = [m for m in args.window_rows if m <= n]
        alerts = {m: np.zeros(len(FEATURES)) for m in sizes}
        for ref in range(args.refs):
            rng = np.random.default_rng([n, ref])
            det = DriftDetector(
                categorical=["category"], false_alert_rate=args.rate, ordered=args.ordered
            ).fit(mixed(rng, n))
            for m in sizes:
                for _ in range(args.windows):
                    report = det.score(mixed(rng, m)).by_feature()
                    alerts[m] += [report[f].drifted for f in FEATURES]
        for m in sizes:
            rate = alerts[m] / (args.refs * args.windows)
            totals += alerts[m]
            count += args.refs * args.windows
            cells = " | ".join(f"{100 * r:.2f}%" for r in rate)
            print(f"| {n:,} | {m:,} | {cells} |")
    cells = " | ".join(f"{100 * r:.2f}%" for r in totals / count)
    print(f"| all | all | {cells} |")
    print(f"\ntarget {100 * args.rate:.2f}% per feature; {count:,} windows per feature in all\n")


def window_rates(args: argparse.Namespace) -> None:
    """Windows of 60 features alerting on any of them: at the per-feature rate that
    ``window_false_alert_rate`` implies, and at Šidák's rate for 60 independent features."""
    k, rate = 60, args.window_rate
    sidak = 1 - (1 - rate) ** (1 / k)
    print(
        f"| reference rows | window rows | per-feature rate (Šidák {100 * sidak:.3f}%) "
        "| windows alerting | with Šidák's rate | target |"
    )
    print("|---|---|---|---|---|---|")
    categorical = [f"f{i}" for i in range(3, k, 5)]
    for n in args.reference_rows:
        sizes = [m for m in args.window_rows if m <= n]
        hits = {m: np.zeros(2) for m in sizes}
        implied = []
        for ref in range(args.refs):
            rng = np.random.default_rng([n, ref, 1])
            reference = wide(rng, n, k)
            det = DriftDetector(
                categorical=categorical, window_false_alert_rate=rate, ordered=args.ordered
            ).fit(reference)
            plain = DriftDetector(
                categorical=categorical, false_alert_rate=sidak, ordered=args.ordered
            ).fit(reference)
            implied.append(det.feature_false_alert_rate_)
            for m in sizes:
                for _ in range(args.windows):
                    features = det.score(wide(rng, m, k)).features
                    hits[m] += [
                        any(f.drifted for f in features),
                        any(f.value > plain.threshold(f.feature, m) for f in features),
                    ]
        for m in sizes:
            share = 100 * hits[m] / (args.refs * args.windows)
            print(
                f"| {n:,} | {m:,} | {100 * np.mean(implied):.3f}% | {share[0]:.2f}% | "
                f"{share[1]:.2f}% | {100 * rate:.2f}% |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--refs", type=int, default=4, help="references (seeds) per size")
    ap.add_argument("--windows", type=int, default=300, help="fresh windows per reference")
    ap.add_argument("--rate", type=float, default=0.01, help="false_alert_rate")
    ap.add_argument("--window-rate", type=float, default=0.05, help="window_false_alert_rate")
    ap.add_argument("--reference-rows", type=int, nargs="+", default=[5_000, 20_000, 200_000])
    ap.add_argument("--window-rows", type=int, nargs="+", default=[200, 500, 2_000, 5_000])
    ap.add_argument("--ordered", action="store_true", help="fit with ordered=True")
    ap.add_argument("--part", choices=["feature", "window", "both"], default="both")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.part != "window":
        feature_rates(args)
    if args.part != "feature":
        window_rates(args)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
