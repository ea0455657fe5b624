"""The closed loop, unattended: a route's alert becomes a job, the job a version, the version a
shadow, and the shadow's decision a promotion (or a rejection), with no human in it.

:class:`LoopController` reads what the other components write — the monitor's windows on
``keel.monitor``, the job store, the registry's alias moves, the traffic controller's decisions
on ``keel.traffic`` — and acts by the route's ``[routes.loop]`` policy. Each step it takes is an
event on ``keel.loop`` naming its cause (see :mod:`keel.controller.trail`), and its whole state
is rebuilt from that trail when it starts: a controller killed at any point carries on where it
stopped, and a job is never submitted twice for one trigger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keel.clock import Clock, SystemClock
from keel.config import LoopConfig, RouteConfig
from keel.controller.trail import CLOSING, LOOP, LoopEvent, from_record, publish, read
from keel.errors import NotFoundError, ValidationError, did_you_mean
from keel.jobs.store import JobState
from keel.jobs.worker import job_in
from keel.log import OFFSET, PARTITION

__all__ = ["DAY_S", "LoopController", "pause", "resume", "version_of"]

logger = logging.getLogger(__name__)

DAY_S = 86_400.0
GROUP = "keel-loop"
#: Holdout metrics where a lower value is better (every other one: higher is better).
LOWER_IS_BETTER = frozenset({"logloss", "rmse", "mae"})


@dataclass
class _Chain:
    """The loop in flight for a route: what it waits for next, and the ids it links to."""

    trigger: str
    stage: str = "triggered"  # → job → candidate → promoted → swapped
    job: str | None = None
    candidate: str | None = None  # the version under shadow, "model@N"
    last: str = ""  # the id of the chain's latest event: the cause of the next


@dataclass
class _Route:
    requests: list[float] = field(default_factory=list)  # when jobs were submitted
    chain: _Chain | None = None
    paused: bool = False
    last_skip: str | None = None  # why the last trigger was skipped (said once)
    seen: set[str] = field(default_factory=set)


class LoopController:
    """Runs the ``[routes.loop]`` policies of a project's routes.

    Parameters
    ----------
    project
        The :class:`~keel.project.Project` (its log, registry, job store and settings).
    routes
        The routes to run loops for (default: the project's); only those with a ``loop``.
    clock
        When things happen: cooldowns, budgets and schedules are measured on it, and a
        training job is pinned to its time.
    """

    def __init__(
        self,
        project: Any,
        *,
        routes: list[RouteConfig] | None = None,
        clock: Clock | None = None,
        interval_s: float = 1.0,
    ) -> None:
        from keel.monitoring.events import MONITOR
        from keel.serving.server import TRAFFIC

        self.project = project
        self.log = project.log
        self.clock = clock or SystemClock()
        self.interval_s = interval_s
        configs = project.settings.routes if routes is None else routes
        self.routes = {r.name: r for r in configs if r.loop is not None}
        for topic in (LOOP, MONITOR, TRAFFIC):
            self.log.create_topic(topic, exist_ok=True)
        self._monitor = self.log.consumer(GROUP, MONITOR.name)
        self._traffic = self.log.consumer(GROUP, TRAFFIC.name)
        # Operators pause and resume from other processes: their events are read as they come.
        self._own = self.log.consumer(f"{GROUP}.{id(self)}", LOOP.name, reset="latest")
        self._started = self.clock.now()
        self.state = {name: _Route() for name in self.routes}
        for event in read(self.log):
            if event.route in self.state:
                self._apply(event)

    # -- running -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Step every ``interval_s`` until ``stop`` is set; a failing step is logged and
        retried (its inputs are read again: nothing was committed)."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                logger.exception("loop step failed; retrying")
            stop.wait(self.interval_s)

    def step(self) -> list[LoopEvent]:
        """Read what happened since the last step and act on it; returns the events taken."""
        taken: list[LoopEvent] = []
        self._read_operators()
        taken += self._read_monitor()
        taken += self._read_traffic()
        for name in self.routes:
            taken += self._advance(name)
        self._monitor.commit()
        self._traffic.commit()
        return taken

    def pending(self, route: str) -> str | None:
        """What the route's loop waits for now (None when idle)."""
        chain = self.state[route].chain
        return None if chain is None else chain.stage

    # -- inputs --------------------------------------------------------------------------
    def _read_operators(self) -> None:
        batch = self._own.poll(10_000)
        for e in batch.to_pylist():
            st = self.state.get(e["route"])
            if st is not None and e["kind"] in ("paused", "resumed") and e["id"] not in st.seen:
                self._apply(from_record(e))

    def _read_monitor(self) -> list[LoopEvent]:
        taken: list[LoopEvent] = []
        while True:
            batch = self._monitor.poll(10_000)
            if not batch.num_rows:
                return taken
            for e in _rows(batch):
                if e["route"] not in self.routes:
                    continue
                payload = json.loads(e["payload"])
                ref = f"keel.monitor/{e[PARTITION]}/{e[OFFSET]}"
                if e["kind"] == "window":
                    taken += self._on_window(e["route"], ref, payload)
                elif e["kind"] == "reference":
                    taken += self._on_reference(e["route"], payload)

    def _read_traffic(self) -> list[LoopEvent]:
        taken: list[LoopEvent] = []
        while True:
            batch = self._traffic.poll(10_000)
            if not batch.num_rows:
                return taken
            for e in _rows(batch):
                if e["kind"] != "decision" or e["route"] not in self.routes:
                    continue
                ref = f"keel.traffic/{e[PARTITION]}/{e[OFFSET]}"
                taken += self._on_decision(e["route"], ref, json.loads(e["payload"]))

    # -- triggers ------------------------------------------------------------------------
    def _on_window(self, route: str, ref: str, window: dict[str, Any]) -> list[LoopEvent]:
        policy = self._policy(route)
        if window.get("version") != self._serving(route):
            return []  # scored against a version the route no longer serves
        reasons = []
        perf = window.get("performance")
        if "performance" in policy.on and perf and perf.get("alert"):
            reasons.append(
                f"estimated {perf['metric']} {perf['estimated']:.4f} over its level "
                f"{perf['threshold']:.4f} (healthy {perf['reference']:.4f})"
            )
        drifted = [f["feature"] for f in window.get("features", []) if f.get("drifted")]
        if "drift" in policy.on and len(drifted) >= policy.drift_features:
            names = ", ".join(d.split("__")[-1] for d in drifted[:4])
            more = f" and {len(drifted) - 4} more" if len(drifted) > 4 else ""
            reasons.append(f"{len(drifted)} features drifted ({names}{more})")
        if not reasons:
            return []
        detail = {"window": window.get("window"), "version": window.get("version")}
        return self._trigger(route, ref, "; ".join(reasons), detail)

    def _trigger(
        self, route: str, cause: str | None, reason: str, detail: dict[str, Any]
    ) -> list[LoopEvent]:
        st = self.state[route]
        trigger_id = f"trigger:{cause or f'schedule/{self.clock.now():.0f}'}"
        if trigger_id in st.seen or st.chain is not None:
            return []  # read again after a restart, or answered by the loop in flight
        policy = self._policy(route)
        now = self.clock.now()
        skip = None
        if st.paused:
            skip = "paused"
        elif st.requests and now - st.requests[-1] < policy.cooldown_s:
            until = _iso(st.requests[-1] + policy.cooldown_s)
            skip = f"cooling down until {until} (cooldown_s {policy.cooldown_s:g})"
        else:
            recent = [t for t in st.requests if now - t < DAY_S]
            if len(recent) >= policy.max_per_day:
                skip = (
                    f"budget spent: {len(recent)} jobs in the last 24 h (max_per_day "
                    f"{policy.max_per_day})"
                )
        if skip is not None:
            kind = skip.split(" ", 1)[0]
            if st.last_skip == kind:
                return []  # said once already
            return [
                self._emit(
                    route,
                    "skipped",
                    cause,
                    {"summary": f"{reason}: no job — {skip}", "reason": reason, "why": kind},
                    id=f"skipped:{cause or now}",
                )
            ]
        trigger = self._emit(
            route, "trigger", cause, {"summary": reason, "reason": reason, **detail}, id=trigger_id
        )
        return [trigger, *self._submit(route, trigger)]

    def _submit(self, route: str, trigger: LoopEvent) -> list[LoopEvent]:
        from keel.jobs.manager import submit

        policy = self._policy(route)
        model = self._model(route)
        name = f"loop-{route}-{hashlib.sha1(trigger.id.encode()).hexdigest()[:10]}"
        store = self.project.jobs
        # A controller that died between the trigger and this event submitted it already.
        job = next((j for j in store.list() if j.name == name), None)
        if job is None:
            now = self.clock.now()
            spec = self.project.job(
                policy.job,
                model,
                name=name,
                now=now,
                queue=policy.queue,
                argv=self._argv(policy, model, now),
            )
            job = submit(self.project.settings.jobs, store, spec, now=now)
        return [
            self._emit(
                route,
                "job",
                trigger.id,
                {
                    "summary": f"{policy.job} {model}: job {job.id} submitted to queue {job.queue}",
                    "job": job.id,
                    "kind": policy.job,
                    "model": model,
                    "queue": job.queue,
                },
            )
        ]

    def _argv(self, policy: LoopConfig, model: str, now: float) -> list[str] | None:
        """A retrain registers its version and moves nothing: the loop grades it first, then
        makes it the challenger. A fine-tune moves the challenger itself (None: its usual
        command)."""
        from keel.jobs.manager import keel_argv

        if policy.job != "retrain":
            return None
        argv = keel_argv(str(self.project.config_path), "retrain", model, now=now)
        if policy.holdout_s:
            argv += ["--holdout", f"{policy.holdout_s:g}s"]
        if policy.window_s:
            argv += ["--window", f"{policy.window_s:g}s"]
        return argv

    # -- progress ------------------------------------------------------------------------
    def _advance(self, route: str) -> list[LoopEvent]:
        st = self.state[route]
        chain = st.chain
        policy = self._policy(route)
        if chain is None:
            if "schedule" in policy.on and policy.every_s:
                last = st.requests[-1] if st.requests else self._started
                if self.clock.now() - last >= policy.every_s:
                    return self._trigger(
                        route, None, f"scheduled every {policy.every_s:g} s", {"schedule": True}
                    )
            return []
        if chain.stage == "job" and chain.job is not None:
            return self._job_progress(route, chain)
        if chain.stage == "promoted":
            return self._swapped(route, chain)
        return []

    def _job_progress(self, route: str, chain: _Chain) -> list[LoopEvent]:
        job = self.project.jobs.get(chain.job)
        if not job.state.finished:
            return []
        done = self._emit(
            route,
            "job_done",
            chain.last,
            {
                "summary": f"job {job.id} {job.state}"
                + (f": {job.reason}" if job.reason and job.reason != job.state else ""),
                "state": str(job.state),
                "job": job.id,
            },
        )
        if job.state is not JobState.SUCCEEDED:
            return [done, self._close(route, done, f"no candidate: the job {job.state}")]
        model = self._model(route)
        version = version_of(self.project.registry, model, job.id)
        if version is None:
            return [done, self._close(route, done, "the job registered no version")]
        graded = self._grade(route, version)
        if graded is not None and not graded["better"]:
            reject = self._emit(
                route,
                "decision",
                done.id,
                {
                    "summary": f"reject {version.ref} before its shadow: {graded['reason']}",
                    "action": "reject",
                    "reason": graded["reason"],
                    "holdout": graded,
                },
            )
            return [done, reject, self._close(route, reject, f"{version.ref} rejected")]
        registry = self.project.registry
        if registry.aliases(model).get("challenger") != version.version:
            registry.set_alias(
                model, "challenger", version.version, reason=f"keel loop {route} ({chain.trigger})"
            )
        shadow = self.routes[route].shadow
        candidate = self._emit(
            route,
            "candidate",
            done.id,
            {
                "summary": f"{version.ref} is {model}@challenger"
                + (f" ({graded['reason']})" if graded else "")
                + "; the route shadows it"
                + (f" ({shadow.compare}, tolerance {shadow.tolerance:g})" if shadow else ""),
                "version": version.ref,
                "holdout": graded,
            },
        )
        return [done, candidate]

    def _grade(self, route: str, version: Any) -> dict[str, Any] | None:
        """The retrain's holdout ``metric`` beside the serving version's on the same rows
        (None when it was not graded: another job kind, or a parent of other inputs)."""
        metric = self._policy(route).metric
        baseline = (version.lineage.get("training") or {}).get("parent_holdout")
        if not baseline or metric not in version.metrics or metric not in baseline["metrics"]:
            return None
        ours, theirs = float(version.metrics[metric]), float(baseline["metrics"][metric])
        lower = metric in LOWER_IS_BETTER
        better = ours < theirs if lower else ours > theirs
        rows = version.metrics.get("holdout_rows")
        where = f"on the freshest {rows:,} settled rows" if rows else "on its holdout"
        return {
            "metric": metric,
            "candidate": ours,
            "serving": theirs,
            "serving_version": baseline["version"],
            "better": better,
            "reason": f"{where}, {metric} {ours:.4f} against {baseline['version']}'s {theirs:.4f}",
        }

    def _on_decision(self, route: str, ref: str, decision: dict[str, Any]) -> list[LoopEvent]:
        st = self.state[route]
        chain = st.chain
        evidence = decision.get("evidence") or {}
        if chain is None or chain.stage != "candidate" or f"decision:{ref}" in st.seen:
            return []
        if evidence.get("candidate") != chain.candidate:
            return []
        action = decision.get("action")
        if action not in ("promote", "reject"):
            return []
        event = self._emit(
            route,
            "decision",
            chain.last,
            {
                "summary": f"{action} {chain.candidate}: {decision.get('reason', '')}",
                "action": action,
                "reason": decision.get("reason", ""),
                "labels": evidence.get("labels"),
                "samples": evidence.get("samples"),
            },
            id=f"decision:{ref}",
        )
        if action == "reject":
            return [event, self._close(route, event, f"{chain.candidate} rejected")]
        return [event, *self._swapped(route, st.chain)]

    def _swapped(self, route: str, chain: _Chain | None) -> list[LoopEvent]:
        if chain is None or chain.candidate is None:
            return []
        if self._serving(route) != chain.candidate:
            return []  # the alias has not moved yet
        cfg = self.routes[route]
        event = self._emit(
            route,
            "swap",
            chain.last,
            {
                "summary": f"{cfg.model} → {chain.candidate}: the route hot-swaps to it",
                "version": chain.candidate,
            },
        )
        if cfg.monitor is None:
            return [event, self._close(route, event, "not monitored: the loop ends here")]
        return [event]

    def _on_reference(self, route: str, reference: dict[str, Any]) -> list[LoopEvent]:
        chain = self.state[route].chain
        if chain is None or chain.stage != "swapped" or reference.get("version") != chain.candidate:
            return []
        return [
            self._emit(
                route,
                "monitoring",
                chain.last,
                {
                    "summary": f"the monitor follows {chain.candidate}: its training set is "
                    "the reference, its loss estimator judges the windows",
                    "version": chain.candidate,
                },
            )
        ]

    def _close(self, route: str, cause: LoopEvent, why: str) -> LoopEvent:
        return self._emit(route, "closed", cause.id, {"summary": why})

    # -- state ---------------------------------------------------------------------------
    def _emit(
        self,
        route: str,
        kind: str,
        cause: str | None,
        payload: dict[str, Any],
        *,
        id: str | None = None,
    ) -> LoopEvent:
        """Write one step to the trail (at once: a later step's side effect must find it
        there after a crash), then apply it to the state."""
        event = LoopEvent(
            route,
            id or f"{kind}:{route}:{hashlib.sha1(f'{cause}|{kind}'.encode()).hexdigest()[:12]}",
            cause,
            kind,
            datetime.fromtimestamp(self.clock.now(), UTC),
            payload,
        )
        publish(self.log, [event])
        self._apply(event)
        logger.info("route %s: %s — %s", route, kind, event.summary)
        return event

    def _apply(self, e: LoopEvent) -> None:
        """Fold one trail event into the route's state (live, and when replaying)."""
        st = self.state[e.route]
        st.seen.add(e.id)
        if e.kind == "paused":
            st.paused = True
        elif e.kind == "resumed":
            st.paused = False
        elif e.kind == "skipped":
            st.last_skip = e.payload.get("why")
        elif e.kind == "trigger":
            st.chain = _Chain(trigger=e.id, last=e.id)
        elif st.chain is not None and e.kind != "skipped":
            chain = st.chain
            chain.last = e.id
            if e.kind == "job":
                chain.stage, chain.job = "job", e.payload["job"]
                st.requests.append(e.at.timestamp())
                st.last_skip = None
            elif e.kind == "candidate":
                chain.stage, chain.candidate = "candidate", e.payload["version"]
            elif e.kind == "decision" and e.payload.get("action") == "promote":
                chain.stage = "promoted"
            elif e.kind == "swap":
                chain.stage = "swapped"
            if e.kind in CLOSING:
                st.chain = None

    def _policy(self, route: str) -> LoopConfig:
        policy = self.routes[route].loop
        if policy is None:  # only routes with a loop are kept
            raise ValidationError(f"route {route!r} has no [routes.loop] block")
        return policy

    def _model(self, route: str) -> str:
        return self._policy(route).model or self.routes[route].model.partition("@")[0]

    def _serving(self, route: str) -> str | None:
        """The version the route's model reference resolves to now."""
        name, _, alias = self.routes[route].model.partition("@")
        try:
            return self.project.registry.get(name, alias).ref
        except NotFoundError:
            return None


def version_of(registry: Any, model: str, job: str) -> Any:
    """The version of ``model`` that job ``job`` registered (None if it registered none):
    recorded in its training lineage, or named by the challenger move it made (a
    fine-tune)."""
    for v in reversed(registry.versions(model)):
        if (v.lineage.get("training") or {}).get("job") == job:
            return v
    moves = registry.alias_history(model, "challenger")
    number = next((m.to_version for m in reversed(moves) if job_in(m.reason) == job), None)
    return None if number is None else registry.get(model, number)


def pause(project: Any, route: str, *, by: str = "operator", clock: Clock | None = None) -> None:
    """Pause a route's loop: triggers are recorded as skipped until :func:`resume`."""
    _operator(project, route, "paused", by, clock)


def resume(project: Any, route: str, *, by: str = "operator", clock: Clock | None = None) -> None:
    """Resume a paused route's loop."""
    _operator(project, route, "resumed", by, clock)


def _operator(project: Any, route: str, kind: str, by: str, clock: Clock | None) -> None:
    routes = {r.name: r for r in project.settings.routes}
    if route not in routes or routes[route].loop is None:
        looped = [n for n, r in routes.items() if r.loop is not None]
        raise ValidationError(
            f"route {route!r} has no [routes.loop] block{did_you_mean(route, looped)}; routes "
            f"with a loop: {', '.join(looped) or 'none'}"
        )
    now = (clock or SystemClock()).now()
    project.log.create_topic(LOOP, exist_ok=True)
    publish(
        project.log,
        [
            LoopEvent(
                route,
                f"{kind}:{route}:{now:.6f}",
                None,
                kind,
                datetime.fromtimestamp(now, UTC),
                {"summary": f"{kind} by {by}", "by": by},
            )
        ],
    )


def _rows(batch: Any) -> list[dict[str, Any]]:
    return batch.to_pylist()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="minutes")
