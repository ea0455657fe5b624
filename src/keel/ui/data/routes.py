"""The route page: what it serves, its throughput and latency over time, its shadow's
comparison converging against its tolerance, the decisions taken with their evidence, and
what an operator may do now."""

from __future__ import annotations

from typing import Any

import numpy as np

from keel.controller.operator import ACTIONS, propose, route_config, shadow_of
from keel.errors import KeelError, TopicNotFoundError
from keel.prediction_log import topic_name
from keel.supervisor.status import platform_status
from keel.ui.charts import Band, Series, line_chart, number
from keel.ui.data.loop import paused_routes
from keel.ui.data.traffic import Comparison
from keel.ui.text import duration, stamp, stamp_ts

__all__ = ["route_page"]

#: Logged predictions read for the throughput and latency chart (the newest).
LOGGED_ROWS = 50_000
BINS = 30


def route_page(state: Any, name: str) -> dict[str, Any]:
    project = state.project
    cfg = route_config(project, name)
    status = platform_status(project, url=state.server_url, alerts=0, timeout_s=2.0)
    view = next((r for r in status.routes if r.name == name), None)
    index = state.traffic_index()
    shadow = shadow_of(project, cfg, index)
    comparisons = state.traffic.comparisons(name)
    decisions = list(reversed(state.traffic.decisions(name, last=20)))
    current = comparisons[-1] if comparisons else None
    tolerance, window = _settings_of(current, decisions, shadow)
    actions: dict[str, dict[str, Any]] = {}
    for action in ACTIONS:
        try:
            actions[action] = {"proposal": propose(project, name, action, index=index)}
        except KeelError as exc:
            actions[action] = {"why_not": str(exc)}
    return {
        "route": name,
        "config": cfg,
        "view": view,
        "routes_from": status.routes_from,
        "routes_note": status.routes_note,
        "shadow": shadow,
        "comparison": current,
        "earlier": list(reversed(comparisons[:-1])),
        "shadow_chart": None
        if current is None
        else _shadow_chart(current, tolerance, window, shadow.compare if shadow else "abs"),
        "verdict": None if current is None else _verdict(current, tolerance),
        "tolerance": tolerance,
        "decisions": decisions,
        "actions": actions,
        "looped": cfg.loop is not None,
        "paused": cfg.loop is not None and name in paused_routes(project.log, [name]),
        "live": _live_charts(state, name),
        "logged": _logged_charts(project, cfg),
    }


def _settings_of(
    current: Comparison | None, decisions: list[dict[str, Any]], shadow: Any
) -> tuple[float | None, float | None]:
    """The tolerance and window the comparison is judged by: those its decision recorded,
    else the shadow's settings now."""
    if current is not None:
        for d in decisions:
            ev = d.get("evidence") or {}
            if ev.get("candidate") == current.candidate and ev.get("tolerance") is not None:
                return float(ev["tolerance"]), ev.get("window_s")
    if shadow is None:
        return None, None
    return shadow.tolerance, shadow.window_s


def _verdict(c: Comparison, tolerance: float | None) -> str:
    snap = c.latest
    if snap is None or snap.mean is None:
        return "no comparison yet"
    where = f"after {snap.samples:,} comparisons over {duration(snap.elapsed_s)}"
    if snap.low is None or snap.high is None or tolerance is None:
        return f"{where} the mean discrepancy is {number(snap.mean)}"
    interval = f"the 95% interval {number(snap.low)} – {number(snap.high)}"
    if snap.high <= tolerance:
        judged = f"lies within the tolerance {number(tolerance)}"
    elif snap.low > tolerance:
        judged = f"lies above the tolerance {number(tolerance)}"
    else:
        judged = f"still straddles the tolerance {number(tolerance)}"
    return f"{where} {interval} {judged} ({c.status})"


def _shadow_chart(
    c: Comparison, tolerance: float | None, window: float | None, compare: str
) -> Any:
    snaps = [s for s in c.snapshots if s.mean is not None]
    points = [(s.elapsed_s, s.mean) for s in snaps]
    band = [(s.elapsed_s, s.low, s.high) for s in snaps if s.low is not None and s.high is not None]
    series = [
        Series(
            "mean discrepancy",
            points,
            marker=True,
            labels=[f"{duration(s.elapsed_s)}, {s.samples:,} comparisons" for s in snaps],
        )
    ]
    if tolerance is not None:
        end = max([window or 0.0] + [s.elapsed_s for s in snaps])
        series.append(Series("tolerance", [(0.0, tolerance), (end, tolerance)], style="threshold"))
    return line_chart(
        title=f"Shadow {c.candidate} against {c.primary}: mean discrepancy ({compare}) and its "
        "95% interval over the window",
        x_label="time into the comparison",
        y_label="discrepancy",
        series=series,
        bands=[Band("95% interval", band)] if band else [],
        x_format=duration,
        summary=_verdict(c, tolerance),
    )


