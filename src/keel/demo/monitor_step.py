"""Demo step: the shop streams live, its payments are scored by the fraud route, a drift is
injected half way, and the monitor flags it, estimates the performance drop and writes the
HTML report."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from rich import box
from rich.console import Console, JustifyMethod
from rich.table import Table

from keel.clock import ManualClock
from keel.demo.data_steps import progress_bar
from keel.demo.http import serving
from keel.demo.result import DemoResult
from keel.errors import ValidationError
from keel.project import Project
from keel.shop import EVENTS, LABELS, PAYMENTS, Shop

# What changes half way: a holiday rush, and an app release that stops sending its events.
# Shoppers buy most of what they cart, several payments minutes apart, often from a phone
# they just got; and 70% of sessions no longer reach shop.events, so their shoppers pay from
# accounts that look idle, as stolen cards do. The model flags them; its estimated loss rises
# hours before the labels (legitimate payments settle after a day or two) confirm it.
DRIFT = {"price_scale": 1.3, "buy_share": 0.9, "new_device_share": 0.4, "untracked_share": 0.7}
TICK_S = 120.0  # shop seconds per tick: payments are scored within 2 minutes
CHUNK = 64  # payments per request
SETTLE_DAYS = 3  # as the fraud model's labels settle


def show_monitoring(
    console: Console,
    project: Project,
    shop: Shop,
    result: DemoResult,
    *,
    days: float,
    quick: bool,
) -> Shop | None:
    """Returns the drifted shop, where it stands (None when the step was skipped)."""

    from keel.monitoring import Monitor, history, times_level
    from keel.serving import InferenceServer
    from keel.serving.client import call

    cfg = next(r for r in project.settings.routes if r.name == "fraud")
    if cfg.monitor is None:
        return None
    if quick:  # a small shop: smaller windows to see several
        cfg = msgspec.structs.replace(
            cfg, monitor=msgspec.structs.replace(cfg.monitor, window_rows=100)
        )
    console.print(
        "[bold]11. Monitoring[/]: live payments scored by the fraud route; half way the shop "
        "drifts (" + ", ".join(f"{k} {v:g}" for k, v in DRIFT.items()) + ")"
    )
    features, log = project.features, project.log
    # The shop runs at its own pace (two days in seconds), so the server serves as of the
    # shop's clock: its joined features, prediction log and staleness all follow it. The
    # materializer runs in this loop, between a tick's events and the scoring of its
    # payments, so each payment is scored with features that include it, as in training.
    clock = ManualClock(shop.now.timestamp())
    server = InferenceServer(
        [cfg],
        registry=project.registry,
        features=features,
        log_=log,
        clock=clock,
        features_at=clock.now,
    )
    server.load_all()
    monitor = Monitor(
        cfg, log_=log, registry=project.registry, features=features, clock=clock, start="latest"
    )
    try:
        with console.status("   rebuilding the champion's training set from its lineage…"):
            monitor.fit()
    except ValidationError as exc:  # a shop too small to calibrate on
        console.print(f"   [yellow]skipped[/]: {exc}")
        return None
    ref = monitor.reference_
    assert ref is not None  # fit() builds it
    console.print(
        f"   reference: {ref.version}'s training set ({ref.rows:,} rows, {len(ref.features)} "
        f"features); its loss estimator learned on the last {ref.labelled:,}; windows of "
        f"{monitor.config.window_rows} payments"
    )
    # The history's own pace, so the live days look like the days the model learned from.
    rate = result.appended.get(EVENTS.name, 0) / (days * 86_400)
    # The live burst of step 4 ran thousands of times faster; its sessions still under way
    # would flood the first hours.
    shop.drop_pending()
    phase_days = 1.0
    records: list[dict[str, Any]] = []
    drift_window = None
    started = time.perf_counter()
    scored = 0
    with serving(server) as port:
        url = f"http://127.0.0.1:{port}"
        with progress_bar(console) as progress:
            for phase in ("healthy", "drifted"):
                # The drifted shop forks the healthy one where it stands: same users, cards
                # and clock, other habits.
                world = shop if phase == "healthy" else shop.shift(**DRIFT)
                task = progress.add_task(
                    f"{phase_days:g} {phase} shop days", total=round(phase_days * 86_400 / TICK_S)
                )
                for tick in world.stream(rate=rate, tick_s=TICK_S, duration_s=phase_days * 86_400):
                    for name, table in tick.items():
                        if table.num_rows:
                            log.append(name, table)
                    features.materialize()
                    clock.advance(TICK_S)
                    pays = tick[PAYMENTS.name]
                    rows = [
                        {k: r[k] for k in ("payment_id", "card_id", "user_id", "amount")}
                        for r in pays.to_pylist()
                    ]
                    for i in range(0, len(rows), CHUNK):
                        call(url, "/v1/routes/fraud/predict", {"rows": rows[i : i + CHUNK]})
                    scored += len(rows)
                    server.routes["fraud"].predictions.flush()
                    records += monitor.step()
                    progress.advance(task)
                if phase == "healthy":
                    drift_window = monitor.windows_
    server.routes["fraud"].predictions.flush()
    records += monitor.step()
    # Three shop days later the outcomes are in (a legitimate payment is confirmed a day or
    # more after it): the realized loss of each window, beside what was estimated before.
    # (The shop's own events of those days are not kept: only the outcomes matter here.)
    for tick in world.stream(rate=rate, tick_s=3_600, duration_s=SETTLE_DAYS * 86_400):
        if tick[LABELS.name].num_rows:
            log.append(LABELS.name, tick[LABELS.name])
    monitor.step()
    merged = {w["window"]: w for w in history(log, "fraud")}
    records = [merged.get(r["window"], r) for r in records]
    _table(console, records, drift_window)
    report = monitor.report(project.settings.data_dir + "/reports/fraud.html")
    after = [r for r in records if drift_window is not None and r["window"] >= drift_window]
    before = [r for r in records if r not in after]
    result.monitor_windows = len(records)
    result.drift_window = drift_window
    result.alerts_before = sum(bool(r["alerts"]) for r in before)
    worst: dict[str, float] = {}  # each drifted feature's furthest excursion over its level
    for f in (f for r in after for f in r["features"] if f["drifted"]):
        worst[f["feature"]] = max(worst.get(f["feature"], 0.0), times_level(f))
    result.drifted_after = sorted(worst, key=lambda name: -worst[name])
    result.estimated_before = _estimated(before)
    result.estimated_after = _estimated(after)
    result.performance_alert_after = any(
        r["performance"] is not None and r["performance"]["alert"] for r in after
    )
    result.realized_before, result.realized_after = _realized(before), _realized(after)
    result.report = str(report)
    perf = (
        "[red]crossed its threshold[/]: a retrain request is on keel.monitor"
        if result.performance_alert_after
        else "stayed within its threshold"
    )
    console.print(
        f"   before the drift: {_checks(before)}; after it: {_checks(after)}. The estimated "
        f"loss {perf}"
    )
    if result.realized_before is not None and result.realized_after is not None:
        console.print(
            f"   once the labels were in: realized {_metric(records)} "
            f"{result.realized_before:.4f} before the drift, {result.realized_after:.4f} after"
        )
    console.print(
        f"   {scored:,} payments over {2 * phase_days:g} shop days scored and monitored in "
        f"{time.perf_counter() - started:.1f} s; report: [cyan]{report}[/]"
    )
    return world


def _estimated(records: list[dict[str, Any]]) -> float | None:
    """The mean estimated loss over these windows (before any label came in)."""
    values = [r["performance"]["estimated"] for r in records if r["performance"]]
    return sum(values) / len(values) if values else None


def _metric(records: list[dict[str, Any]]) -> str:
    return next((r["performance"]["metric"] for r in records if r["performance"]), "loss")


def _realized(records: list[dict[str, Any]]) -> float | None:
    """The realized loss over these windows' labelled rows, once their labels are in."""
    pairs = [
        (r["performance"]["realized"], r["performance"].get("labelled", 0))
        for r in records
        if r["performance"] and r["performance"].get("realized") is not None
    ]
    rows = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / rows if rows else None


