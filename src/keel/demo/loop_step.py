"""Demo step: the loop, unattended. The drifted shop of the monitoring step keeps selling; the
monitor's alert becomes a retrain job, the job a version graded on the freshest labelled
payments, the version a shadow, the shadow's evidence a promotion — and the realized loss comes
back near its healthy level, with no one at the keyboard."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from rich import box
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from keel.clock import ManualClock
from keel.demo.data_steps import progress_bar
from keel.demo.http import serving
from keel.demo.monitor_step import CHUNK, SETTLE_DAYS, TICK_S, _realized
from keel.demo.result import DemoResult
from keel.project import Project
from keel.shop import EVENTS, LABELS, PAYMENTS, Shop

#: Shop seconds per real second: a retrain job (a few seconds here) takes a couple of shop
#: hours, as it would on a busy platform.
PACE = 1_800.0
RECOVER_S = 12 * 3_600.0  # the goal: a new version serving within 12 shop hours of the alert
# ... and its realized loss, judged on what it served from its swap to 24 shop hours after the
# alert: at the shop's fraud rate, twelve hours hold a dozen frauds or so, and a logloss over a
# dozen positives swings with one confidently missed fraud.
MEASURE_S = 24 * 3_600.0
MAX_S = 36 * 3_600.0  # the step gives up after 36 shop hours


def show_loop(
    console: Console,
    project: Project,
    shop: Shop,
    result: DemoResult,
    *,
    days: float,
    quick: bool,
) -> None:
    from keel.controller import Controller, LoopController
    from keel.controller.trail import read
    from keel.monitoring import Monitor, history
    from keel.serving import InferenceServer
    from keel.serving.client import call

    cfg = next(r for r in project.settings.routes if r.name == "fraud")
    policy = cfg.loop
    if policy is None or cfg.monitor is None or cfg.shadow is None:
        return
    if quick:  # as in the monitoring step: a small shop's windows are smaller
        cfg = msgspec.structs.replace(
            cfg, monitor=msgspec.structs.replace(cfg.monitor, window_rows=100)
        )
    graded = (
        f"the freshest {policy.holdout_s / 3600:g} settled hours"
        if policy.holdout_s
        else "the model's own holdout"
    )
    console.print(
        "[bold]14. The loop, unattended[/]: the drifted shop keeps selling; the route's policy "
        f"({' or '.join(policy.on)} → {policy.job}, graded on {graded}, shadowed, promoted on "
        "evidence) runs with no one at the keyboard"
    )
    clock = ManualClock(shop.now.timestamp())
    server = InferenceServer(
        [cfg],
        registry=project.registry,
        features=project.features,
        log_=project.log,
        clock=clock,
        features_at=clock.now,
    )
    server.load_all()
    # The traffic step set a shadow of its own while serving; the loop's is keel.toml's.
    server.set_traffic("fraud", shadow=cfg.shadow)
    monitor = Monitor(
        cfg, log_=project.log, registry=project.registry, features=project.features, clock=clock
    )
    traffic = Controller(server, project.registry)
    loop = LoopController(project, routes=[cfg], clock=clock)
    manager = project.job_manager()
    first = len(list(read(project.log, "fraud")))
    rate = result.appended.get(EVENTS.name, 0) / (days * 86_400)
    start = clock.now()
    alert_at = promoted_at = first_swap_at = None
    swaps: list[str] = []
    promoted = ""
    started = time.perf_counter()
    with serving(server) as port, progress_bar(console) as progress:
        url = f"http://127.0.0.1:{port}"
        task = progress.add_task("shop hours, the loop running", total=round(MAX_S / 3600))
        ticks = shop.stream(rate=rate, tick_s=TICK_S, duration_s=MAX_S)
        for tick in ticks:
            paced = time.perf_counter() + TICK_S / PACE
            for name, table in tick.items():
                if table.num_rows:
                    project.log.append(name, table)
            project.features.materialize()
            clock.advance(TICK_S)
            rows = [
                {k: r[k] for k in ("payment_id", "card_id", "user_id", "amount")}
                for r in tick[PAYMENTS.name].to_pylist()
            ]
            for i in range(0, len(rows), CHUNK):
                call(url, "/v1/routes/fraud/predict", {"rows": rows[i : i + CHUNK]})
            server.routes["fraud"].predictions.flush()
            monitor.step()
            traffic.step()
            manager.tick()
            for event in loop.step():
                if event.kind == "trigger" and alert_at is None:
                    alert_at = event.at.timestamp()
                if event.kind == "swap":
                    promoted_at, promoted = event.at.timestamp(), event.payload["version"]
                    swaps.append(promoted)
                    first_swap_at = first_swap_at or promoted_at
            progress.update(task, completed=(clock.now() - start) / 3600)
            if alert_at is not None and clock.now() - alert_at >= MEASURE_S and promoted:
                break
            time.sleep(max(0.0, paced - time.perf_counter()))
        server.routes["fraud"].predictions.flush()
        monitor.step()
    manager.close()
    seconds = time.perf_counter() - started
    # The outcomes of those payments arrive over the next days.
    for tick in shop.stream(rate=rate, tick_s=3_600, duration_s=SETTLE_DAYS * 86_400):
        if tick[LABELS.name].num_rows:
            project.log.append(LABELS.name, tick[LABELS.name])
    monitor.step()

    trail = list(read(project.log, "fraud"))[first:]
    _timeline(console, trail, start)
    windows = [w for w in history(project.log, "fraud") if _at(w["end"]) > start]
    _windows(console, windows, promoted)
    result.loop_steps = [e.kind for e in trail]
    result.loop_promoted = promoted
    result.loop_seconds = seconds
    if alert_at is not None:
        result.loop_alert_hours = (alert_at - start) / 3600
    if promoted_at is not None and alert_at is not None:
        result.loop_promoted_hours = (promoted_at - alert_at) / 3600
    before = [w for w in windows if w["version"] not in swaps]
    result.loop_realized_before = _realized(before)
    # The recovery, per payment rather than per window (a window can straddle a swap): every
    # payment the loop's versions scored from the first swap to 12 shop hours after the alert,
    # joined with its label as the monitor joins them.
    by_version: dict[str, tuple[float, int]] = {}
    if first_swap_at is not None and alert_at is not None:
        by_version = _realized_by_version(project, cfg, first_swap_at, alert_at + MEASURE_S)
    total = sum(n for v, (_, n) in by_version.items() if v in swaps)
    if total:
        result.loop_realized_after = (
            sum(loss * n for v, (loss, n) in by_version.items() if v in swaps) / total
        )
        result.loop_realized_rows = total
    healthy = result.realized_before
    if promoted and healthy and result.loop_realized_after is not None:
        ratio = result.loop_realized_after / healthy
        colour = "green" if ratio <= 2 else "red"
        hours = result.loop_promoted_hours or 0
        in_time = "green" if hours <= RECOVER_S / 3600 else "red"
        each = ", ".join(
            f"{v} {loss:.4f} over {n}" for v, (loss, n) in by_version.items() if v in swaps
        )
        console.print(
            f"   {promoted} took over [{in_time}]{hours:.1f} shop hours after the alert[/] (goal "
            f"≤ {RECOVER_S / 3600:g}); realized logloss of the {total} labelled payments the "
            f"loop's versions served from then to {MEASURE_S / 3600:g} hours after the alert "
            f"[{colour}]{result.loop_realized_after:.4f}[/] ({each}) — {ratio:.1f}× the healthy "
            f"{healthy:.4f} (goal ≤ 2×), against {result.realized_after or 0:.4f} for the "
            f"drifted champion in step 11 ({seconds:.0f} s, all unattended)"
        )
    elif promoted:
        console.print(
            f"   {promoted} took over {result.loop_promoted_hours or 0:.1f} shop hours after the "
            f"alert; [yellow]none of its payments within {MEASURE_S / 3600:g} hours of the alert "
            "was labelled[/]"
        )
    else:
        console.print(
            f"   [yellow]no version was promoted within {MAX_S / 3600:g} shop hours[/]: "
            f"{', '.join(result.loop_steps) or 'no step taken'}"
        )


def _realized_by_version(
    project: Project, cfg: Any, since: float, until: float
) -> dict[str, tuple[float, int]]:
    """Each version's realized loss (and labelled rows) over the route's logged predictions
    served between ``since`` and ``until``, joined with the labels on the log."""
    import numpy as np
    import pyarrow.compute as pc

    from keel.monitoring.concept import row_loss
    from keel.prediction_log import OUTPUT_PREFIX, topic_name

    labels = cfg.monitor.labels
    got: dict[str, float] = {}
    consumer = project.log.consumer("demo-loop-labels", labels.topic)
    while (batch := consumer.poll(100_000)).num_rows:
        for i, y in zip(batch[labels.id].to_pylist(), batch[labels.label].to_pylist(), strict=True):
            if y is not None:
                got[str(i)] = float(y)
    topic = topic_name(cfg.name)
    offset, end = project.log.seek(topic, 0, since), project.log.end_offsets(topic)[0]
    per: dict[str, tuple[list[float], list[float]]] = {}
    while offset < end:
        rows = project.log.read(topic, 0, offset, 50_000)
        if not rows.num_rows:
            break
        offset += rows.num_rows
        rows = rows.filter(pc.less_equal(rows["ts"], datetime.fromtimestamp(until, UTC)))
        score = next(c for c in rows.column_names if c.startswith(OUTPUT_PREFIX))
        for v, i, s in zip(
            rows["version"].to_pylist(),
            rows["request_id"].to_pylist(),
            rows[score].to_pylist(),
            strict=True,
        ):
            if i in got and s is not None:
                ys, ss = per.setdefault(v, ([], []))
                ys.append(got[i])
                ss.append(s)
    return {
        v: (float(row_loss(cfg.monitor.loss, np.array(ys), np.array(ss)).mean()), len(ys))
        for v, (ys, ss) in per.items()
    }


def _timeline(console: Console, trail: list[Any], start: float) -> None:
    from keel.cli.loop import STYLE
    from keel.controller.trail import chains

    tree = Tree("[bold]the loop's trail[/] (keel loop fraud): each step names its cause")
    for chain in chains(trail):
        root = chain[0]
        node = tree.add(_line(root, start, STYLE))
        for e in chain[1:]:
            node.add(_line(e, start, STYLE))
    console.print(tree)


def _line(e: Any, start: float, styles: dict[str, str]) -> str:
    hours = (e.at.timestamp() - start) / 3600
    style = styles.get(e.kind, "")
    return f"+{hours:4.1f} h [{style}]{e.kind}[/]: {e.summary}"


def _windows(console: Console, windows: list[dict[str, Any]], promoted: str) -> None:
    table = Table(
        title="fraud route while the loop ran",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for col in ("win", "shop time", "version", "drifted", "est. loss", "realized"):
        table.add_column(col, justify="left" if col in ("shop time", "version") else "right")
    for w in windows:
        perf = w["performance"] or {}
        realized = perf.get("realized")
        new = w["version"] == promoted
        table.add_row(
            str(w["window"]),
            w["end"][5:16].replace("T", " "),
            f"[green]{w['version']}[/]" if new else w["version"],
            f"{sum(f['drifted'] for f in w['features'])}/{len(w['features'])}",
            "—" if not perf else f"{perf['estimated']:.4f}",
            "—" if realized is None else f"{realized:.4f}",
        )
    console.print(table)


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso).astimezone(UTC).timestamp()
