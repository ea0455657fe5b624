"""Continuous fine-tuning of the recommender: what it keeps of a full retrain's quality, and
at what cost, while the shop's tastes drift.

Run: ``.venv/bin/python benchmarks/bench_recommend.py [--users 5000] [--sessions-per-day 2]
[--days 7] [--cycles 6] [--items 2000] [--seed 7]``, or ``--quick`` for a small smoke run
(under a minute). The defaults take about 7 minutes on the 2-core development machine,
nearly all of it in the initial training and the full retrains (each ~45–80 s with the
template's 3-day window, most of it the point-in-time join of the user features); each
extra cycle adds one retrain.

A temporary project (``keel init``'s template) gets a demo shop's catalogue and ``--days`` of
history; ``recommend`` is trained once and aliased champion. Then the shop drifts (one
category trending, new items launched in it) and streams on, and every 30 shop-minutes, for
``--cycles`` refreshes, three arms are compared (:func:`keel.recommend.experiment.run_drift`):

* frozen: the initial version, never refreshed;
* fine-tuned: the fine-tune loop judges the last child on the purchases since it was made
  (promote or reject), then fine-tunes the next one from the served version: only the
  embedding rows the new interactions touch move;
* retrained: the whole model trained from scratch on its window (the template's).

Each arm's version is scored on the purchases of the hour after its refresh (hit rate and
NDCG at 10, exact search over the catalogue), purchase-weighted over the cycles. Refresh
compute is wall time on this machine, one torch thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from keel.config import CONFIG_FILE
from keel.features.definitions import format_duration
from keel.project import Project, init_project
from keel.recommend import FineTuneResult, RecommenderResult
from keel.recommend.experiment import ARMS, DriftResult, run_drift
from keel.shop import Shop

EVERY = timedelta(minutes=30)
HORIZON = timedelta(hours=1)
EVERY_MIN, HORIZON_MIN = int(EVERY.total_seconds() // 60), int(HORIZON.total_seconds() // 60)
TRENDING, WEIGHT, LAUNCH = "games", 4.0, 40
MIN_PURCHASES = 20  # purchases after a child before the loop judges it
START = datetime(2026, 11, 1, tzinfo=UTC)
QUICK = {"users": 3_000, "sessions_per_day": 2.0, "days": 2.0, "cycles": 3, "items": 1_000}

GOAL_RATIO = 0.10  # fine-tune compute at most this share of the retrain's
GOAL_FT_S = 5.0  # one fine-tune over 30 minutes of traffic
GOAL_RECOVERED = 0.80  # share of the retrain's hit-rate gain over frozen


class Clock:
    """Seconds since the benchmark began, for the progress lines on stderr."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {message}", file=sys.stderr, flush=True)


@dataclass
class Refresh:
    """One cycle's refreshes: the fine-tune the loop ran (none while it waited for
    purchases) and the retrain, each with the wall time of the whole call."""

    fine_tune: FineTuneResult | None = None
    fine_tune_s: float = 0.0
    retrain: RecommenderResult | None = None
    retrain_s: float = 0.0


class TimedProject(Project):
    """The project, recording each training and fine-tune that run_drift asks of it, cycle
    by cycle (the loop's step, then the retrain; the results keep their phases' seconds)."""

    clock: Clock
    cycles: list[Refresh]

    def train(self, model: Any, **options: Any) -> Any:
        t0 = time.perf_counter()
        result = super().train(model, **options)
        took = time.perf_counter() - t0
        self.clock.say(f"  trained {result.version.ref}: {len(result.data):,} rows, {took:.1f} s")
        if self.cycles:
            self.cycles[-1].retrain, self.cycles[-1].retrain_s = result, took
            self.cycles.append(Refresh())
        return result

    def fine_tune(self, model: Any, **options: Any) -> FineTuneResult:
        t0 = time.perf_counter()
        result = super().fine_tune(model, **options)
        took = time.perf_counter() - t0
        self.clock.say(
            f"  fine-tuned {result.version.ref} from @{result.parent}: "
            f"{len(result.data):,} interactions, {took:.2f} s (fit {result.seconds['fit']:.2f} s)"
        )
        self.cycles[-1].fine_tune, self.cycles[-1].fine_tune_s = result, took
        return result

    def refreshes(self) -> list[Refresh]:
        return [c for c in self.cycles if c.retrain is not None]


