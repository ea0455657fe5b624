"""The loop page: a route's causal trail (alert → job → version → shadow → decision → swap),
chain by chain, as ``keel loop ROUTE`` shows it; and whether an operator paused it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from keel.controller.operator import route_config
from keel.controller.trail import chains, read
from keel.ui.text import duration

__all__ = ["loop_page", "paused_routes"]

#: What each step is, in words (the timeline shows the word, not only a colour).
KINDS = {
    "trigger": "alert",
    "skipped": "skipped",
    "job": "job",
    "job_done": "job done",
    "candidate": "version",
    "decision": "decision",
    "swap": "swap",
    "monitoring": "monitoring",
    "closed": "closed",
    "paused": "paused",
    "resumed": "resumed",
}


def paused_routes(log: Any, routes: Iterable[str]) -> set[str]:
    """Which of ``routes`` an operator paused (and has not resumed)."""
    wanted = set(routes)
    state: dict[str, bool] = {}
    for e in read(log):
        if e.route in wanted and e.kind in ("paused", "resumed"):
            state[e.route] = e.kind == "paused"
    return {r for r, p in state.items() if p}


def loop_page(state: Any, route: str, *, last: int = 10) -> dict[str, Any]:
    cfg = route_config(state.project, route)
    events = list(read(state.project.log, route))
    groups = chains(events)
    shown = []
    for chain in reversed(groups[-last:]):
        start = chain[0]
        shown.append(
            {
                "start": start,
                "steps": [
                    {
                        "event": e,
                        "kind": KINDS.get(e.kind, e.kind),
                        "after": ""
                        if e is start
                        else "+" + duration((e.at - start.at).total_seconds()),
                    }
                    for e in chain
                ],
                "open": chain[-1].kind not in ("closed", "monitoring", "paused", "resumed"),
            }
        )
    return {
        "route": route,
        "config": cfg,
        "policy": cfg.loop,
        "chains": shown,
        "earlier": max(0, len(groups) - last),
        "paused": route in paused_routes(state.project.log, [route]),
    }
