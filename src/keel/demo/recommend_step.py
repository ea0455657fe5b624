"""Demo step: the recommender, trained by `keel train recommend`, then kept current over a
drifting shop by the fine-tune loop, beside a frozen copy and a full retrain."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from rich.console import Console
from rich.table import Table

from keel.cli.train import progress_bars
from keel.demo.data_steps import progress_bar
from keel.demo.result import DemoResult
from keel.features.definitions import format_duration
from keel.project import Project
from keel.recommend import Recommender
from keel.recommend.experiment import ARMS, run_drift
from keel.shop import EVENTS, Shop

TRENDING = "games"


def show_recommendations(
    console: Console, project: Project, shop: Shop, result: DemoResult, *, quick: bool
) -> None:
    rec = project.model("recommend")
    assert isinstance(rec, Recommender)
    ft = rec.fine_tune
    console.print(
        "[bold]12. Recommendations[/]: [cyan]keel train recommend[/], then "
        f"[cyan]keel fine-tune recommend --every {format_duration(ft.every)}[/] on a drifting "
        "shop"
    )
    span = project.log.stats(EVENTS.name).time_range
    assert span is not None
    start = max(span[1], shop.now)
    shop.skip_to(start)
    console.print(
        f"   a two-tower model: one {rec.dim}-wide embedding row per user and item (a row once "
        f"an ID is seen {ft.min_count}×, freed after {format_duration(ft.expire_after)} "
        f"unseen), user features {', '.join(rec.features) or 'none'}; trained on "
        f"{format_duration(rec.window)} of views, carts and purchases with sampled negatives"
    )
    with progress_bars(console) as report:
        trained = project.train(rec, until=start, alias="champion", progress=report)
    hit = f"hit_rate@{rec.k}"
    console.print(
        f"   {trained.version.ref}: {len(trained.data):,} interactions, "
        f"{len(trained.data.feature_names)} user features, fit in "
        f"{trained.seconds['fit']:.1f} s; {hit} {trained.metrics[hit]:.3f} on the last "
        f"{format_duration(rec.holdout)}'s {trained.metrics['purchases']:.0f} purchases"
    )
    cycles = 2 if quick else 3
    launch = 30
    busy = 8
    # An evening sale: the history's pace times ``busy``, so each half hour holds enough
    # purchases to judge a child on.
    rate = busy * result.appended.get(EVENTS.name, 0) / max((span[1] - span[0]).total_seconds(), 1)
    console.print(
        f"   then the shop drifts in a {busy}× busier evening sale: {launch} new {TRENDING} items "
        f"launched at the top of their category, {TRENDING} trending 4×; every "
        f"{format_duration(ft.every)} of shop time the "
        "loop judges the last child on the purchases since (promote or reject), and fine-tunes "
        "the next from the serving version — only the rows its interactions touch, every "
        "dense weight frozen"
    )
    with progress_bar(console) as progress:
        task = progress.add_task("fine-tune cycles", total=cycles + 2)
        drift = run_drift(
            project,
            shop,
            cycles=cycles,
            every=ft.every,
            horizon=timedelta(hours=1),
            trending=TRENDING,
            launch=launch,
            rate=rate,
            min_purchases=10,
            progress=lambda _p, done, total: progress.update(task, completed=done, total=total),
        )
    for d in drift.decisions:
        colour = "green" if d["action"] == "promote" else "yellow"
        console.print(f"   [{colour}]{d['action']}[/] {d['evidence']['candidate']}: {d['reason']}")
    table = Table(
        title=f"the next hour's purchases after each refresh ({drift.purchases:,} purchases)",
        title_justify="left",
    )
    table.add_column("model")
    table.add_column(hit, justify="right")
    table.add_column(f"ndcg@{rec.k}", justify="right")
    table.add_column("refresh compute", justify="right")
    labels = {
        "frozen": "initial model, frozen",
        "fine-tuned": f"fine-tuned every {format_duration(ft.every)}",
        "retrained": f"retrained every {format_duration(ft.every)}",
    }
    for arm in ARMS:
        q = drift.quality[arm]
        cost = drift.compute_s.get(arm)
        table.add_row(
            labels[arm],
            f"{q[hit]:.3f}",
            f"{q[f'ndcg@{rec.k}']:.3f}",
            "—" if cost is None else f"{cost:.1f} s",
        )
    console.print(table)
    fits = ", ".join(f"{s:.2f}" for s in drift.fine_tune_s)
    console.print(
        f"   fine-tune fits: {fits} s over {', '.join(f'{n:,}' for n in drift.fine_tune_rows)} "
        f"interactions; {drift.compute_ratio:.1%} of the retrains' compute; versions "
        f"{' → '.join(drift.versions)}; champion now "
        f"{project.registry.get('recommend', 'champion').ref}"
    )
    _served(console, project, set(drift.launched), result)
    result.recommend_quality = {arm: drift.quality[arm][hit] for arm in ARMS}
    result.recommend_decisions = [d["action"] for d in drift.decisions]
    result.recommend_versions = drift.versions
    result.recommend_champion = project.registry.get("recommend", "champion").ref
    result.recommend_compute_ratio = drift.compute_ratio


def _served(console: Console, project: Project, launched: set[int], result: DemoResult) -> None:
    """The route serving the champion: one shopper of the trend, asked over HTTP."""
    from keel.cli.serve import build_server
    from keel.demo.http import serving
    from keel.recommend.data import offsets_at, read_interactions
    from keel.serving.client import call

    rec = project.model("recommend")
    assert isinstance(rec, Recommender)
    log = project.log
    project.features.materialize()  # the user features the route joins, up to date
    span = log.stats(EVENTS.name).time_range
    assert span is not None
    start = offsets_at(log, EVENTS.name, span[1] - timedelta(minutes=30))
    recent = read_interactions(rec, log, None, start, dict(enumerate(log.end_offsets(EVENTS.name))))
    fans = recent.users[np.isin(recent.items, list(launched))]
    if not len(fans):
        return
    user = int(np.bincount(fans).argmax())
    server = build_server(project, ["recommend"])
    with serving(server) as port:
        body = call(
            f"http://127.0.0.1:{port}",
            "/v1/routes/recommend/predict",
            {"rows": [{"user_id": user, "k": 5}]},
        )
    items, scores = body["predictions"]["items"][0], body["predictions"]["scores"][0]
    new = [i for i in items if i in launched]
    console.print(
        f"   POST /v1/routes/recommend/predict {{user_id: {user}, k: 5}} → {body['version']} "
        f"(model and index swapped together): items "
        + ", ".join(
            f"{i}{'*' if i in launched else ''} ({s:.2f})"
            for i, s in zip(items, scores, strict=True)
        )
        + f" — * launched during the drift ({len(new)} of 5)"
    )
    result.recommend_served = body["version"]