def _live_charts(state: Any, name: str) -> dict[str, Any] | None:
    rates = state.sampler.rates(name)
    if len(rates) < 2:
        return None
    labels = [stamp_ts(r.at)[11:] for r in rates]
    throughput = line_chart(
        title=f"{name}: requests per second (the server's metrics, scraped every "
        f"{state.sampler.every_s:g} s)",
        x_label="time (UTC)",
        y_label="requests/s",
        series=[Series("requests/s", [(r.at, r.rps) for r in rates], marker=True, labels=labels)],
        x_format=lambda t: stamp_ts(t)[11:],
        summary=f"latest {number(rates[-1].rps)} requests/s",
    )
    latency = line_chart(
        title=f"{name}: p50 and p99 latency (the server's histogram)",
        x_label="time (UTC)",
        y_label="ms",
        series=[
            Series("p50 ms", [(r.at, r.p50_ms) for r in rates], labels=labels),
            Series("p99 ms", [(r.at, r.p99_ms) for r in rates], labels=labels),
        ],
        x_format=lambda t: stamp_ts(t)[11:],
        summary=f"latest p50 {number(rates[-1].p50_ms)} ms, p99 {number(rates[-1].p99_ms)} ms",
    )
    return {"throughput": throughput, "latency": latency}


def _logged_charts(project: Any, cfg: Any) -> dict[str, Any] | None:
    """Throughput and latency over the newest logged predictions (monitored routes log a
    sample of theirs: the counts are scaled by it)."""
    if cfg.monitor is None:
        return None
    log = project.log
    topic = topic_name(cfg.name)
    try:
        ends = log.end_offsets(topic)
        starts = log.start_offsets(topic)
    except TopicNotFoundError:
        return None
    ts_parts, ms_parts = [], []
    per = max(1, LOGGED_ROWS // max(len(ends), 1))
    for p, (start, end) in enumerate(zip(starts, ends, strict=True)):
        offset = max(start, end - per)
        while offset < end:
            batch = log.read(topic, p, offset, min(per, end - offset))
            if not batch.num_rows:
                break
            offset += batch.num_rows
            ts_parts.append(batch.column("ts").cast("int64").to_numpy())
            ms_parts.append(batch.column("latency_ms").to_numpy(zero_copy_only=False))
    if not ts_parts:
        return None
    ts = np.concatenate(ts_parts) / 1e6
    ms = np.concatenate(ms_parts).astype(np.float64)
    lo, hi = float(ts.min()), float(ts.max())
    if hi <= lo:
        return None
    edges = np.linspace(lo, hi, BINS + 1)
    which = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, BINS - 1)
    width = (hi - lo) / BINS
    sample = cfg.monitor.sample or 1.0
    mids, rates, p50, p99 = [], [], [], []
    for b in range(BINS):
        in_bin = ms[which == b]
        mids.append(float(edges[b] + width / 2))
        rates.append(len(in_bin) / width / sample)
        p50.append(float(np.percentile(in_bin, 50)) if len(in_bin) else None)
        p99.append(float(np.percentile(in_bin, 99)) if len(in_bin) else None)
    labels = [stamp_ts(m) for m in mids]
    fmt = (lambda t: stamp_ts(t)[5:16]) if hi - lo > 86_400 else (lambda t: stamp_ts(t)[11:])
    span = f"{stamp_ts(lo)} – {stamp_ts(hi)} UTC"
    return {
        "rows": len(ts),
        "span": span,
        "throughput": line_chart(
            title=f"{cfg.name}: predictions per second, from the prediction log ({span})",
            x_label="time (UTC)",
            y_label="predictions/s",
            series=[Series("predictions/s", list(zip(mids, rates, strict=True)), labels=labels)],
            x_format=fmt,
            summary=f"{len(ts):,} logged predictions in {BINS} intervals of {duration(width)}",
        ),
        "latency": line_chart(
            title=f"{cfg.name}: p50 and p99 latency of the logged predictions",
            x_label="time (UTC)",
            y_label="ms",
            series=[
                Series("p50 ms", list(zip(mids, p50, strict=True)), labels=labels),
                Series("p99 ms", list(zip(mids, p99, strict=True)), labels=labels),
            ],
            x_format=fmt,
            summary="the request latency the server logged with each prediction",
        ),
    }


def decision_facts(decision: dict[str, Any]) -> list[tuple[str, str]]:
    """The evidence of a decision as (what, value) pairs a person reads."""
    ev = decision.get("evidence") or {}
    facts: list[tuple[str, str]] = []
    if ev.get("candidate"):
        facts.append(("candidate", f"{ev['candidate']} against {ev.get('primary', '—')}"))
    if ev.get("samples") is not None:
        facts.append(("comparisons", f"{ev['samples']:,}"))
    if ev.get("discrepancy") is not None:
        ci = ev.get("ci95")
        text = number(ev["discrepancy"])
        if ci:
            text += f" (95% CI {number(ci[0])} – {number(ci[1])})"
        if ev.get("tolerance") is not None:
            text += f", tolerance {number(ev['tolerance'])}"
        facts.append(("discrepancy", text))
    if ev.get("elapsed_s") is not None:
        facts.append(("over", f"{duration(ev['elapsed_s'])} of {duration(ev.get('window_s'))}"))
    if ev.get("latency_ratio") is not None:
        facts.append(("latency ratio", number(ev["latency_ratio"])))
    labels = ev.get("labels")
    if labels:
        facts.append(
            (
                "labels",
                f"{labels['n']:,}: candidate loss {number(labels['candidate_loss'])}, primary "
                f"{number(labels['primary_loss'])}",
            )
        )
    for key in ("serving", "to", "requests", "error_rate", "p99_ms", "step", "percent"):
        if ev.get(key) is not None and key not in dict(facts):
            facts.append((key.replace("_", " "), str(ev[key])))
    if ev.get("as_of"):
        facts.append(("evidence as of", stamp(ev["as_of"])))
    return facts
