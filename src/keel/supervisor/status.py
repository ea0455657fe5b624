"""What ``keel status`` shows, in one record: the supervised components, the routes with
their serving versions, canaries and shadows, the job queues, and the last alerts.

It works whether ``keel up`` runs or not: components come from ``state.json`` (a supervisor
that has died shows as not running), routes from the server when it answers and from the
registry's aliases when it does not.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from keel.errors import KeelError, NotFoundError
from keel.supervisor.plan import run_dir
from keel.supervisor.state import SupervisorState, read_state
from keel.supervisor.supervisor import STATE_FILE

__all__ = [
    "AlertView",
    "CanaryView",
    "ComponentView",
    "PlatformStatus",
    "QueueView",
    "RouteView",
    "ShadowView",
    "SupervisorView",
    "WaitingJob",
    "platform_status",
]

DEFAULT_URL = "http://127.0.0.1:8000"


class SupervisorView(msgspec.Struct, kw_only=True):
    """``keel up`` itself: whether it runs, its pid, since when, and the server's URL."""

    running: bool
    pid: int | None = None
    since: float | None = None
    url: str | None = None
    note: str = ""


class ComponentView(msgspec.Struct, kw_only=True):
    """One component: ``state`` is the supervisor's, or ``not running`` when it has died
    (``orphaned`` when the component's process outlived it)."""

    name: str
    state: str
    pid: int | None
    uptime_s: float | None
    restarts: int
    crash_loop: bool
    last_exit: str | None
    log: str


class CanaryView(msgspec.Struct, kw_only=True):
    model: str
    serving: str | None
    percent: float
    requests: int | None = None
    error_rate: float | None = None


class ShadowView(msgspec.Struct, kw_only=True):
    model: str
    serving: str | None
    status: str | None = None
    samples: int | None = None
    discrepancy: float | None = None


class RouteView(msgspec.Struct, kw_only=True):
    """A route: the model it names and the version serving it, its canary and shadow."""

    name: str
    model: str
    serving: str | None
    canary: CanaryView | None = None
    shadow: ShadowView | None = None
    error: str | None = None


class QueueView(msgspec.Struct, kw_only=True):
    """A cluster queue: usage per flavor and resource as ``"used/nominal"``."""

    name: str
    cohort: str
    admitted: int
    pending: int
    usage: dict[str, str]


class WaitingJob(msgspec.Struct, kw_only=True):
    id: str
    queue: str
    priority: str
    reason: str


class AlertView(msgspec.Struct, kw_only=True):
    route: str
    at: str
    window: int | None
    alert: str


