"""The inference server's state: routes, their batchers, hot swaps, metrics.

Independent of HTTP (see :mod:`keel.serving.app`): a route is predicted through
:meth:`InferenceServer.infer`, swapped through :meth:`InferenceServer.reload`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from keel.errors import NotFoundError, ValidationError
from keel.serving.batcher import Batcher
from keel.serving.routes import Route, RouteConfig, Rows, Tensors, load, run_batch

__all__ = ["InferenceServer"]

log = logging.getLogger(__name__)

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
    """Routes of loaded models, with micro-batching, hot swap and metrics."""

    def __init__(
        self,
        configs: Sequence[RouteConfig],
        *,
        registry: Any = None,
        features: Any = None,
        log_: Any = None,
        follow_features: bool = False,
    ) -> None:
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValidationError("route names must be unique")
        self.configs = {c.name: c for c in configs}
        self.registry = registry
        self.features = features
        self.log = log_
        self.routes: dict[str, Route] = {}
        self.metrics = Metrics()
        self.started = time.time()
        self.follow_features = follow_features
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def load_all(self) -> None:
        """Load and warm every route's model (before taking traffic)."""
        for cfg in self.configs.values():
            self.add(cfg)

    def add(self, cfg: RouteConfig) -> Route:
        deployed = load(cfg.model, self.registry, device=cfg.device, threads=cfg.threads)
        fast = None
        if cfg.fast_path is not None:
            fast = load(cfg.fast_path.model, self.registry, device="cpu")
        route = Route(cfg, deployed, fast)
        route.batcher = self._batcher(route)
        old = self.routes.get(cfg.name)
        self.routes[cfg.name] = route
        self.configs[cfg.name] = cfg
        if old is not None and old.batcher is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(old.batcher.close(), self._loop)
        return route

    def _batcher(self, route: Route) -> Batcher:
        cfg = route.config
        metrics = self.metrics

        def on_batch(size: int, _seconds: float) -> None:
            metrics.batch.labels(cfg.name, route.current.version).observe(size)

        return Batcher(
            lambda payloads: run_batch(route, payloads, self.features),
            max_batch_size=cfg.max_batch_size if cfg.batching else 1,
            max_wait_ms=cfg.max_wait_ms,
            max_queue=cfg.max_queue,
            name=cfg.name,
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
        for route in self.routes.values():
            await route.batcher.close()

    def route(self, name: str) -> Route:
        try:
            return self.routes[name]
        except KeyError:
            from keel.errors import did_you_mean

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
    ) -> tuple[dict[str, np.ndarray], str, Any]:
        """Run one request on a route; returns (outputs, version, staleness or None)."""
        route = self.route(name)
        started = time.perf_counter()
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
                result = await asyncio.to_thread(
                    run_batch, fast_route, [payload], self.features, route.fast
                )
                outputs, version, stale = result[0]
            else:
                self.metrics.queue.labels(name).set(route.batcher.depth)
                outputs, version, stale = await route.batcher.submit(
                    payload,
                    deadline_s=None if deadline_ms is None else deadline_ms / 1000,
                    priority=priority,
                )
            if stale:
                for feature, values in stale.items():
                    known = [v for v in values if v is not None]
                    if known:
                        self.metrics.staleness.labels(name, feature).set(max(known))
            return outputs, version, stale
        except Exception as exc:
            status = type(exc).__name__
            raise
        finally:
            self.metrics.requests.labels(name, version, status).inc()
            self.metrics.latency.labels(name, version).observe(time.perf_counter() - started)

    # -- hot swap ------------------------------------------------------------------------
    def reload(self, name: str) -> dict[str, Any]:
        """Load and warm the route's model again (its alias may have moved) beside the
        current one, then switch. A version that fails to load or warm never takes traffic."""
        route = self.route(name)
        with route.swap_lock:
            cfg = route.config
            before = route.current.version
            try:
                fresh = load(cfg.model, self.registry, device=cfg.device, threads=cfg.threads)
            except Exception as exc:
                route.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.swaps.labels(name, "failed").inc()
                log.exception(
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
            self.metrics.swaps.labels(name, "ok").inc()
            log.info("route %s: %s → %s", name, before, fresh.version)
            return {"route": name, "swapped": True, "from": before, "serving": fresh.version}

    def _watch(self) -> None:
        """Follow the registry's events; reload routes whose alias moved."""
        from keel.registry import EVENTS_TOPIC

        consumer = self.log.consumer(f"keel-serve-{id(self)}", EVENTS_TOPIC, reset="latest")
        while not self._watch_stop.is_set():
            try:
                batch = consumer.poll(100)
            except Exception:
                log.exception("registry watch failed; retrying")
                self._watch_stop.wait(1.0)
                continue
            if batch.num_rows == 0:
                self._watch_stop.wait(0.2)
                continue
            for event in batch.to_pylist():
                if event["event"] != "alias_moved":
                    continue
                for route in list(self.routes.values()):
                    model, _, ref = route.config.model.partition("@")
                    if model == event["model"] and ref == event["alias"]:
                        self.reload(route.name)
