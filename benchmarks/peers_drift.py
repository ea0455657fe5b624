"""The ``drift`` section of ``make bench-peers``: Keel's drift monitor beside Evidently's
data-drift preset and a plain loop of ``scipy.stats.ks_2samp``.

Data
    ``bench_monitoring.numeric_table``: normal and heavy-tailed floats, float32 scores and
    integer counts, 100 features; the current table moves every third feature by
    ``--drift-shift`` (the same shift bench_monitoring uses), the rest are fresh draws of the
    reference's law. Both tables go to Parquet for the peers; nobody's reading is timed.

What is timed
    Keel: ``DriftDetector(false_alert_rate=alpha).fit(reference)`` then ``.score(current)``,
    what bench_monitoring times (KS with its p-value, PSI, Wasserstein and Jensen–Shannon per
    feature, against calibrated alert levels), on its default threads (one per core): a
    fresh detector and its first window each repeat (that score also works out the alert
    levels for the window's size), then later windows on the last detector, as a running
    monitor scores them (bench_monitoring's figure); medians of ``--drift-repeat``.
    scipy: ``ks_2samp`` on each column pair, flagged at p < alpha, median of as many
    repeats. Evidently: ``Dataset.from_pandas`` of both tables and
    ``Report([DataDriftPreset(method="ks", threshold=alpha)]).run``, once (it is slow); its
    KS is scipy's ``ks_2samp`` too, flagged at p <= alpha.

Two rows per peer: Keel's fit + first score (both sides start from the raw tables), and
Keel's later scores (the reference fitted once, as a monitor runs; the peers have no such
step and redo their whole work for every window). Notes say which columns each side flags
and how they differ: Keel's alert levels hold the false-alert rate for discrete features
too, where KS p-values (which assume no ties) are conservative, so borderline columns may
differ.

Evidently runs in its own process under a memory cap and a time limit; if it cannot finish
the full table it is retried on a quarter of the rows (three tries), Keel is timed again at
the size it finished, and the note extrapolates Evidently linearly to the full size.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench_monitoring import numeric_table
from keel.monitoring import DriftDetector
from peers_common import Row, peer_python, run_peer, version

SECTION = "drift"
# Evidently 0.7 imports a pandas internal that pandas 3 removed, so it gets pandas 2.3.
PINS = {
    "evidently": [
        "evidently==0.7.23",
        "numpy==2.4.6",
        "pandas==2.3.3",
        "scipy==1.17.1",
        "pyarrow==26.0.1",
    ],
    "scipy": ["scipy==1.17.1", "numpy==2.4.6", "pyarrow==26.0.1"],
}
PEER_ENV = {"DO_NOT_TRACK": "1"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("drift (Keel's drift monitor beside Evidently and scipy)")
    g.add_argument("--drift-features", type=int, default=100, help="numeric features")
    g.add_argument(
        "--drift-rows", type=int, default=1_000_000, help="rows of each table (÷10 with --quick)"
    )
    g.add_argument("--drift-shift", type=float, default=0.3, help="shift of every third feature")
    g.add_argument(
        "--drift-alpha",
        type=float,
        default=0.01,
        help="per-feature false-alert rate (Keel) and p-value threshold (peers)",
    )
    g.add_argument(
        "--drift-repeat", type=int, default=3, help="repeats of Keel and of the scipy loop"
    )
    g.add_argument("--drift-peers", default="evidently,scipy", help="peers to run, comma-separated")
    g.add_argument(
        "--drift-peer-timeout",
        type=float,
        default=900,
        help="seconds Evidently may take before it is tried on fewer rows",
    )
    g.add_argument(
        "--drift-peer-mem-gib",
        type=float,
        default=18,
        help="address-space cap on Evidently's process",
    )


@dataclass(frozen=True, slots=True)
class KeelDrift:
    """Keel's median seconds, what it flagged and its KS statistics. ``fit_s`` and
    ``first_score_s``: a fresh detector, its first window (which also works out the alert
    levels for the window's size); ``score_s``: later windows of that size, as a running
    monitor scores them."""

    rows: int
    fit_s: float
    first_score_s: float
    score_s: float
    flagged: list[str]
    statistic: dict[str, float]

    @property
    def total_s(self) -> float:
        return self.fit_s + self.first_score_s


def _keel(reference: pa.Table, current: pa.Table, alpha: float, repeat: int) -> KeelDrift:
    """``repeat`` times: fit a fresh detector and score the window; then score it ``repeat``
    more times on the last detector. The medians."""
    fits, firsts, scores = [], [], []
    detector = report = None
    for _ in range(repeat):
        detector = None
        gc.collect()  # one repeat's sorted reference is gone before the next is built
        detector = DriftDetector(false_alert_rate=alpha)
        t0 = time.perf_counter()
        detector.fit(reference)
        t1 = time.perf_counter()
        report = detector.score(current)
        fits.append(t1 - t0)
        firsts.append(time.perf_counter() - t1)
    assert detector is not None and report is not None
    for _ in range(repeat):
        t0 = time.perf_counter()
        detector.score(current)
        scores.append(time.perf_counter() - t0)
    return KeelDrift(
        current.num_rows,
        statistics.median(fits),
        statistics.median(firsts),
        statistics.median(scores),
        report.drifted,
        {f.feature: f.value for f in report.features},
    )


def _agreement(keel: list[str], other: list[str], peer: str, shifted: set[str]) -> str:
    """Which columns each side flags, against the ones that were shifted."""
    k, o = set(keel), set(other)

    def tally(cols: set[str]) -> str:
        extra = sorted(cols - shifted, key=_order)
        text = f"{len(cols & shifted)}/{len(shifted)} shifted"
        return text + (f" + {', '.join(extra)}" if extra else "")

    if k == o:
        return f"same {len(k)} columns flagged ({tally(k)})"
    only_k, only_o = sorted(k - o, key=_order), sorted(o - k, key=_order)
    parts = [f"flagged: Keel {len(k)} ({tally(k)}), {peer} {len(o)} ({tally(o)})"]
    if only_k:
        parts.append(f"only Keel: {', '.join(only_k)}")
    if only_o:
        parts.append(f"only {peer}: {', '.join(only_o)}")
    return "; ".join(parts)


def _order(name: str) -> int:
    return int(name[1:])


def _threads() -> int:
    """The cores this process may use: the threads Keel's detector starts by default."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _scipy(args: argparse.Namespace, tmp: Path, keel: KeelDrift, shifted: set[str]) -> list[Row]:
    """The ``ks_2samp`` loop on the same tables, and its two rows beside Keel."""
    python = peer_python("scipy", PINS["scipy"])
    res = run_peer(
        python,
        "scipy_ks_loop.py",
        str(tmp / "reference.parquet"),
        str(tmp / "current.parquet"),
        str(args.drift_alpha),
        str(args.drift_repeat),
    )
    peer = f"scipy {res['version']} ks_2samp loop"
    gap = max(abs(keel.statistic[n] - d) for n, d in res["statistic"].items())
    print(
        f"    scipy loop: {res['seconds']:.1f} s, {len(res['flagged'])} flagged; "
        f"largest |KS Keel - scipy| {gap:.1e}",
        flush=True,
    )
    agree = _agreement(keel.flagged, res["flagged"], "scipy", shifted)
    note = (
        f"{agree}; KS statistics agree to {gap:.1e}; scipy single-threaded, Keel on "
        f"{_threads()} threads (its default, one per core); scipy at p < {args.drift_alpha:g}"
    )
    return _rows(args, keel, peer, res["seconds"], 4.0, note)


def _rows(
    args: argparse.Namespace, keel: KeelDrift, peer: str, peer_s: float, goal: float, note: str
) -> list[Row]:
    size = f"{args.drift_features} features × {keel.rows:,} rows"
    return [
        Row(
            SECTION,
            f"drift, {size}: fit + first score",
            "s",
            keel.total_s,
            peer,
            peer_s,
            goal=goal,
            note=(
                f"both sides from the raw tables: Keel fit {keel.fit_s:.2f} s + first score "
                f"{keel.first_score_s:.2f} s (alert levels for the window's size included); "
                f"{note}"
            ),
        ),
        Row(
            SECTION,
            f"drift, {size}: score, reference fitted once",
            "s",
            keel.score_s,
            peer,
            peer_s,
            goal=goal,
            note=(
                f"a running monitor: reference fitted once, later windows of this size "
                f"(Keel's fit and first score not counted); the peer has no fit step and "
                f"redoes its whole work per window; {note}"
            ),
        ),
    ]


def _evidently(
    args: argparse.Namespace,
    tmp: Path,
    reference: pa.Table,
    current: pa.Table,
    keel: KeelDrift,
    shifted: set[str],
) -> list[Row]:
    """Evidently on the full tables, else on a quarter of the rows, and so on (three tries)."""
    python = peer_python("evidently", PINS["evidently"])
    peer = f"Evidently {version(python, 'evidently')} (DataDriftPreset)"
    full = reference.num_rows
    size, failures = full, []
    res: dict[str, Any] = {}
    for _ in range(3):
        cfg = {
            "reference": str(tmp / "reference.parquet"),
            "current": str(tmp / "current.parquet"),
            "rows": size,
            "method": "ks",
            "threshold": args.drift_alpha,
            "mem_gib": args.drift_peer_mem_gib,
        }
        path = tmp / f"evidently-{size}.json"
        path.write_text(json.dumps(cfg))
        t = time.perf_counter()
        try:
            res = run_peer(
                python,
                "evidently_drift.py",
                str(path),
                timeout=args.drift_peer_timeout,
                env=PEER_ENV,
            )
        except subprocess.TimeoutExpired:
            why = f"{size:,} rows within {args.drift_peer_timeout:.0f} s"
        except RuntimeError as exc:
            why = f"{size:,} rows ({exc}, after {time.perf_counter() - t:.0f} s)"
        else:
            if "error" not in res:
                break
            why = f"{size:,} rows ({res['error']}, after {time.perf_counter() - t:.0f} s)"
        print(f"    Evidently did not finish {why}", flush=True)
        failures.append(why)
        res = {}
        size //= 4
        gc.collect()
    if not res:
        print(f"    Evidently finished no size: {'; '.join(failures)}", flush=True)
        return []
    print(
        f"    Evidently, {size:,} rows: {res['seconds']:.1f} s, {len(res['flagged'])} flagged "
        f"(methods {', '.join(res['methods'])})",
        flush=True,
    )
    extra = ""
    at = keel
    if size < full:
        # Compared at the size Evidently finished; the full-size figure is an estimate.
        at = _keel(reference.slice(0, size), current.slice(0, size), args.drift_alpha, 1)
        estimate = res["seconds"] * full / size
        extra = (
            f"; Evidently did not finish {'; '.join(failures)}: both measured at {size:,} "
            f"rows; EXTRAPOLATED linearly to {full:,} rows Evidently ≈ {estimate:,.0f} s, "
            f"{estimate / keel.total_s:.0f}× Keel's full-size fit + first score and "
            f"{estimate / keel.score_s:.0f}× its later scores (a rough estimate: fixed costs "
            "per column inflate it, sorts growing faster than the rows deflate it)"
        )
    agree = _agreement(at.flagged, res["flagged"], "Evidently", shifted)
    methods = ", ".join(res["methods"])
    note = (
        f"{agree}; Evidently's test per column: {methods} (scipy ks_2samp) at p <= "
        f"{args.drift_alpha:g}, single-threaded (Keel on {_threads()}), from pandas "
        f"{res['pandas']} frames{extra}"
    )
    return _rows(args, at, peer, res["seconds"], 100.0, note)


def run(args: argparse.Namespace) -> list[Row]:
    """Build the tables, time Keel here and the peers in their venvs, and return the rows."""
    n = args.drift_rows // 10 if args.quick else args.drift_rows
    peers = {p.strip() for p in args.drift_peers.split(",") if p.strip()}
    t = time.perf_counter()
    reference = numeric_table(args.drift_features, n, seed=1)
    current = numeric_table(args.drift_features, n, seed=2, shift=args.drift_shift)
    shifted = {f"f{i}" for i in range(args.drift_features) if i % 3 == 0}
    print(
        f"    {args.drift_features} features × {n:,} rows, {len(shifted)} shifted by "
        f"{args.drift_shift:g}, built in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="keel-peers-drift-") as d:
        tmp = Path(d)
        pq.write_table(reference, tmp / "reference.parquet")
        pq.write_table(current, tmp / "current.parquet")
        keel = _keel(reference, current, args.drift_alpha, args.drift_repeat)
        print(
            f"    Keel: fit {keel.fit_s:.2f} s + first score {keel.first_score_s:.2f} s, "
            f"later scores {keel.score_s:.2f} s, {len(keel.flagged)} flagged",
            flush=True,
        )
        if "evidently" in peers:
            rows += _evidently(args, tmp, reference, current, keel, shifted)
        if "scipy" in peers:
            rows += _scipy(args, tmp, keel, shifted)
    return rows