def build(root: Path, args: argparse.Namespace, clock: Clock) -> tuple[TimedProject, Shop, dict]:
    """A project holding the shop's catalogue and history, landed offline, and
    ``recommend@champion`` trained up to the shop's present."""
    init_project(root, name="bench", force=True)
    project = TimedProject.load(root / CONFIG_FILE)
    project.clock, project.cycles = clock, []
    project.apply()
    shop = Shop(
        seed=args.seed,
        n_users=args.users,
        n_items=args.items,
        sessions_per_user_day=args.sessions_per_day,
        start=START,
    )
    took: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name, table in shop.catalog().items():
        project.log.append(name, table)
    history = shop.history(days=args.days)
    for name, table in history.items():
        project.log.append(name, table)
    events = history["shop.events"]
    took["events"] = events.num_rows
    took["purchases"] = int(
        np.sum(events["event_type"].to_numpy(zero_copy_only=False) == "purchase")
    )
    took["shop"] = time.perf_counter() - t0
    clock.say(f"shop: {events.num_rows:,} events over {args.days:g} days, {took['shop']:.1f} s")
    t0 = time.perf_counter()
    # Training reads user features point in time from the offline store: land the log
    # there; the online store is not read.
    project.features.land()
    took["land"] = time.perf_counter() - t0
    clock.say(f"log landed in the offline store, {took['land']:.1f} s")
    clock.say("training recommend (the champion every arm starts from)")
    took["initial"] = project.train("recommend", until=shop.now, alias="champion")
    project.cycles.append(Refresh())
    return project, shop, took


