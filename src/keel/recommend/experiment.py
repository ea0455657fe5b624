"""What continuous fine-tuning buys: the shop's tastes drift (new items launched, one
category trending), and three ways of keeping the recommender current are measured on the
purchases of the hour after each refresh:

* **frozen** — the initial version, never refreshed;
* **fine-tuned** — its embedding tables refreshed every ``every`` by the fine-tune loop
  (:class:`~keel.recommend.loop.FineTuneLoop`: judge, promote or reject, fine-tune); the
  newest child is scored, whether or not the loop has judged it yet (a route serving the
  champion follows one cycle behind);
* **retrained** — the whole model trained again from scratch on its window every ``every``.

Used by the demo (small) and by ``benchmarks/bench_recommend.py`` (the figures in
BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from keel.recommend.data import offsets_at, read_interactions
from keel.recommend.definitions import Recommender
from keel.recommend.loop import FineTuneLoop
from keel.recommend.model import TwoTower
from keel.recommend.train import evaluate

__all__ = ["ARMS", "DriftResult", "run_drift"]

ARMS = ("frozen", "fine-tuned", "retrained")
EVENTS = "shop.events"


@dataclass
class DriftResult:
    k: int
    cycles: int
    #: Per arm: purchase-weighted hit rate and NDCG at k over every cycle's next hour.
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Per arm: seconds spent refreshing, over all cycles.
    compute_s: dict[str, float] = field(default_factory=dict)
    fine_tune_s: list[float] = field(default_factory=list)
    fine_tune_rows: list[int] = field(default_factory=list)
    purchases: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    launched: list[int] = field(default_factory=list)

    @property
    def recovered(self) -> float:
        """The share of the retrained model's gain over the frozen one that fine-tuning
        recovers (hit rate); NaN when retraining gains nothing over the frozen model, where
        the share means nothing (compare the two gains instead)."""
        hit = f"hit_rate@{self.k}"
        a, b, c = (self.quality[arm][hit] for arm in ARMS)
        return (b - a) / (c - a) if c > a else float("nan")

    @property
    def compute_ratio(self) -> float:
        return self.compute_s["fine-tuned"] / max(self.compute_s["retrained"], 1e-9)


def run_drift(
    project: Any,
    shop: Any,
    *,
    model: str = "recommend",
    cycles: int = 6,
    every: timedelta = timedelta(minutes=30),
    horizon: timedelta = timedelta(hours=1),
    rate: float | None = None,
    trending: str = "games",
    weight: float = 4.0,
    launch: int = 40,
    min_purchases: int = 20,
    progress: Callable[[str, int, int], None] | None = None,
) -> DriftResult:
    """Drift ``shop`` and run the three arms for ``cycles`` refreshes ``every`` apart.

    The project's recommender ``model`` must be trained and served (its route's alias set);
    the log must hold the shop's history up to ``shop.now``. ``rate`` is the stream's events
    per second (default: the pace of the shop's users). Retrains are registered under
    ``<model>-retrained`` so the served line's versions stay the fine-tune's. A child is
    judged once ``min_purchases`` purchases followed it.
    """

    def report(phase: str, done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    log = project.log
    rec: Recommender = project.model(model)
    retrained = dataclasses.replace(rec, name=f"{model}-retrained", route=None)
    alias = project._parent_alias(rec.route) or "champion"
    frozen: TwoTower = project.registry.load(model, alias)
    result = DriftResult(k=rec.k, cycles=cycles)
    result.versions.append(project.registry.get(model, alias).ref)

    shop = shop.shift(category_weights={trending: weight})
    items = shop.launch(launch, trending)["shop.items"]
    log.append("shop.items", items)
    result.launched = items.column("item_id").to_pylist()
    if rate is None:
        rate = shop.n_users * shop.sessions_per_user_day * 6.7 / 86_400
    clock_now = [shop.now.timestamp()]
    loop = FineTuneLoop(
        project,
        model,
        clock=lambda: clock_now[0],
        serving_alias=alias,
        min_purchases=min_purchases,
    )
    step_s = every.total_seconds()
    ahead = max(1, round(horizon.total_seconds() / step_s))
    pending: list[tuple[Any, dict[str, TwoTower]]] = []
    scores: dict[str, list[tuple[float, float, float]]] = {arm: [] for arm in ARMS}
    result.compute_s = {"fine-tuned": 0.0, "retrained": 0.0}
    total = cycles + ahead
    for i in range(total):
        for tick in shop.stream(rate=rate, tick_s=step_s, duration_s=step_s):
            for name, table in tick.items():
                if table.num_rows:
                    log.append(name, table)
        now = shop.now
        clock_now[0] = now.timestamp()
        # Evaluate the arms refreshed ``horizon`` ago on the hour that has now passed.
        if len(pending) == ahead:
            at, arms = pending.pop(0)
            start, end = offsets_at(log, EVENTS, at), offsets_at(log, EVENTS, at + horizon)
            feats = project.features if rec.features else None
            names = list(arms["frozen"].feature_names)
            later = read_interactions(rec, log, feats, start, end, feature_names=names)
            for arm, m in arms.items():
                e = evaluate(m, later, rec.k)
                scores[arm].append((e[f"hit_rate@{rec.k}"], e[f"ndcg@{rec.k}"], e["purchases"]))
        if i >= cycles:
            report("cycles", i + 1, total)
            continue
        t0 = time.perf_counter()
        cycle = loop.step()
        result.compute_s["fine-tuned"] += time.perf_counter() - t0
        if cycle.decision is not None:
            result.decisions.append(cycle.decision)
        if cycle.fine_tune is not None:
            result.fine_tune_s.append(cycle.fine_tune.seconds.get("fit", 0.0))
            result.fine_tune_rows.append(len(cycle.fine_tune.data))
            result.versions.append(cycle.fine_tune.version.ref)
        t0 = time.perf_counter()
        full = project.train(retrained, until=now, holdout=False)
        result.compute_s["retrained"] += time.perf_counter() - t0
        newest = cycle.fine_tune.version.version if cycle.fine_tune else None
        tuned = (
            project.registry.load(model, newest)
            if newest is not None
            else project.registry.load(model, alias)
        )
        arms = {
            "frozen": frozen,
            "fine-tuned": tuned,
            "retrained": project.registry.load(retrained.name, full.version.version),
        }
        pending.append((now, arms))
        report("cycles", i + 1, total)
    for arm, rows in scores.items():
        a = np.nan_to_num(np.array(rows, dtype=np.float64).reshape(-1, 3))
        w = a[:, 2]
        result.quality[arm] = {
            f"hit_rate@{rec.k}": float((a[:, 0] * w).sum() / max(w.sum(), 1)),
            f"ndcg@{rec.k}": float((a[:, 1] * w).sum() / max(w.sum(), 1)),
        }
        result.purchases = int(w.sum())
    return result
