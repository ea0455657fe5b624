"""A server's canaries and shadows: which versions beside a route's primary take requests or
copies of them, the evidence they gather, and the settings made while serving — kept on the
traffic topic, so a restart resumes them.

:class:`~keel.serving.server.InferenceServer` owns routes, batchers and hot swaps; it hands
each request's canary or shadow part to its :class:`TrafficManager`, and its
``set_traffic``, ``traffic``, ``snapshot``, ``publish`` and ``shadows_idle`` are this class's.
"""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from keel.config import CanaryConfig, ShadowConfig
from keel.errors import KeelError, NotFoundError, ValidationError
from keel.log import Topic
from keel.runtimes.recommend import RANKING, is_recommender
from keel.serving.routes import Deployed, Prediction, Route, RouteConfig, Rows, Tensors
from keel.serving.shadowing import ShadowRunner
from keel.serving.traffic import (
    CanaryStats,
    ShadowState,
    bucket,
    canary_evidence,
    check_compare,
    check_ramp,
    traffic_fingerprint,
)
from keel.serving.traffic_log import TrafficIndex

if TYPE_CHECKING:
    from keel.serving.server import InferenceServer

__all__ = ["SNAPSHOT_S", "TRAFFIC", "UNSET", "TrafficManager", "publish", "runtime_traffic"]

#: Traffic settings, shadow evidence snapshots and controller decisions, in order.
TRAFFIC = Topic(
    "keel.traffic",
    {"ts": "timestamp", "route": "string", "kind": "string", "payload": "string"},
    event_time="ts",
    key="route",
)
SNAPSHOT_S = 2.0  # clock seconds between persisted snapshots of shadow evidence
UNSET: Any = object()

logger = logging.getLogger(__name__)


def publish(log: Any, route: str, kind: str, payload: dict[str, Any], *, at: float) -> None:
    """One event on the traffic topic of ``log``: what a server writes, and what an operator
    acting without one (``keel traffic promote``, the console) writes in its place."""
    log.append(
        TRAFFIC.name,
        [
            {
                "ts": datetime.fromtimestamp(at, UTC),
                "route": route,
                "kind": kind,
                "payload": json.dumps(payload, default=str),
            }
        ],
    )


def runtime_traffic(
    index: TrafficIndex, cfg: RouteConfig, configured: str | None = None
) -> tuple[CanaryConfig | None, ShadowConfig | None, str] | None:
    """The route's last canary and shadow set at runtime, and when they were set, if they win
    over ``cfg``'s (whose fingerprint is ``configured``; computed when not given): they do
    while the configured ones are those the setting was made over (see
    :meth:`~keel.serving.server.InferenceServer.add`). None: the configured ones are served."""
    if configured is None:
        configured = traffic_fingerprint(cfg.canary, cfg.shadow)
    last = index.last(cfg.name, "traffic_set")
    if last is None:
        return None
    if last.get("configured") != configured:
        logger.info(
            "route %s: its canary and shadow were set at runtime at %s, over other "
            "configured ones; serving the configured ones (which changed since)",
            cfg.name,
            last["at"],
        )
        return None
    try:
        canary = None if last["canary"] is None else msgspec.convert(last["canary"], CanaryConfig)
        shadow = None if last["shadow"] is None else msgspec.convert(last["shadow"], ShadowConfig)
    except (msgspec.ValidationError, KeelError) as exc:
        raise ValidationError(
            f"route {cfg.name!r}: the canary and shadow set at runtime at {last['at']} "
            f"do not read as settings ({exc}); change the route's canary or shadow in "
            "keel.toml to serve the file's instead"
        ) from None
    if (canary, shadow) != (cfg.canary, cfg.shadow):
        logger.info(
            "route %s: serving the canary (%s) and shadow (%s) set at runtime at %s, not "
            "the configured ones (unchanged since; change them to serve them instead)",
            cfg.name,
            "none" if canary is None else f"{canary.model} at {canary.percent:g}%",
            "none" if shadow is None else shadow.model,
            last["at"],
        )
    return canary, shadow, last["at"]