def load() -> str:
    """The machine's 1/5/15-minute load averages."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def fmt_s(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


def quality_table(res: DriftResult) -> list[str]:
    hit, ndcg = f"hit_rate@{res.k}", f"ndcg@{res.k}"
    how = {
        "frozen": "never",
        "fine-tuned": f"fine-tune loop every {EVERY_MIN} min",
        "retrained": f"full retrain every {EVERY_MIN} min",
    }
    base = res.quality["frozen"][hit]
    lines = [
        f"| arm | refreshed | {hit} | {ndcg} | vs frozen (hit rate) | purchases |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        q = res.quality[arm]
        lines.append(
            f"| {arm} | {how[arm]} | {q[hit]:.3f} | {q[ndcg]:.3f} | {q[hit] - base:+.3f} | "
            f"{res.purchases:,} |"
        )
    return lines


def compute_table(res: DriftResult, project: TimedProject) -> list[str]:
    ft, full = res.compute_s["fine-tuned"], res.compute_s["retrained"]
    calls = sum(c.fine_tune_s for c in project.refreshes())
    n = res.cycles
    return [
        "| arm | refresh s, total | per cycle s, mean | share of retrain's |",
        "|---|---:|---:|---:|",
        "| frozen | 0.0 | 0.00 | 0% |",
        f"| fine-tuned (loop step: judge + fine-tune) | {ft:.1f} | {ft / n:.2f} | "
        f"{res.compute_ratio:.1%} |",
        f"| … of which the fine_tune calls | {calls:.1f} | {calls / n:.2f} | "
        f"{calls / max(full, 1e-9):.1%} |",
        f"| retrained (keel train, no holdout) | {full:.1f} | {full / n:.2f} | 100% |",
    ]


def verdicts(res: DriftResult) -> dict[str, str]:
    return {d["evidence"].get("candidate", ""): d["action"] for d in res.decisions}


def cycles_table(res: DriftResult, project: TimedProject, min_purchases: int) -> list[str]:
    judged = verdicts(res)
    lines = [
        "| cycle | shop min after drift | fine-tuned | interactions | shop min covered | "
        "purchases | rows touched (users / items) | admitted (users / items) | fine_tune s | "
        "fit s | retrain s | child judged |",
        "|---:|---:|---|---:|---:|---:|---|---|---:|---:|---:|---|",
    ]
    for i, c in enumerate(project.refreshes()):
        head = f"| {i + 1} | {(i + 1) * EVERY_MIN} |"
        retrain = f"{c.retrain_s:.1f}"
        r = c.fine_tune
        if r is None:
            lines.append(
                f"{head} none: the challenger had fewer than {min_purchases} purchases since "
                f"it was made | | | | | | | | {retrain} | |"
            )
            continue
        d = r.data
        minutes = (int(d.ts.max()) - int(d.ts.min())) / 60e6 if len(d) else 0.0
        lines.append(
            f"{head} {r.version.ref} ← @{r.parent} | {len(d):,} | {minutes:.0f} | "
            f"{int(d.purchase.sum()):,} | {r.touched.get('users', 0):,} / "
            f"{r.touched.get('items', 0):,} | {r.admitted.get('users', 0):,} / "
            f"{r.admitted.get('items', 0):,} | {c.fine_tune_s:.2f} | {r.seconds['fit']:.2f} | "
            f"{retrain} | {judged.get(r.version.ref, 'not yet (run ended)')} |"
        )
    return lines


def phases_table(project: TimedProject) -> list[str]:
    done = project.refreshes()
    tuned = [c for c in done if c.fine_tune is not None]
    lines = [
        "| phase | fine-tune s, median / max | retrain s, median / max |",
        "|---|---:|---:|",
    ]
    for phase in ("interactions", "fit", "evaluate", "register"):
        ft = [c.fine_tune.seconds.get(phase, 0.0) for c in tuned]
        full = [c.retrain.seconds.get(phase, 0.0) for c in done]
        lines.append(f"| {phase} | {fmt_s(ft)} | {fmt_s(full)} |")
    lines.append(
        f"| whole call | {fmt_s([c.fine_tune_s for c in tuned])} | "
        f"{fmt_s([c.retrain_s for c in done])} |"
    )
    return lines


def decisions_table(res: DriftResult) -> list[str]:
    lines = ["| candidate | against (served) | action | reason |", "|---|---|---|---|"]
    for d in res.decisions:
        e = d["evidence"]
        lines.append(
            f"| {e.get('candidate', '?')} | {e.get('serving', '?')} | {d['action']} | "
            f"{d['reason']} |"
        )
    if not res.decisions:
        lines.append("| — | — | — | no candidate was judged |")
    return lines


def recovery(res: DriftResult) -> tuple[str, str, bool]:
    """The recovery goal as it can be read: (b − a)/(c − a) when retraining beat frozen;
    otherwise the ratio means nothing and the gains over frozen are compared instead."""
    hit = f"hit_rate@{res.k}"
    a, b, c = (res.quality[arm][hit] for arm in ARMS)
    if c > a:
        r = res.recovered
        return (
            f"recovery (b − a)/(c − a) ≥ {GOAL_RECOVERED:.0%} (hit rate)",
            f"{r:.0%}: ({b:.3f} − {a:.3f}) / ({c:.3f} − {a:.3f})",
            r >= GOAL_RECOVERED,
        )
    return (
        "fine-tuning's gain over frozen ≥ retraining's (recovery has no meaning)",
        f"no ratio: retrained ({c:.3f}) did not beat frozen ({a:.3f}). Gain over frozen: "
        f"fine-tuned {b - a:+.3f}, retrained {c - a:+.3f}",
        b - a >= c - a,
    )


def goals_table(res: DriftResult, project: TimedProject) -> list[str]:
    tuned = [c for c in project.refreshes() if c.fine_tune is not None]
    calls = [c.fine_tune_s for c in tuned]
    rows = [len(c.fine_tune.data) for c in tuned]
    worst = max(calls, default=float("nan"))
    rec_goal, rec_text, rec_ok = recovery(res)

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    return [
        "| goal | measured | met |",
        "|---|---|:---:|",
        f"| fine-tune compute ≤ {GOAL_RATIO:.0%} of retrain's | {res.compute_ratio:.1%} "
        f"({res.compute_s['fine-tuned']:.1f} s vs {res.compute_s['retrained']:.1f} s) | "
        f"{met(res.compute_ratio <= GOAL_RATIO)} |",
        f"| one fine-tune of ≥ 30 shop-minutes ≤ {GOAL_FT_S:g} s | whole call: max "
        f"{worst:.2f} s, median {statistics.median(calls) if calls else float('nan'):.2f} s "
        f"({min(rows, default=0):,}–{max(rows, default=0):,} interactions); fit alone: max "
        f"{max(res.fine_tune_s, default=float('nan')):.2f} s | {met(worst <= GOAL_FT_S)} |",
        f"| {rec_goal} | {rec_text} | {met(rec_ok)} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--sessions-per-day", type=float, default=2.0)
    ap.add_argument("--days", type=float, default=7.0, help="history before the drift")
    ap.add_argument("--cycles", type=int, default=6, help="refreshes, 30 shop-minutes apart")
    ap.add_argument("--items", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"a small, fast run ({', '.join(f'{k} {v:g}' for k, v in QUICK.items())})",
    )
    args = ap.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    import torch

    clock = Clock()
    exe = os.path.relpath(sys.executable)
    command = shlex.join([exe if not exe.startswith("..") else sys.executable, *sys.argv])
    print(f"Command: `{command}`")
    print(
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), Python "
        f"{platform.python_version()}, torch {torch.__version__}; training on one torch thread; "
        f"load average at start {load()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        project, shop, took = build(Path(tmp), args, clock)
        initial = took["initial"]
        clock.say(
            f"drift: {TRENDING} ×{WEIGHT:g}, {LAUNCH} items launched; {args.cycles} cycles "
            f"{EVERY_MIN} shop-minutes apart, each scored on the next {HORIZON_MIN} minutes"
        )
        t0 = time.perf_counter()
        res = run_drift(
            project,
            shop,
            cycles=args.cycles,
            every=EVERY,
            horizon=HORIZON,
            trending=TRENDING,
            weight=WEIGHT,
            launch=LAUNCH,
            min_purchases=MIN_PURCHASES,
            progress=lambda phase, done, total: clock.say(f"{phase} {done}/{total}"),
        )
        drift_s = time.perf_counter() - t0
        aliases = project.registry.aliases("recommend")
    tuned = [c.fine_tune for c in project.refreshes() if c.fine_tune is not None]
    if res.fine_tune_s != [r.seconds["fit"] for r in tuned]:
        raise RuntimeError("run_drift's fit seconds disagree with the fine-tunes it ran")

    metric = ", ".join(f"{k} {v:.3f}" for k, v in initial.metrics.items() if "@" in k)
    print()
    print(
        f"Shop: seed {args.seed}, {args.users:,} users, {args.items:,} items, "
        f"{args.sessions_per_day:g} sessions/user/day, {args.days:g} days: "
        f"{took['events']:,} events ({took['purchases']:,} purchases); built in "
        f"{took['shop']:.1f} s, landed in the offline store in {took['land']:.1f} s."
    )
    rec = initial.model
    print(
        f"Initial {initial.version.ref} (window {format_duration(rec.window)}, holdout "
        f"{format_duration(rec.holdout)}, dim "
        f"{rec.dim}, user features {', '.join(rec.features) or 'none'}): "
        f"{len(initial.data):,} interactions, trained in "
        f"{sum(initial.seconds.values()):.1f} s "
        f"({', '.join(f'{k} {v:.1f}' for k, v in initial.seconds.items())}); on its "
        f"holdout {metric}."
    )
    print(
        f"Drift: {TRENDING} weighted ×{WEIGHT:g}, {len(res.launched)} {TRENDING} items "
        f"launched at the top of their ranking; {res.cycles} refreshes {EVERY_MIN} "
        f"shop-minutes apart, each version scored on the purchases of the {HORIZON_MIN} "
        f"minutes after it; {drift_s:.0f} s; "
        f"whole run {time.perf_counter() - clock.t0:.0f} s; load average at end {load()} (other "
        "work on the machine slows the refreshes alike and makes their times noisy)."
    )
    sections = [
        ("Quality (purchase-weighted over the cycles)", quality_table(res)),
        ("Refresh compute", compute_table(res, project)),
        ("Per cycle", cycles_table(res, project, MIN_PURCHASES)),
        ("Phases of one refresh", phases_table(project)),
        ("Decisions of the fine-tune loop", decisions_table(res)),
        ("Goals", goals_table(res, project)),
    ]
    for title, lines in sections:
        print()
        print(f"{title}:")
        print()
        print("\n".join(lines))
    print()
    print(f"Versions of recommend, in order: {', '.join(res.versions)}")
    print(
        "Aliases at the end: "
        + ", ".join(f"{k} → recommend@{v}" for k, v in sorted(aliases.items()))
    )


if __name__ == "__main__":
    main()
