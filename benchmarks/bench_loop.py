"""The closed loop's recovery on the demo shop, over several seeds: the demo end to end (its
drift in step 11, the unattended loop in step 14), and per run the hours from the alert to the
promoted version and that version's realized loss against the healthy champion's.

Run: ``.venv/bin/python benchmarks/bench_loop.py [--seeds 7,8,9] [--as-test]``: the defaults
are ``make demo``'s shop; ``--as-test`` runs the demo test's (tests/test_demo.py: 3,000 users,
200 items, one live second at 500 events/s, quick windows).
Goals (issue: the closed loop): a new version serving within 12 shop hours of the alert, and
its realized loss at most 2x the healthy level.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from keel.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="7,8,9")
    parser.add_argument("--as-test", action="store_true", help="the demo test's configuration")
    args = parser.parse_args()
    shop: dict[str, Any] = {"days": 14.0, "users": 5_000}
    if args.as_test:
        shop.update(users=3_000, items=200, live_seconds=1.0, live_rate=500, quick=True)
    ratios = []
    print(
        f"demo shop of {shop['users']:,} users over {shop['days']:g} days"
        f"{' (the demo test configuration)' if args.as_test else ''}; per seed:"
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = run_demo(
                **shop,
                keep=Path(tmp) / "demo",
                console=Console(file=io.StringIO(), width=120),
                seed=seed,
            )
        healthy, after = result.realized_before, result.loop_realized_after
        if not result.loop_promoted or healthy is None or after is None:
            print(f"  seed {seed}: no version promoted ({', '.join(result.loop_steps)})")
            continue
        ratios.append(after / healthy)
        print(
            f"  seed {seed}: {result.loop_promoted} promoted {result.loop_promoted_hours:.1f} h "
            f"after the alert; realized logloss {after:.4f} over {result.loop_realized_rows} "
            f"payments vs healthy {healthy:.4f} ({after / healthy:.2f}x; the drifted champion "
            f"{result.realized_after:.4f}); demo {time.perf_counter() - started:.0f} s"
        )
    if ratios:
        print(
            f"  recovered / healthy: median {statistics.median(ratios):.2f}x, worst "
            f"{max(ratios):.2f}x over {len(ratios)} runs (goal <= 2x)"
        )


if __name__ == "__main__":
    main()