class TrafficManager:
    """The canaries and shadows of ``server``'s routes (see the module's docstring)."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        self.log = server.log
        self._rng = random.Random()
        self._last_snapshot: dict[str, float] = {}
        # Per route: the fingerprint of the canary and shadow it was configured with, and
        # whether those or settings made at runtime are served.
        self._configured: dict[str, str] = {}
        self._source: dict[str, str] = {}
        self._index = None if self.log is None else TrafficIndex(self.log, TRAFFIC.name)
        if self.log is not None:
            self.log.create_topic(TRAFFIC, exist_ok=True)

    # -- settings --------------------------------------------------------------------------
    def settings_for(self, cfg: RouteConfig) -> tuple[RouteConfig, str, str | None]:
        """``cfg`` with the canary and shadow it should serve — the last ones set at runtime
        when ``cfg``'s are the ones that setting was made over — the fingerprint of ``cfg``'s
        own, and when the runtime ones were set (None: the configured ones are served).
        Nothing is recorded until :meth:`adopt`."""
        configured = traffic_fingerprint(cfg.canary, cfg.shadow)
        runtime = self._runtime(cfg, configured)
        if runtime is None:
            return cfg, configured, None
        canary, shadow, at = runtime
        return msgspec.structs.replace(cfg, canary=canary, shadow=shadow), configured, at

    def adopt(self, name: str, configured: str, runtime_at: str | None) -> None:
        """The route now serves what :meth:`settings_for` gave."""
        self._configured[name] = configured
        self._source[name] = "configured" if runtime_at is None else "runtime"

    def _runtime(
        self, cfg: RouteConfig, configured: str
    ) -> tuple[CanaryConfig | None, ShadowConfig | None, str] | None:
        return None if self._index is None else runtime_traffic(self._index, cfg, configured)

    def start(self, route: Route, runtime_at: str | None) -> None:
        """Load and check a new route's canary and shadow (``runtime_at``: when they were
        set at runtime, None when configured)."""
        cfg = route.config
        shadow = cfg.shadow
        if shadow is not None and self._unset_alias(shadow.model):
            # A route may shadow an alias before anything is there (the loop's first retrain
            # moves it): it serves, and the registry watch loads the candidate once it is.
            logger.info(
                "route %s: no %s yet; its shadow starts when it is set", cfg.name, shadow.model
            )
            shadow = None
        try:
            self.apply(route, cfg.canary, shadow)
        except KeelError as exc:
            if runtime_at is None:
                raise
            raise type(exc)(
                f"route {cfg.name!r}: the canary or shadow set at runtime at {runtime_at} "
                f"cannot be served: {exc}. Change the route's canary or shadow in keel.toml "
                "to serve the file's instead"
            ) from exc

    def set(self, name: str, *, canary: Any = UNSET, shadow: Any = UNSET) -> None:
        """Change a route's canary and/or shadow while it serves. Everything new is loaded
        and checked first: a bad setting raises, and the running split stays as it was."""
        server = self.server
        route = server.route(name)
        cfg = route.config
        new_canary = cfg.canary if canary is UNSET else canary
        new_shadow = cfg.shadow if shadow is UNSET else shadow
        self.apply(route, new_canary, new_shadow)
        route.config = msgspec.structs.replace(cfg, canary=new_canary, shadow=new_shadow)
        server.configs[name] = route.config
        self._source[name] = "runtime"
        self.publish(
            name,
            "traffic_set",
            {
                "canary": None if new_canary is None else msgspec.to_builtins(new_canary),
                "shadow": None if new_shadow is None else msgspec.to_builtins(new_shadow),
                # What the route was configured with: a restart honours this setting only
                # while that configuration is unchanged (see InferenceServer.add).
                "configured": self._configured[name],
            },
        )

    def _unset_alias(self, model: str) -> bool:
        """Whether ``model`` names an alias (``name@alias``) that is not set yet."""
        registry = self.server.registry
        name, _, ref = model.partition("@")
        if registry is None or not ref or ref.isdigit() or ref == "latest":
            return False
        try:
            return ref not in registry.aliases(name)
        except NotFoundError:
            return True  # no version of the model at all yet

    def apply(self, route: Route, canary: CanaryConfig | None, shadow: ShadowConfig | None) -> None:
        """Load and check ``canary`` and ``shadow`` for ``route``, then switch to them."""
        server = self.server
        canary_dep = shadow_dep = None
        if canary is not None:
            check_ramp(route.name, route.config.model, canary)
            if canary.percent:  # 0: rolled back (and never None once the config is built)
                canary_dep = self._load_same_kind(route, canary.model)
        if shadow is not None:
            shadow_dep = self._load_same_kind(route, shadow.model)
            check_compare(
                shadow.compare,
                route.current.sample_output or {},
                ranking=is_recommender(route.current.runtime),
            )
        # Everything is loaded and checked: switch.
        before = route.config.canary
        if canary is None or canary_dep is None:
            route.canary, route.canary_stats = None, None
        elif (
            route.canary is None
            or route.canary.version != canary_dep.version
            or before is None
            or before.percent != canary.percent
        ):
            # Evidence is per share: a ramp judges each step on its own requests and time.
            route.canary = canary_dep
            route.canary_stats = CanaryStats(started_at=server.clock.now())
            if route.canary_batcher is None:
                route.canary_batcher = server.batcher_for(route, lambda: route.canary, "-canary")
        if shadow_dep is None or shadow_dep.version == route.current.version:
            # (A shadow alias pointing at the version served — after its promotion — has
            # nothing to compare until the next candidate moves it.)
            route.shadow, route.shadow_state = None, None
            return
        if route.shadow_runner is None:
            route.shadow_runner = ShadowRunner(
                route,
                server.features,
                self.snapshot,
                log=self.log,
                registry=server.registry,
                indexes=server.indexes,
            )
        route.shadow_runner.prepare(shadow_dep)
        route.shadow = shadow_dep
        state = route.shadow_state
        if state is None or state.candidate != shadow_dep.version:
            route.shadow_state = self._restore(
                route.name, shadow_dep.version, route.current.version
            )

    def _load_same_kind(self, route: Route, model: str) -> Deployed:
        dep = self.server.load_for(route.config, model)
        want = [(s.name, s.datatype) for s in route.current.runtime.inputs]
        got = [(s.name, s.datatype) for s in dep.runtime.inputs]
        if want != got:
            raise ValidationError(
                f"route {route.name!r}: {dep.version} takes inputs {got}, the route's model "
                f"{want}; a canary or shadow must take the same requests"
            )
        return dep

    def _restore(self, route: str, candidate: str, primary: str) -> ShadowState:
        """The latest evidence for this candidate from the traffic topic, or a fresh start."""
        latest = None
        for event in self.events(route, "shadow_stats"):
            if event["candidate"] == candidate:
                latest = event
        if latest is not None and latest["status"] == "comparing":
            return ShadowState.from_dict(latest)
        return ShadowState(route, candidate, primary, self.server.clock.now())

    def follow_shadow(self, name: str, shadow: ShadowConfig) -> None:
        """The alias a route shadows moved (``keel train --shadow``): load the new candidate
        beside the old one; the old keeps the shadow if the new one fails to load. The
        route's shadow settings as they are now are kept (one set while the event waited
        wins over the ones it was read with)."""
        route = self.server.routes.get(name)
        if route is not None and route.config.shadow is not None:
            shadow = route.config.shadow
            try:
                target = self.server.registry.get(*shadow.model.split("@", 1)).ref
            except KeelError:
                target = None
            if route.shadow is not None and route.shadow.version == target:
                return  # already compared
        try:
            self.set(name, shadow=shadow)
        except Exception:
            logger.exception("route %s: the shadow's new candidate %s failed", name, shadow.model)

    def promoted(self, route: Route, version: str) -> None:
        """``version`` became the route's primary: a shadow comparing it is done."""
        st = route.shadow_state
        if st is not None and st.candidate == version and st.status == "comparing":
            st.status = "promoted"
            self.snapshot(route, force=True)

    # -- the traffic topic ----------------------------------------------------------------
    def events(self, route: str, kind: str) -> list[dict[str, Any]]:
        """The route's latest events of ``kind`` (see :class:`TrafficIndex` for which are
        kept), oldest first."""
        return [] if self._index is None else self._index.events(route, kind)

    def publish(self, route: str, kind: str, payload: dict[str, Any]) -> None:
        """An event on the traffic topic (settings, evidence snapshots, decisions)."""
        if self.log is None:
            return
        publish(self.log, route, kind, payload, at=self.server.clock.now())

    def snapshot(self, route: Route, force: bool = False) -> None:
        """Persist the shadow evidence (at most every SNAPSHOT_S clock seconds)."""
        st = route.shadow_state
        if st is None:
            return
        now = self.server.clock.now()
        if force or now - self._last_snapshot.get(route.name, -1e18) >= SNAPSHOT_S:
            self._last_snapshot[route.name] = now
            self.publish(route.name, "shadow_stats", st.to_dict())

    # -- requests ---------------------------------------------------------------------------
    def takes(self, route: Route, payload: Tensors | Rows, key: str | None) -> bool:
        """Whether the route's canary takes this request (its entity key falls in the
        canary's share)."""
        canary = route.config.canary
        if route.canary is None or canary is None:
            return False
        assert canary.percent is not None  # CanaryConfig.__post_init__ fills it in
        entity = route.entity_key(payload, key)
        return entity is not None and bucket(entity) < canary.percent

    async def canary(
        self,
        route: Route,
        payload: Tensors | Rows,
        deadline_ms: float | None,
        priority: int,
        started: float,
    ) -> Prediction:
        """Answer a request with the route's canary, counting it in the canary's evidence."""
        deployed, stats = route.canary, route.canary_stats
        version = deployed.version if deployed is not None else route.current.version
        status = "ok"
        try:
            if route.canary_batcher is None:
                raise NotFoundError(f"route {route.name!r} has no canary")
            result = await route.canary_batcher.submit(
                payload,
                deadline_s=None if deadline_ms is None else deadline_ms / 1000,
                priority=priority,
            )
            if route.predictions is not None:
                route.predictions.offer(
                    payload,
                    result.used,
                    result.outputs,
                    result.version,
                    (time.perf_counter() - started) * 1000,
                    result.staleness,
                )
            return Prediction(result.outputs, result.version, result.staleness)
        except Exception as exc:
            status = type(exc).__name__
            raise
        finally:
            seconds = time.perf_counter() - started
            if stats is not None:
                stats.record(status == "ok", seconds * 1000)
            self.server.metrics.observe_request(route.name, version, status, seconds)

    def shadow(
        self,
        route: Route,
        payload: Tensors | Rows,
        used: Tensors,
        outputs: dict[str, Any],
        started: float,
    ) -> None:
        """Offer a sampled copy of an answered request to the route's shadow."""
        shadow, st = route.config.shadow, route.shadow_state
        if (
            route.shadow_runner is None
            or route.shadow is None
            or shadow is None
            or st is None
            or st.status != "comparing"
            or self._rng.random() >= shadow.sample
            or (shadow.compare == "overlap" and RANKING[0] not in outputs)
        ):
            # (item lists are compared by their overlap; a pair's score has none)
            return
        # The candidate gets the very input the primary saw when it reads the same features
        # (no second feature lookup); otherwise the request itself, joined for it.
        same = getattr(route.shadow.runtime, "feature_names", None) == getattr(
            route.current.runtime, "feature_names", None
        )
        # After the answer, and off the event loop: the runner's thread does the rest.
        route.shadow_runner.offer(
            used if same else payload,
            outputs,
            (time.perf_counter() - started) * 1000,
            source=payload,
        )

    def idle(self) -> bool:
        """Whether every shadow copy taken so far has been compared."""
        return all(
            r.shadow_runner is None or r.shadow_runner.idle for r in self.server.routes.values()
        )

    def report(self, name: str) -> dict[str, Any]:
        """The live split, the shadow comparison so far, and the last decisions."""
        route = self.server.route(name)
        cfg = route.config
        now = self.server.clock.now()
        out: dict[str, Any] = {
            "route": name,
            "primary": route.current.version,
            "canary": None,
            "shadow": None,
            "settings": self._source.get(name, "configured"),  # or "runtime"
            "decisions": self.events(name, "decision")[-5:],
        }
        if cfg.canary is not None:
            out["canary"] = canary_evidence(
                cfg.canary,
                route.canary_stats,
                now,
                route=name,
                serving=None if route.canary is None else route.canary.version,
            )
        if cfg.shadow is not None and route.shadow_state is not None:
            out["shadow"] = route.shadow_state.summary(cfg.shadow, now)
        return out
