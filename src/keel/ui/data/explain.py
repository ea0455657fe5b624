"""The explanations page: a served prediction's score split into its features' contributions,
as a bar chart. The predictions are those a route explained for audit (``[routes.explain]
audit``, on ``keel.explanations``), and any row explained now by the running server."""

from __future__ import annotations

import json
from typing import Any

from keel.errors import TopicNotFoundError, ValidationError
from keel.log import OFFSET
from keel.serving.explaining import EXPLANATIONS
from keel.ui.charts import Bar, bar_chart, number
from keel.ui.text import stamp

__all__ = ["audited", "contributions_chart", "explain_page", "explain_row"]

#: Audited explanations listed (the newest).
LISTED = 50
#: Contributions drawn, largest first.
TOP = 12


def audited(log: Any, route: str, last: int = LISTED) -> list[dict[str, Any]]:
    """The route's newest audited explanations, newest first; each its payload plus where
    it is on the log (``ref``: ``partition-offset``)."""
    try:
        topic = log.topic(EXPLANATIONS.name)
    except TopicNotFoundError:
        return []
    found: list[dict[str, Any]] = []
    for p in range(topic.partitions):
        end = log.end_offsets(topic.name)[p]
        offset = max(log.start_offsets(topic.name)[p], end - 20 * last)
        while offset < end:
            batch = log.read(topic.name, p, offset, 5_000)
            if not batch.num_rows:
                break
            offset += batch.num_rows
            for row in batch.to_pylist():
                if row["route"] != route:
                    continue
                found.append(
                    {
                        "ref": f"{p}-{row[OFFSET]}",
                        "at": row["ts"].isoformat(),
                        "version": row["version"],
                        "method": row["method"],
                        "request_id": row["request_id"],
                        **json.loads(row["payload"]),
                    }
                )
    found.sort(key=lambda e: e["at"], reverse=True)
    for e in found:
        items = (e.get("contributions") or {}).items()
        e["top"] = max(items, key=lambda kv: abs(kv[1]), default=None)
    return found[:last]


def contributions_chart(e: dict[str, Any], title: str) -> Any:
    contributions = sorted(e["contributions"].items(), key=lambda kv: -abs(kv[1]))[:TOP]
    features = e.get("features") or {}
    bars = [
        Bar(f"{name} = {number(features[name])}" if name in features else name, value)
        for name, value in contributions
    ]
    up = sum(v for _, v in contributions if v > 0)
    down = sum(v for _, v in contributions if v < 0)
    return bar_chart(
        title=title,
        bars=bars,
        value_label="contribution to the output (positive raises it)",
        summary=f"output {number(e['output'])} = base {number(e['base_value'])} + "
        f"contributions; the {len(bars)} largest raise it by {number(up)} and lower it by "
        f"{number(-down)}",
    )


def explain_page(state: Any, route: str, ref: str | None) -> dict[str, Any]:
    from keel.controller.operator import route_config

    cfg = route_config(state.project, route)
    items = audited(state.project.log, route)
    chosen = next((e for e in items if e["ref"] == ref), items[0] if items else None)
    chart = None
    if chosen is not None:
        chart = contributions_chart(
            chosen,
            f"{route}: why {chosen['version']} scored request {chosen['request_id'] or '—'} "
            f"{number(chosen['output'])} ({chosen['method']}, {stamp(chosen['at'])})",
        )
    return {
        "route": route,
        "config": cfg,
        "items": items,
        "chosen": chosen,
        "chart": chart,
        "audit": cfg.explain.audit if cfg.explain is not None else None,
    }


def explain_row(state: Any, route: str, text: str, token: str | None) -> dict[str, Any]:
    """Explain one request row (JSON) with the running server, as ``keel explain`` does."""
    from keel.serving.client import call

    try:
        row = json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"the row is not JSON: {exc}") from None
    if not isinstance(row, dict):
        raise ValidationError('the row must be one JSON object, e.g. {"card_id": 1, ...}')
    answer = call(
        state.server_url, f"/v1/routes/{route}/explain", {"rows": [row]}, timeout=30, token=token
    )
    e = answer["explanations"][0]
    score = next(iter(answer.get("predictions", {}).values()), [None])[0]
    e = {**e, "features": {}}
    title = (
        f"{route}: why {answer['version']} scored this row"
        + (f" {number(score)}" if isinstance(score, float) else "")
        + f" ({answer['method']}, in its {answer['output']} output)"
    )
    return {"chart": contributions_chart(e, title), "version": answer["version"]}
