"""An operator's decisions on a route, by hand: promote the candidate its shadow compares,
reject it, or roll the route back to the version it served before.

Each is what the controller does on evidence, taken on a person's word instead, and recorded
the same way: a promotion or a rollback moves the route's alias in the registry (its history
and the ``keel.registry`` topic name who moved it and why), and every decision is a
``decision`` event on ``keel.traffic`` naming who took it, with the evidence there was. A
running server is told through its control API (``POST /v1/routes/{route}/decisions``, as the
remote controller tells it), so that a rejected candidate stops being compared and the
server's own audit names the token; with no server answering, the event is written to the log
directly. ``keel traffic promote|reject|rollback`` and the web console both act through here.

First :func:`propose` says what an action would do (the confirmation a person reads); then
:func:`carry_out` does exactly that, or nothing if the route's alias moved in between.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keel.config import RouteConfig, ShadowConfig
from keel.errors import (
    ConflictError,
    KeelError,
    NotFoundError,
    TopicNotFoundError,
    UnavailableError,
    ValidationError,
    did_you_mean,
)

__all__ = [
    "ACTIONS",
    "Proposal",
    "carry_out",
    "propose",
    "record",
    "route_config",
    "shadow_of",
    "traffic_index",
]

#: What an operator may decide on a route (pausing and resuming its loop is
#: :func:`keel.controller.loop.pause` and :func:`~keel.controller.loop.resume`).
ACTIONS = ("promote", "reject", "rollback")


@dataclass(frozen=True, slots=True)
class Proposal:
    """What an action on a route would do.

    ``serving`` is the version the route's alias (``model@alias``) points at now; ``target``
    the version it concerns: the shadowed candidate (promote, reject) or the version served
    before (rollback). ``summary`` says it in one line for the person confirming it."""

    route: str
    action: str
    model: str
    alias: str
    serving: int
    target: int
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def candidate(self) -> str:
        return f"{self.model}@{self.target}"


def route_config(project: Any, route: str) -> RouteConfig:
    """The route ``route`` of the project's ``keel.toml``."""
    routes = {r.name: r for r in project.settings.routes}
    if route not in routes:
        raise NotFoundError(
            f"no route {route!r}{did_you_mean(route, routes)}; routes: "
            f"{', '.join(routes) or 'none'}"
        )
    return routes[route]


def shadow_of(project: Any, cfg: RouteConfig, index: Any = None) -> ShadowConfig | None:
    """The shadow the route has now: the one last set while serving, while the configured
    one is still the one it was set over, else the configured one (the server's rule).
    ``index``: a :class:`~keel.serving.traffic_log.TrafficIndex` of the project's traffic
    topic to read (one that is kept reads only what is new)."""
    from keel.serving.traffic_manager import runtime_traffic

    index = index or traffic_index(project)
    runtime = None if index is None else runtime_traffic(index, cfg)
    return cfg.shadow if runtime is None else runtime[1]


def traffic_index(project: Any) -> Any:
    """A reader of the project's traffic topic (None while there is none)."""
    from keel.serving.traffic_log import TrafficIndex
    from keel.serving.traffic_manager import TRAFFIC

    try:
        project.log.topic(TRAFFIC.name)
    except TopicNotFoundError:
        return None
    return TrafficIndex(project.log, TRAFFIC.name)


def _alias_of(cfg: RouteConfig) -> tuple[str, str]:
    name, _, alias = cfg.model.partition("@")
    if cfg.model.startswith("builtin:") or not alias or alias.isdigit() or alias == "latest":
        raise ValidationError(
            f"route {cfg.name!r} serves {cfg.model!r}, not a model by alias: promoting or "
            f"rolling back moves the route's alias; serve it from one (e.g. '{name}@champion')"
        )
    return name, alias


def propose(project: Any, route: str, action: str, *, index: Any = None) -> Proposal:
    """What ``action`` (promote, reject or rollback) on ``route`` would do now; an error
    saying why when there is nothing to do. ``index``: as for :func:`shadow_of`."""
    if action not in ACTIONS:
        raise ValidationError(f"no action {action!r}; actions: {', '.join(ACTIONS)}")
    cfg = route_config(project, route)
    name, alias = _alias_of(cfg)
    registry = project.registry
    serving = registry.aliases(name).get(alias)
    if serving is None:
        raise ValidationError(f"{name}@{alias} points at no version: the route serves nothing yet")
    if action == "rollback":
        return _rollback(project, cfg, name, alias, serving)
    index = index or traffic_index(project)
    shadow = shadow_of(project, cfg, index)
    if shadow is None:
        raise ValidationError(f"route {route!r} has no shadow: there is no candidate to {action}")
    cand_name, _, cand_ref = shadow.model.partition("@")
    if cand_name != name:
        raise ValidationError(
            f"route {route!r} shadows {shadow.model!r}, not a version of {name!r}: moving "
            f"{name}@{alias} to it is not possible"
        )
    try:
        target = registry.get(name, int(cand_ref) if cand_ref.isdigit() else cand_ref).version
    except NotFoundError:
        raise ValidationError(
            f"{shadow.model} points at no version: the route has no candidate to {action}"
        ) from None
    if target == serving:
        raise ValidationError(
            f"{shadow.model} is {name}@{target}, which the route serves already: there is no "
            f"candidate to {action}"
        )
    evidence = _evidence(index, route, shadow, f"{name}@{target}", f"{name}@{serving}")
    if action == "promote":
        summary = (
            f"{name}@{alias} moves from {name}@{serving} to {name}@{target}: route {route} "
            f"serves the candidate"
        )
    else:
        summary = (
            f"{name}@{target} is rejected: the route keeps serving {name}@{serving} and its "
            "shadow stops comparing the candidate"
        )
    return Proposal(route, action, name, alias, serving, target, summary, evidence)


