"""The overview: what ``keel status`` shows (components, routes with their serving versions,
canaries and shadows, job queues, the latest alerts), and the latest decisions."""

from __future__ import annotations

from typing import Any

from keel.supervisor.status import platform_status
from keel.ui.data.loop import paused_routes

__all__ = ["overview"]


def overview(state: Any, *, alerts: int = 8, decisions: int = 8) -> dict[str, Any]:
    status = platform_status(state.project, url=state.server_url, alerts=alerts, timeout_s=2.0)
    looped = {r.name for r in state.project.settings.routes if r.loop is not None}
    return {
        "status": status,
        "decisions": list(reversed(state.traffic.decisions(last=decisions))),
        "alerts": list(reversed(status.alerts)),
        "looped": looped,
        "paused": paused_routes(state.project.log, looped),
    }
