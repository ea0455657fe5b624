"""The inference server's state: routes, their batchers, hot swaps, metrics.

Independent of HTTP (see :mod:`keel.serving.app`): a route is predicted through
:meth:`InferenceServer.infer`, swapped through :meth:`InferenceServer.reload`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from keel.clock import Clock, SystemClock
from keel.errors import (
    NotFoundError,
    UnavailableError,
    ValidationError,
    did_you_mean,
)
from keel.runtimes.recommend import is_recommender
from keel.serving.batcher import Batcher
from keel.serving.explaining import Explanations
from keel.serving.fast_path import FastPath
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
from keel.serving.traffic_manager import TRAFFIC, UNSET, TrafficManager

__all__ = ["TRAFFIC", "UNSET", "InferenceServer", "NotTrained"]


class NotTrained(UnavailableError):
    """A route whose model has no version to serve yet."""


class _NoModel(NotFoundError):
    """The route's own model (not its canary's or shadow's) has no such version."""


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

    def observe_request(self, route: str, version: str, status: str, seconds: float) -> None:
        """One answered (or failed) request: every path that answers one records it here.
        ``status`` is ``"ok"`` or the exception's class name."""
        self.requests.labels(route, version, status).inc()
        self.latency.labels(route, version).observe(seconds)

    def queue_depths(self, routes: dict[str, Route]) -> None:
        """The requests waiting per route, as the scrape or a request sees them."""
        for name, route in routes.items():
            if route.batcher is not None:
                self.queue.labels(name).set(route.batcher.depth)


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
        self.traffic_manager = TrafficManager(self)
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._replicas: threading.Thread | None = None
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
        cfg, configured, runtime_at = self.traffic_manager.settings_for(cfg)
        try:
            deployed = self.load_for(cfg, cfg.model)
        except NotFoundError as exc:
            raise _NoModel(str(exc)) from None
        route = Route(cfg, deployed)
        route.features_at = self.features_at
        if cfg.fast_path is not None:
            fast = load(cfg.fast_path.model, self.registry, device="cpu", indexes=self.indexes)
            route.fast_path = FastPath(
                cfg.name, cfg.fast_path, fast, self.features, features_at=self.features_at
            )
        if cfg.features and self.features is not None:
            route.join_keys = list(
                dict.fromkeys(v.entity.join_key for v, _ in self.features.resolve(cfg.features))
            )
        if is_recommender(deployed.runtime) and USER not in route.join_keys:
            route.join_keys.append(USER)  # a canary split stays sticky per user
        route.batcher = self.batcher_for(route, lambda: route.current)
        self.traffic_manager.start(route, runtime_at)
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
        self.traffic_manager.adopt(cfg.name, configured, runtime_at)
        if old is not None and old.batcher is not None and self._loop is not None:
            # New requests reach the new route from here on; the old one answers its own.
            asyncio.run_coroutine_threadsafe(old.batcher.drain(), self._loop)
        if old is not None and old.predictions is not None:
            old.predictions.close()
        if old is not None and old.fast_path is not None:
            old.fast_path.close()
        self.explanations.follow(route)
        return route

    def load_for(self, cfg: RouteConfig, model: str) -> Deployed:
        """Load and warm ``model`` for route ``cfg``, and check that the route can serve it."""
        deployed = load(
            model,
            self.registry,
            device=cfg.device,
            threads=cfg.threads,
            indexes=self.indexes,
            backend=cfg.runtime,
        )
        if is_recommender(deployed.runtime):
            check_route(cfg, deployed.runtime, self._joined(cfg), self.features)
        return deployed

    def _joined(self, cfg: RouteConfig) -> list[str]:
        """The names of the features a route joins (``view__feature``)."""
        if not cfg.features or self.features is None:
            return []
        return self.features.columns(cfg.features)

    def batcher_for(
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
            workers=cfg.workers if cfg.batching else 1,
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
        if self.features is not None:  # fast paths' replicas follow the features' log
            self._replicas = threading.Thread(
                target=self._follow_replicas, name="keel-fast-replicas", daemon=True
            )
            self._replicas.start()

    def _follow_replicas(self, interval_s: float = 0.05) -> None:
        """Keep every fast path's feature replica current with the log (routes added
        later included)."""
        while not self._watch_stop.is_set():
            moved = 0
            for route in list(self.routes.values()):
                fast = route.fast_path
                if fast is None:
                    continue
                try:
                    moved += fast.catch_up()
                except Exception:
                    logger.exception("route %s: the fast path's replica failed", route.name)
            if not moved:
                self._watch_stop.wait(interval_s)

    async def stop(self) -> None:
        self._watch_stop.set()
        self.explanations.close()
        for route in self.routes.values():
            self.traffic_manager.snapshot(route, force=True)
            for b in (route.batcher, route.canary_batcher):
                if b is not None:
                    await b.close()
            if route.shadow_runner is not None:
                await asyncio.to_thread(route.shadow_runner.close)
            if route.predictions is not None:
                await asyncio.to_thread(route.predictions.close)
            if route.fast_path is not None:
                route.fast_path.close()

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
        traffic = self.traffic_manager
        if (
            self.check_version(route, version) != route.current.version
            if version is not None
            else traffic.takes(route, payload, key)
        ):
            return await traffic.canary(route, payload, deadline_ms, priority, started)
        version = route.current.version
        status = "ok"
        try:
            fast = route.fast_path
            if fast is not None and fast.takes(deadline_ms):
                answer = await fast.answer(payload)
                # Another model with its own inputs: not the route's version that the
                # prediction log, the monitor and a shadow comparison are about.
                version = answer.version
                return answer
            else:
                self.metrics.queue_depths({name: route})
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
            traffic.shadow(route, payload, used, outputs, started)
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
            self.metrics.observe_request(name, version, status, time.perf_counter() - started)

    # -- traffic: canary and shadow (see TrafficManager) --------------------------------
    def set_traffic(self, name: str, *, canary: Any = UNSET, shadow: Any = UNSET) -> None:
        """Change a route's canary and/or shadow while it serves (see
        :meth:`TrafficManager.set`)."""
        self.traffic_manager.set(name, canary=canary, shadow=shadow)

    def traffic(self, name: str) -> dict[str, Any]:
        """The live split, the shadow comparison so far, and the last decisions."""
        return self.traffic_manager.report(name)

    def publish(self, route: str, kind: str, payload: dict[str, Any]) -> None:
        """An event on the traffic topic (settings, evidence snapshots, decisions)."""
        self.traffic_manager.publish(route, kind, payload)

    def snapshot(self, route: Route, force: bool = False) -> None:
        """Persist the route's shadow evidence (see :meth:`TrafficManager.snapshot`)."""
        self.traffic_manager.snapshot(route, force)

    def shadows_idle(self) -> bool:
        """Whether every shadow copy taken so far has been compared."""
        return self.traffic_manager.idle()

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

    # -- hot swap ------------------------------------------------------------------------
    def reload(self, name: str) -> dict[str, Any]:
        """Load and warm the route's model again (its alias may have moved) beside the
        current one, then switch. A version that fails to load or warm never takes traffic."""
        route = self.route(name)
        with route.swap_lock:
            cfg = route.config
            before = route.current.version
            try:
                fresh = self.load_for(cfg, cfg.model)
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
            self.traffic_manager.promoted(route, fresh.version)
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
                        self.traffic_manager.follow_shadow(route.name, shadow)

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
        if route.fast_path is not None:
            route.fast_path.deployed = fresh
        logger.info("route %s: fast path now %s", route.name, fresh.version)