def _rollback(project: Any, cfg: RouteConfig, name: str, alias: str, serving: int) -> Proposal:
    moves = project.registry.alias_history(name, alias)
    last = moves[-1] if moves else None
    if last is None or last.to_version != serving or last.from_version is None:
        raise ValidationError(
            f"{name}@{alias} has no earlier version to roll back to (it has pointed at "
            f"{name}@{serving} since it was first set)"
        )
    target = last.from_version
    when = last.at.strftime("%Y-%m-%d %H:%M UTC")
    summary = (
        f"{name}@{alias} moves back from {name}@{serving} to {name}@{target}, the version "
        f"route {cfg.name} served before its last move ({when}: {last.reason or 'no reason'})"
    )
    evidence = {"serving": f"{name}@{serving}", "to": f"{name}@{target}", "undoes": last.seq}
    return Proposal(cfg.name, "rollback", name, alias, serving, target, summary, evidence)


def _evidence(
    index: Any, route: str, shadow: ShadowConfig, candidate: str, primary: str
) -> dict[str, Any]:
    """The shadow's latest evidence on ``candidate`` (its summary as the controller reads
    it, as of its last snapshot), or just the names when it has none."""
    from keel.serving.traffic import ShadowState

    base = {"route": route, "candidate": candidate, "primary": primary}
    if index is None:
        return base
    snapshots = index.events(route, "shadow_stats")
    latest = next((s for s in reversed(snapshots) if s.get("candidate") == candidate), None)
    if latest is None:
        return base
    state = ShadowState.from_dict(latest)
    at = datetime.fromisoformat(latest["at"]).timestamp()
    return {**state.summary(shadow, at), **base, "as_of": latest["at"]}


def carry_out(
    project: Any,
    proposal: Proposal,
    *,
    by: str,
    url: str | None = None,
    token: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Do what ``proposal`` says, as ``by``; returns the decision recorded.

    The alias moves only if it still points where the proposal saw it (else
    :class:`~keel.errors.ConflictError`, and nothing changes). ``url``: the server to tell,
    with ``token``; when none answers there, the decision is written to the log directly.
    """
    if not by:
        raise ValidationError("an operator's decision names who takes it: give 'by'")
    p = proposal
    serving, target = f"{p.model}@{p.serving}", f"{p.model}@{p.target}"
    if p.action == "promote":
        reason = f"promoted by {by}: {serving} → {target}"
    elif p.action == "reject":
        reason = f"rejected by {by}: {target} is not to serve; {serving} stays"
    else:
        reason = f"rolled back by {by}: {serving} → {target}"
    decision = {"action": p.action, "reason": reason, "evidence": p.evidence, "by": by}
    if p.action in ("promote", "rollback"):
        try:
            project.registry.set_alias(
                p.model, p.alias, p.target, reason=reason, expected=p.serving
            )
        except ConflictError:
            raise ConflictError(
                f"{p.model}@{p.alias} moved since this was proposed (it pointed at {serving}); "
                "nothing changed — look again and decide on what it points at now"
            ) from None
    record(project, p.route, decision, url=url, token=token, now=now)
    return decision


def record(
    project: Any,
    route: str,
    decision: dict[str, Any],
    *,
    url: str | None = None,
    token: str | None = None,
    now: float | None = None,
) -> str:
    """Record ``decision`` on ``route``: through the server at ``url`` when it serves the
    route, else straight onto the traffic topic. Returns where it went (``server`` or
    ``log``)."""
    from keel.serving.traffic_manager import TRAFFIC, publish

    if url:
        from keel.serving.client import call

        try:
            call(url, f"/v1/routes/{route}/decisions", decision, timeout=30, token=token)
            return "server"
        except (UnavailableError, ValueError):
            pass  # no Keel server answers there: the log is where the decision goes
        except KeelError as exc:
            if exc.status_code != 404:  # a server that does not serve this route
                raise
    project.log.create_topic(TRAFFIC, exist_ok=True)
    publish(project.log, route, "decision", decision, at=time.time() if now is None else now)
    return "log"
