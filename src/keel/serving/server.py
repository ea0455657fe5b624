"""The inference server's state: routes, their batchers, hot swaps, metrics.

Independent of HTTP (see :mod:`keel.serving.app`): a route is predicted through
:meth:`InferenceServer.infer`, swapped through :meth:`InferenceServer.reload`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from keel.clock import Clock, SystemClock
from keel.config import CanaryConfig, ShadowConfig
from keel.errors import (
    KeelError,
    NotFoundError,
    UnavailableError,
    ValidationError,
    did_you_mean,
)
from keel.log import Topic
from keel.runtimes.recommend import RANKING, is_recommender
from keel.serving.batcher import Batcher
from keel.serving.explaining import Explanations
from keel.serving.predictions import PredictionLog, prediction_columns
from keel.serving.retrieval import USER, check_route
from keel.serving.routes import (
    Deployed,
    Prediction,
    Route,
    RouteConfig,
    Rows,
    Tensors,
    load,
    run_batch,
)
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

__all__ = ["TRAFFIC", "UNSET", "InferenceServer", "NotTrained"]


class NotTrained(UnavailableError):
    """A route whose model has no version to serve yet."""


class _NoModel(NotFoundError):
    """The route's own model (not its canary's or shadow's) has no such version."""


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

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "keel_requests",
            "Requests per route, version and status",
            ["route", "version", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "keel_request_latency_seconds",
            "Request latency",
            ["route", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "keel_batch_size",
            "Requests per forward pass",
            ["route", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue = Gauge("keel_queue_depth", "Requests waiting per route", ["route"], registry=r)
        self.staleness = Gauge(
            "keel_feature_staleness_seconds",
            "Staleness of the features last served",
            ["route", "feature"],
            registry=r,
        )
        self.swaps = Counter(
            "keel_swaps", "Hot swaps per route and outcome", ["route", "outcome"], registry=r
        )


class InferenceServer:
    """Routes of loaded models, with micro-batching, hot swap and metrics.

    ``indexes`` (an :class:`~keel.index.IndexStore`) holds each recommender version's vector
    index; a recommender served without one gets an index built from its own catalogue.

    With a log, a route's canary and shadow survive a restart: see :meth:`add`."""

    def __init__(
        self,
        configs: Sequence[RouteConfig],
        *,
        registry: Any = None,
        features: Any = None,
        log_: Any = None,
        follow_features: bool = False,
        clock: Clock | None = None,
        features_at: Callable[[], float] | None = None,
        indexes: Any = None,
    ) -> None:
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValidationError("route names must be unique")
        self.configs = {c.name: c for c in configs}
        self.registry = registry
        self.features = features
        self.indexes = indexes
        self.log = log_
        self.routes: dict[str, Route] = {}
        self.metrics = Metrics()
        self.started = time.time()
        self.follow_features = follow_features
        self.clock = clock or SystemClock()
        self.features_at = features_at  # when joined features are looked up (None: now)
        self._rng = random.Random()
        self._last_snapshot: dict[str, float] = {}
        # Per route: the fingerprint of the canary and shadow it was configured with, and
        # whether those or settings made at runtime are served.
        self._configured: dict[str, str] = {}
        self._source: dict[str, str] = {}
        self._traffic = None if log_ is None else TrafficIndex(log_, TRAFFIC.name)
        if log_ is not None:
            log_.create_topic(TRAFFIC, exist_ok=True)
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.explanations = Explanations(self)
        #: Routes with no model version to serve yet, and why.
        self.pending: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------------------
    def load_all(self) -> None:
        """Load and warm every route's model (before taking traffic). A route whose model
        has no version yet (a fresh project: nothing trained) does not stop the others: it
        answers 503 saying so, and loads once a version is registered or its alias moves."""
        for cfg in list(self.configs.values()):
            try:
                self.add(cfg)
            except _NoModel as exc:
                if self.registry is None or cfg.model.startswith("builtin:"):
                    raise
                self.pending[cfg.name] = str(exc)
                logger.warning("route %s: nothing to serve yet (%s)", cfg.name, exc)

    def add(self, cfg: RouteConfig) -> Route:
        """Load and warm a route (replacing one of the same name) before it takes traffic.

        With a log, the route's canary and shadow are the last ones set at runtime
        (:meth:`set_traffic`: an operator, or the controller's rollbacks and ramp steps)
        rather than ``cfg``'s, as long as ``cfg``'s are the ones that runtime setting was
        made over: each ``traffic_set`` event records the fingerprint of the configured
        canary and shadow (:func:`~keel.serving.traffic.traffic_fingerprint`). An operator
        who edits a route's canary or shadow in ``keel.toml`` and restarts gets the file's;
        one who restarts without touching them keeps what was set while serving (a canary
        rolled back stays at 0%, a ramp resumes at its step). The server log says which."""
        configured = traffic_fingerprint(cfg.canary, cfg.shadow)
        runtime = self._runtime_traffic(cfg, configured)
        if runtime is not None:
            cfg = msgspec.structs.replace(cfg, canary=runtime[0], shadow=runtime[1])
        try:
            deployed = self._load(cfg, cfg.model)
        except NotFoundError as exc:
            raise _NoModel(str(exc)) from None
        fast = None
        if cfg.fast_path is not None:
            fast = load(cfg.fast_path.model, self.registry, device="cpu", indexes=self.indexes)
        route = Route(cfg, deployed, fast)
        route.features_at = self.features_at
        if cfg.features and self.features is not None:
            route.join_keys = list(
                dict.fromkeys(v.entity.join_key for v, _ in self.features.resolve(cfg.features))
            )
        if is_recommender(deployed.runtime) and USER not in route.join_keys:
            route.join_keys.append(USER)  # a canary split stays sticky per user
        route.batcher = self._batcher(route, lambda: route.current)
        shadow = cfg.shadow
        if shadow is not None and self._unset_alias(shadow.model):
            # A route may shadow an alias before anything is there (the loop's first retrain
            # moves it): it serves, and the registry watch loads the candidate once it is.
            logger.info(
                "route %s: no %s yet; its shadow starts when it is set", cfg.name, shadow.model
            )
            shadow = None
        try:
            self._apply_traffic(route, cfg.canary, shadow)
        except KeelError as exc:
            if runtime is None:
                raise
            raise type(exc)(
                f"route {cfg.name!r}: the canary or shadow set at runtime at {runtime[2]} "
                f"cannot be served: {exc}. Change the route's canary or shadow in keel.toml "
                "to serve the file's instead"
            ) from exc
        if cfg.monitor is not None and self.log is not None:
            route.predictions = PredictionLog(
                cfg.name,
                self.log,
                prediction_columns(deployed, self._joined(cfg), route.join_keys),
                cfg.monitor,
                clock=self.clock,
            )
        old = self.routes.get(cfg.name)
        self.routes[cfg.name] = route
        self.configs[cfg.name] = cfg
        self._configured[cfg.name] = configured
        self._source[cfg.name] = "configured" if runtime is None else "runtime"
        if old is not None and old.batcher is not None and self._loop is not None:
            # New requests reach the new route from here on; the old one answers its own.
            asyncio.run_coroutine_threadsafe(old.batcher.drain(), self._loop)
        if old is not None and old.predictions is not None:
            old.predictions.close()
        self.explanations.follow(route)
        return route

    def _runtime_traffic(
        self, cfg: RouteConfig, configured: str
    ) -> tuple[CanaryConfig | None, ShadowConfig | None, str] | None:
        """The route's last runtime canary and shadow, and when they were set, if they win
        over ``cfg``'s (whose fingerprint is ``configured``); see :meth:`add`."""
        last = None if self._traffic is None else self._traffic.last(cfg.name, "traffic_set")
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
            canary = (
                None if last["canary"] is None else msgspec.convert(last["canary"], CanaryConfig)
            )
            shadow = (
                None if last["shadow"] is None else msgspec.convert(last["shadow"], ShadowConfig)
            )
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

    def _load(self, cfg: RouteConfig, model: str) -> Deployed:
        """Load and warm ``model`` for route ``cfg``, and check that the route can serve it."""
        deployed = load(
            model, self.registry, device=cfg.device, threads=cfg.threads, indexes=self.indexes
        )
        if is_recommender(deployed.runtime):
            check_route(cfg, deployed.runtime, self._joined(cfg), self.features)
        return deployed

    def _joined(self, cfg: RouteConfig) -> list[str]:
        """The names of the features a route joins (``view__feature``)."""
        if not cfg.features or self.features is None:
            return []
        return self.features.columns(cfg.features)

    def _batcher(
        self, route: Route, deployed: Callable[[], Deployed | None], suffix: str = ""
    ) -> Batcher:
        """A batcher for one of the route's versions (``deployed`` is read once per batch,
        so a swap takes effect at the next batch)."""
        cfg = route.config
        metrics = self.metrics

        def on_batch(size: int, _seconds: float) -> None:
            current = deployed()
            if current is not None:
                metrics.batch.labels(cfg.name, current.version).observe(size)

        return Batcher(
            lambda payloads: run_batch(route, payloads, self.features, deployed()),
            max_batch_size=cfg.max_batch_size if cfg.batching else 1,
            max_wait_ms=cfg.max_wait_ms,
            max_queue=cfg.max_queue,
            name=cfg.name + suffix,
            on_batch=on_batch,
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.follow_features and self.features is not None:
            # The online store is kept fresh in this process (memory:// lives here).
            self._follower = threading.Thread(
                target=self.features.follow,
                args=(self._watch_stop,),
                name="keel-materializer",
                daemon=True,
            )
            self._follower.start()
        if self.log is not None and self.registry is not None:
            self._watcher = threading.Thread(
                target=self._watch, name="keel-registry-watch", daemon=True
            )
            self._watcher.start()

    async def stop(self) -> None:
        self._watch_stop.set()
        self.explanations.close()
        for route in self.routes.values():
            self.snapshot(route, force=True)
            for b in (route.batcher, route.canary_batcher):
                if b is not None:
                    await b.close()
            if route.shadow_runner is not None:
                await asyncio.to_thread(route.shadow_runner.close)
            if route.predictions is not None:
                await asyncio.to_thread(route.predictions.close)

    def route(self, name: str) -> Route:
        try:
            return self.routes[name]
        except KeyError:
            if name in self.pending:
                raise NotTrained(
                    f"route {name!r} has no model to serve yet: {self.pending[name]}. Train "
                    f"one (keel train {self.configs[name].model.partition('@')[0]} --alias "
                    f"{self.configs[name].model.partition('@')[2] or 'champion'}); the route "
                    "loads it then"
                ) from None
            raise NotFoundError(
                f"no route {name!r}{did_you_mean(name, self.routes)}; routes: "
                f"{', '.join(self.routes) or 'none'}"
            ) from None

    # -- predicting ----------------------------------------------------------------------
    async def infer(
        self,
        name: str,
        payload: Tensors | Rows,
        *,
        deadline_ms: float | None = None,
        priority: int = 0,
        key: str | None = None,
        version: str | None = None,
    ) -> Prediction:
        """Run one request on a route; returns (outputs, version, staleness or None).

        A canary takes the request when its entity key falls in the canary's share; a
        shadow gets a copy of sampled requests after this one is answered. A request that
        names a ``version`` runs on it: the primary's or the canary's, 404 for any other."""
        route = self.route(name)
        started = time.perf_counter()
        canary = route.config.canary
        if version is not None:
            if self.check_version(route, version) != route.current.version:
                return await self._canary(route, payload, deadline_ms, priority, started)
        elif route.canary is not None and canary is not None:
            assert canary.percent is not None  # CanaryConfig.__post_init__ fills it in
            entity = route.entity_key(payload, key)
            if entity is not None and bucket(entity) < canary.percent:
                return await self._canary(route, payload, deadline_ms, priority, started)
        version = route.current.version
        status = "ok"
        try:
            fast = route.config.fast_path
            if (
                fast is not None
                and route.fast is not None
                and deadline_ms is not None
                and deadline_ms < fast.below_ms
            ):
                fast_route = Route(
                    RouteConfig(name=name, model=fast.model, features=fast.features), route.fast
                )
                fast_route.features_at = route.features_at
                result = await asyncio.to_thread(
                    run_batch, fast_route, [payload], self.features, route.fast
                )
                answer = result[0]
                if isinstance(answer, BaseException):
                    raise answer
                # Another model with its own inputs: not the route's version that the
                # prediction log, the monitor and a shadow comparison are about.
                version = answer.version
                return Prediction(answer.outputs, answer.version, answer.staleness)
            else:
                self.metrics.queue.labels(name).set(route.batcher.depth)
                outputs, version, stale, used = await route.batcher.submit(
                    payload,
                    deadline_s=None if deadline_ms is None else deadline_ms / 1000,
                    priority=priority,
                )
            if stale:
                for feature, values in stale.items():
                    known = [v for v in values if v is not None]
                    if known:
                        self.metrics.staleness.labels(name, feature).set(max(known))
            self._maybe_shadow(route, payload, used, outputs, started)
            if route.predictions is not None:
                route.predictions.offer(
                    payload, used, outputs, version, (time.perf_counter() - started) * 1000, stale
                )
            self.explanations.audit(route, used, version, payload)
            return Prediction(outputs, version, stale)
        except Exception as exc:
            status = type(exc).__name__
            raise
        finally:
            self.metrics.requests.labels(name, version, status).inc()
            self.metrics.latency.labels(name, version).observe(time.perf_counter() - started)

    # -- traffic: canary and shadow -----------------------------------------------------
    def set_traffic(self, name: str, *, canary: Any = UNSET, shadow: Any = UNSET) -> None:
        """Change a route's canary and/or shadow while it serves. Everything new is loaded
        and checked first: a bad setting raises, and the running split stays as it was."""
        route = self.route(name)
        cfg = route.config
        new_canary = cfg.canary if canary is UNSET else canary
        new_shadow = cfg.shadow if shadow is UNSET else shadow
        self._apply_traffic(route, new_canary, new_shadow)
        route.config = msgspec.structs.replace(cfg, canary=new_canary, shadow=new_shadow)
        self.configs[name] = route.config
        self._source[name] = "runtime"
        self.publish(
            name,
            "traffic_set",
            {
                "canary": None if new_canary is None else msgspec.to_builtins(new_canary),
                "shadow": None if new_shadow is None else msgspec.to_builtins(new_shadow),
                # What the route was configured with: a restart honours this setting only
                # while that configuration is unchanged (see add).
                "configured": self._configured[name],
            },
        )

    def _unset_alias(self, model: str) -> bool:
        """Whether ``model`` names an alias (``name@alias``) that is not set yet."""
        name, _, ref = model.partition("@")
        if self.registry is None or not ref or ref.isdigit() or ref == "latest":
            return False
        try:
            return ref not in self.registry.aliases(name)
        except NotFoundError:
            return True  # no version of the model at all yet

    def _apply_traffic(
        self, route: Route, canary: CanaryConfig | None, shadow: ShadowConfig | None
    ) -> None:
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
            route.canary_stats = CanaryStats(started_at=self.clock.now())
            if route.canary_batcher is None:
                route.canary_batcher = self._batcher(route, lambda: route.canary, "-canary")
        if shadow_dep is None or shadow_dep.version == route.current.version:
            # (A shadow alias pointing at the version served — after its promotion — has
            # nothing to compare until the next candidate moves it.)
            route.shadow, route.shadow_state = None, None
            return
        if route.shadow_runner is None:
            route.shadow_runner = ShadowRunner(
                route,
                self.features,
                self.snapshot,
                log=self.log,
                registry=self.registry,
                indexes=self.indexes,
            )
        route.shadow_runner.prepare(shadow_dep)
        route.shadow = shadow_dep
        state = route.shadow_state
        if state is None or state.candidate != shadow_dep.version:
            route.shadow_state = self._restore(
                route.name, shadow_dep.version, route.current.version
            )

    def _load_same_kind(self, route: Route, model: str) -> Deployed:
        dep = self._load(route.config, model)
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
        for event in self._events(route, "shadow_stats"):
            if event["candidate"] == candidate:
                latest = event
        if latest is not None and latest["status"] == "comparing":
            return ShadowState.from_dict(latest)
        return ShadowState(route, candidate, primary, self.clock.now())

    def _events(self, route: str, kind: str) -> list[dict[str, Any]]:
        """The route's latest events of ``kind`` (see :class:`TrafficIndex` for which are
        kept), oldest first."""
        return [] if self._traffic is None else self._traffic.events(route, kind)

    def publish(self, route: str, kind: str, payload: dict[str, Any]) -> None:
        """An event on the traffic topic (settings, evidence snapshots, decisions)."""
        if self.log is None:
            return
        self.log.append(
            TRAFFIC.name,
            [
                {
                    "ts": datetime.fromtimestamp(self.clock.now(), UTC),
                    "route": route,
                    "kind": kind,
                    "payload": json.dumps(payload, default=str),
                }
            ],
        )

    def snapshot(self, route: Route, force: bool = False) -> None:
        """Persist the shadow evidence (at most every SNAPSHOT_S clock seconds)."""
        st = route.shadow_state
        if st is None:
            return
        now = self.clock.now()
        if force or now - self._last_snapshot.get(route.name, -1e18) >= SNAPSHOT_S:
            self._last_snapshot[route.name] = now
            self.publish(route.name, "shadow_stats", st.to_dict())

    def _maybe_shadow(
        self,
        route: Route,
        payload: Tensors | Rows,
        used: Tensors,
        outputs: dict[str, np.ndarray],
        started: float,
    ) -> None:
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

    def shadows_idle(self) -> bool:
        """Whether every shadow copy taken so far has been compared."""
        return all(r.shadow_runner is None or r.shadow_runner.idle for r in self.routes.values())

    def check_version(self, route: Route, version: str) -> str:
        """The loaded version (primary or canary) that ``version`` names — ``fraud@3`` or
        just ``3``, as Open Inference Protocol clients give it; 404 for any other."""
        loaded = [route.current.version]
        if route.canary is not None:
            loaded.append(route.canary.version)
        for v in loaded:
            if version in (v, v.rpartition("@")[2]):
                return v
        raise NotFoundError(
            f"version {version!r} of route {route.name!r} is not loaded; loaded: "
            f"{', '.join(loaded)}"
        )

    def deployed(self, route: Route, version: str | None) -> Deployed:
        """The loaded version a request names (see :meth:`check_version`), or the
        primary when it names none."""
        if version is None:
            return route.current
        named = self.check_version(route, version)
        if route.canary is not None and named == route.canary.version:
            return route.canary
        return route.current

    async def _canary(
        self,
        route: Route,
        payload: Tensors | Rows,
        deadline_ms: float | None,
        priority: int,
        started: float,
    ) -> Prediction:
        deployed, stats = route.canary, route.canary_stats
        version = deployed.version if deployed is not None else route.current.version
        ok = False
        try:
            result = await route.canary_batcher.submit(
                payload,
                deadline_s=None if deadline_ms is None else deadline_ms / 1000,
                priority=priority,
            )
            ok = True
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
        finally:
            ms = (time.perf_counter() - started) * 1000
            if stats is not None:
                stats.record(ok, ms)
            self.metrics.requests.labels(route.name, version, "ok" if ok else "error").inc()
            self.metrics.latency.labels(route.name, version).observe(ms / 1000)

    def traffic(self, name: str) -> dict[str, Any]:
        """The live split, the shadow comparison so far, and the last decisions."""
        route = self.route(name)
        cfg = route.config
        out: dict[str, Any] = {
            "route": name,
            "primary": route.current.version,
            "canary": None,
            "shadow": None,
            "settings": self._source.get(name, "configured"),  # or "runtime" (see add)
            "decisions": self._events(name, "decision")[-5:],
        }
        if cfg.canary is not None:
            out["canary"] = canary_evidence(
                cfg.canary,
                route.canary_stats,
                self.clock.now(),
                route=name,
                serving=None if route.canary is None else route.canary.version,
            )
        if cfg.shadow is not None and route.shadow_state is not None:
            out["shadow"] = route.shadow_state.summary(cfg.shadow, self.clock.now())
        return out

    # -- hot swap ------------------------------------------------------------------------
    def reload(self, name: str) -> dict[str, Any]:
        """Load and warm the route's model again (its alias may have moved) beside the
        current one, then switch. A version that fails to load or warm never takes traffic."""
        route = self.route(name)
        with route.swap_lock:
            cfg = route.config
            before = route.current.version
            try:
                fresh = self._load(cfg, cfg.model)
            except Exception as exc:
                route.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.swaps.labels(name, "failed").inc()
                logger.exception(
                    "route %s: reload of %s failed; still serving %s", name, cfg.model, before
                )
                return {
                    "route": name,
                    "swapped": False,
                    "serving": before,
                    "error": route.last_error,
                }
            if fresh.version == before:
                return {"route": name, "swapped": False, "serving": before}
            route.swap(fresh)
            route.last_error = None
            self.explanations.follow(route)
            st = route.shadow_state
            if st is not None and st.candidate == fresh.version and st.status == "comparing":
                st.status = "promoted"  # the candidate is the primary now
                self.snapshot(route, force=True)
            self.metrics.swaps.labels(name, "ok").inc()
            logger.info("route %s: %s → %s", name, before, fresh.version)
            return {"route": name, "swapped": True, "from": before, "serving": fresh.version}

    def _watch(self) -> None:
        """Follow the registry's events; reload routes whose alias moved, and the shadow
        candidate of routes whose shadow alias moved."""
        from keel.registry import EVENTS_TOPIC

        consumer = self.log.consumer(f"keel-serve-{id(self)}", EVENTS_TOPIC, reset="latest")
        while not self._watch_stop.is_set():
            try:
                batch = consumer.poll(100)
            except Exception:
                logger.exception("registry watch failed; retrying")
                self._watch_stop.wait(1.0)
                continue
            if batch.num_rows == 0:
                self._watch_stop.wait(0.2)
                continue
            for event in batch.to_pylist():
                if event["event"] in ("registered", "alias_moved"):
                    self._load_pending(event["model"])
                if event["event"] != "alias_moved":
                    continue
                moved = f"{event['model']}@{event['alias']}"
                for route in list(self.routes.values()):
                    if route.config.model == moved:
                        self.reload(route.name)
                    fast = route.config.fast_path
                    if fast is not None and fast.model == moved:
                        self._reload_fast(route, fast.model)
                    shadow = route.config.shadow
                    if shadow is not None and shadow.model == moved:
                        self._follow_shadow(route.name, shadow)

    def _load_pending(self, model: str) -> None:
        """A version of ``model`` was registered or an alias of it moved: load the routes
        that were waiting for one."""
        for name in list(self.pending):
            cfg = self.configs[name]
            if cfg.model.partition("@")[0] != model:
                continue
            try:
                self.add(cfg)
            except _NoModel as exc:  # registered, but not yet under the route's alias
                self.pending[name] = str(exc)
                continue
            except Exception:
                logger.exception("route %s: its first version failed to load", name)
                continue
            del self.pending[name]
            logger.info("route %s: serving %s", name, self.routes[name].current.version)

    def _reload_fast(self, route: Route, model: str) -> None:
        """The fast path's alias moved: load the new version, then switch to it (a version
        that fails to load leaves the old one answering)."""
        try:
            fresh = load(model, self.registry, device="cpu", indexes=self.indexes)
        except Exception:
            logger.exception("route %s: fast path %s failed to load; keeping it", route.name, model)
            return
        route.fast = fresh
        logger.info("route %s: fast path now %s", route.name, fresh.version)

    def _follow_shadow(self, name: str, shadow: ShadowConfig) -> None:
        """The alias a route shadows moved (``keel train --shadow``): load the new candidate
        beside the old one; the old keeps the shadow if the new one fails to load. The
        route's shadow settings as they are now are kept (one set while the event waited
        wins over the ones it was read with)."""
        route = self.routes.get(name)
        if route is not None and route.config.shadow is not None:
            shadow = route.config.shadow
            try:
                target = self.registry.get(*shadow.model.split("@", 1)).ref
            except KeelError:
                target = None
            if route.shadow is not None and route.shadow.version == target:
                return  # already compared
        try:
            self.set_traffic(name, shadow=shadow)
        except Exception:
            logger.exception("route %s: the shadow's new candidate %s failed", name, shadow.model)