def _checks(records: list[dict[str, Any]]) -> str:
    """How many feature checks of these windows went over their level, and how far."""
    from keel.monitoring import times_level

    checks = [f for r in records for f in r["features"]]
    over = [f for f in checks if f["drifted"]]
    if not over:
        return f"[green]0 of {len(checks)} feature checks over their level[/]"
    worst = max((times_level(f) for f in over if f["value"] is not None), default=0.0)
    colour = "red" if worst >= 2 else "yellow"
    return (
        f"[{colour}]{len(over)} of {len(checks)} feature checks over their level, by up to "
        f"{worst:.2f}×[/]"
    )


def _table(console: Console, records: list[dict[str, Any]], drift_window: int | None) -> None:
    from keel.monitoring import times_level

    perf0 = next((r["performance"] for r in records if r["performance"]), None)
    level = "" if perf0 is None else f"; estimated logloss alerts above {perf0['threshold']:.4f}"
    table = Table(
        title="fraud route, window by window",
        caption=f"drifted: features over their calibrated alert level{level}",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    columns: list[tuple[str, JustifyMethod, int]] = [
        ("win", "right", 4),
        ("shop time", "left", 11),
        ("drift", "right", 5),
        ("most drifted", "left", 12),
        ("output", "left", 7),
        ("est. loss", "right", 9),
        ("realized", "right", 8),
    ]
    for col, justify, width in columns:
        table.add_column(col, justify=justify, no_wrap=True, overflow="ellipsis", min_width=width)
    for r in records:
        top = max(r["features"], key=times_level)
        n_drift = sum(f["drifted"] for f in r["features"])
        pred, perf = r["prediction"], r["performance"]
        realized = None if perf is None else perf.get("realized")
        ratio = "missing" if top["value"] is None else f"{times_level(top):.1f}×"
        table.add_row(
            f"{'→' if r['window'] == drift_window else ''}{r['window']}",
            r["end"][5:16].replace("T", " "),
            ("[red]" if n_drift else "[green]") + f"{n_drift}/{len(r['features'])}[/]",
            f"{top['feature'].split('__')[-1][:14]} {ratio}",
            "—" if pred is None else ("[red]drifted[/]" if pred["drifted"] else "[green]ok[/]"),
            "—"
            if perf is None
            else ("[red]" if perf["alert"] else "[green]") + f"{perf['estimated']:.4f}[/]",
            "—" if realized is None else f"{realized:.4f}",
        )
    console.print(table)