class PlatformStatus(msgspec.Struct, kw_only=True):
    """Everything ``keel status`` shows; ``routes_from`` is ``server`` or ``registry``."""

    supervisor: SupervisorView
    components: list[ComponentView]
    notes: dict[str, str]
    routes: list[RouteView]
    routes_from: str
    routes_note: str
    queues: list[QueueView]
    waiting: list[WaitingJob]
    alerts: list[AlertView]

    def to_builtins(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


def platform_status(
    project: Any, *, url: str | None = None, alerts: int = 5, timeout_s: float = 2.0
) -> PlatformStatus:
    """The status of ``project`` (a :class:`keel.project.Project`).

    ``url`` is the server to ask about routes (default: the one ``keel up`` runs, else
    ``http://127.0.0.1:8000``); the registry answers when none does.
    """
    state = read_state(run_dir(project.settings.data_dir) / STATE_FILE)
    supervisor, components = _components(state)
    server = url or (state.url if state is not None and state.url else DEFAULT_URL)
    routes, source, note = _routes(project, server, timeout_s)
    queues, waiting = _queues(project)
    return PlatformStatus(
        supervisor=supervisor,
        components=components,
        notes=dict(state.notes) if state is not None else {},
        routes=routes,
        routes_from=source,
        routes_note=note,
        queues=queues,
        waiting=waiting,
        alerts=_alerts(project, alerts),
    )


def _components(state: SupervisorState | None) -> tuple[SupervisorView, list[ComponentView]]:
    if state is None:
        return SupervisorView(running=False, note="keel up has not run in this project"), []
    now = time.time()
    alive = state.alive
    view = SupervisorView(
        running=alive,
        pid=state.pid if alive else None,
        since=state.started_at if alive else None,
        url=state.url,
        note="" if alive else f"not running (keel up pid {state.pid} has ended)",
    )
    out = []
    for c in state.components:
        if alive:
            shown, pid = c.state.value, c.pid
        elif c.alive:  # outlived its supervisor: the next keel up stops it
            shown, pid = "orphaned", c.pid
        else:
            shown, pid = "not running", None
        out.append(
            ComponentView(
                name=c.name,
                state=shown,
                pid=pid,
                uptime_s=None if pid is None or c.up_since is None else now - c.up_since,
                restarts=c.restarts,
                crash_loop=c.crash_loop and alive,
                last_exit=None if c.last_exit is None else str(c.last_exit),
                log=c.log,
            )
        )
    return view, out


def _routes(project: Any, url: str, timeout_s: float) -> tuple[list[RouteView], str, str]:
    from keel.serving.client import call

    try:
        served = call(url, "/v1/routes", timeout=timeout_s)
    # No server answers (or it refuses, or something else listens there): the registry tells.
    except (KeelError, ValueError) as exc:
        return _configured_routes(project), "registry", str(exc)
    out = []
    for r in served:
        try:
            traffic = call(url, f"/v1/routes/{r['name']}/traffic", timeout=timeout_s)
        except KeelError as exc:
            out.append(
                RouteView(name=r["name"], model=r["model"], serving=r["serving"], error=str(exc))
            )
            continue
        canary = traffic.get("canary")
        shadow = traffic.get("shadow")
        out.append(
            RouteView(
                name=r["name"],
                model=r["model"],
                serving=traffic.get("primary") or r["serving"],
                canary=None
                if not canary
                else CanaryView(
                    model=canary["model"],
                    serving=canary.get("serving"),
                    percent=canary["percent"],
                    requests=canary.get("requests"),
                    error_rate=canary.get("error_rate"),
                ),
                shadow=None
                if not shadow
                else ShadowView(
                    model=(r.get("shadow") or {}).get("model", shadow["candidate"]),
                    serving=shadow["candidate"],
                    status=shadow.get("status"),
                    samples=shadow.get("samples"),
                    discrepancy=shadow.get("discrepancy"),
                ),
                error=r.get("last_error"),
            )
        )
    return out, "server", f"live from {url}"


def _configured_routes(project: Any) -> list[RouteView]:
    """The routes of keel.toml, each alias resolved in the registry."""
    out = []
    for r in project.settings.routes:
        out.append(
            RouteView(
                name=r.name,
                model=r.model,
                serving=_resolve(project, r.model),
                canary=None
                if r.canary is None
                else CanaryView(
                    model=r.canary.model,
                    serving=_resolve(project, r.canary.model),
                    percent=r.canary.percent,
                ),
                shadow=None
                if r.shadow is None
                else ShadowView(model=r.shadow.model, serving=_resolve(project, r.shadow.model)),
            )
        )
    return out


def _resolve(project: Any, model: str) -> str | None:
    """``name@version`` that ``name@alias`` points at now (None when it points nowhere)."""
    if model.startswith("builtin:"):
        return model
    name, _, ref = model.partition("@")
    try:
        version = project.registry.get(name, int(ref) if ref.isdigit() else ref or "latest")
    except NotFoundError:
        return None
    return f"{name}@{version.version}"


def _queues(project: Any) -> tuple[list[QueueView], list[WaitingJob]]:
    from keel.jobs.queues import snapshot
    from keel.jobs.spec import format_quantity

    snap = snapshot(project.settings.jobs, project.jobs)
    queues = [
        QueueView(
            name=q.name,
            cohort=q.cohort,
            admitted=q.admitted,
            pending=q.pending,
            usage={
                f"{u.flavor}/{u.resource}": f"{format_quantity(u.resource, u.used)}/"
                f"{format_quantity(u.resource, u.nominal)}"
                for u in q.resources
            },
        )
        for q in snap.queues
    ]
    waiting = [
        WaitingJob(
            id=j.id, queue=j.queue, priority=f"{j.priority_class} ({j.priority})", reason=j.reason
        )
        for j in snap.waiting
    ]
    return queues, waiting


def _alerts(project: Any, last: int) -> list[AlertView]:
    """The last ``last`` alerts of the monitor, over every route, oldest first."""
    from keel.monitoring.events import events

    if last <= 0:
        return []
    found = []
    for r in project.settings.routes:
        for e in events(project.log, r.name, ("alert",)):
            found.append(
                AlertView(route=r.name, at=e["at"], window=e.get("window"), alert=e["alert"])
            )
    found.sort(key=lambda a: a.at)
    return found[-last:]
