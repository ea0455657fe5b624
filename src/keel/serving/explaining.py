"""Explanations of a route's predictions, with the features exactly as served.

``POST /v1/routes/{route}/explain`` takes the body of ``predict``; its rows get their
features joined from the online store as a prediction would, and the route's current version
is explained by one of three methods (:mod:`keel.explain`):

- ``tree``: exact TreeSHAP through LightGBM's and XGBoost's native contributions, in the
  model's raw output (log-odds for a classifier);
- ``kernel``: Kernel SHAP of the served score against a background of k-means centers of the
  version's training set (rebuilt through its lineage), within a budget of model evaluations
  per request;
- ``surrogate``: a small model fitted on the version's own outputs over its training set,
  registered as ``MODEL-surrogate`` with lineage naming the version it mimics and its
  fidelity, and rebuilt when the route's version changes.

Explainers are built once per version and method, off the request path, on one worker thread
that also runs the explanations themselves, so explaining never competes with the
micro-batcher's thread for the model. Sampled served predictions can be explained for audit
onto the ``keel.explanations`` topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from keel.config import EXPLAIN_METHODS
from keel.errors import KeelError, ValidationError
from keel.explain import (
    Explainer,
    Explanation,
    KernelExplainer,
    Surrogate,
    TreeExplainer,
    fit_surrogate,
    kmeans_background,
    methods_for,
)
from keel.log import Topic
from keel.serving.routes import Deployed, Route, Tensors, rows_to_tensors

__all__ = ["EXPLANATIONS", "SURROGATE_SUFFIX", "Explanations", "OverBudget", "training_matrix"]

logger = logging.getLogger(__name__)

#: Explanations of sampled served predictions, for audit.
EXPLANATIONS = Topic(
    "keel.explanations",
    {
        "ts": "timestamp",
        "route": "string",
        "version": "string",
        "method": "string",
        "request_id": "string",
        "payload": "string",
    },
    event_time="ts",
    key="route",
)
SURROGATE_SUFFIX = "-surrogate"
#: Rows of the training set a surrogate is fitted on (a sample when it is larger).
SURROGATE_ROWS = 20_000
#: Held-out rows whose attributions are compared with the reference method's.
FIDELITY_ROWS = 200


class OverBudget(ValidationError):
    """A request would need more model evaluations than the route allows."""


@dataclass
class Prepared:
    """An explainer for one version and method, and what the answer says about it."""

    explainer: Explainer
    details: dict[str, Any] = field(default_factory=dict)


def training_matrix(
    registry: Any, features: Any, model: str, names: list[str], *, limit: int | None = None
) -> np.ndarray:
    """``model``'s (``name@N``) training set, rebuilt through its lineage, as a matrix of the
    columns ``names`` (a seeded sample of ``limit`` rows when it is larger)."""
    name, _, ref = model.partition("@")
    table = registry.training_set(name, ref, features)
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValidationError(f"{model}'s training set has no column {missing[0]!r}")
    x = np.column_stack([table[n].to_numpy(zero_copy_only=False).astype(np.float64) for n in names])
    if limit is not None and len(x) > limit:
        rows = np.sort(np.random.default_rng(0).choice(len(x), limit, replace=False))
        x = x[rows]
    return x


def _score(runtime: Any) -> Any:
    """The served output of a tabular runtime as a function of its feature matrix."""
    name, out = runtime.inputs[0].name, runtime.outputs[0].name
    return lambda x: np.asarray(runtime.predict({name: x})[out], dtype=np.float64).reshape(-1)


class Explanations:
    """Builds, caches and runs the explainers of a server's routes."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="keel-explain")
        self._built: dict[tuple[str, str, str], Future[Prepared]] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._topic_ready = False

    def close(self) -> None:
        """Drop pending work and built explainers (a server started again builds anew)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="keel-explain")
        with self._lock:
            self._built.clear()

    # -- which method ---------------------------------------------------------------------
    def methods(self, route: Route) -> list[str]:
        """The methods the route's current model can give."""
        out = methods_for(route.current.runtime)
        if out and route.config.explain.surrogate is not None:
            out.append("surrogate")
        return out

    def choose(self, route: Route, asked: str | None) -> str:
        available = self.methods(route)
        runtime = route.current.runtime
        if not available:
            raise ValidationError(
                f"route {route.name!r} serves {route.current.version} ({runtime.platform}), "
                "which takes no named features: no explanation method applies to it"
            )
        method = asked or route.config.explain.method
        if method == "auto":
            return next(m for m in ("tree", "surrogate", "kernel") if m in available)
        if method not in available:
            raise ValidationError(
                f"route {route.name!r} cannot explain with {method!r}: its model "
                f"{route.current.version} ({runtime.platform}) offers "
                f"{', '.join(available)}"
                + ("" if method in EXPLAIN_METHODS else f" (methods: {', '.join(EXPLAIN_METHODS)})")
            )
        return method

    # -- building -------------------------------------------------------------------------
    def prepare(self, route: Route, method: str, deployed: Deployed | None = None) -> Future[Any]:
        """The explainer of ``deployed`` (default: the route's current version) for
        ``method``, built once on the explain thread."""
        deployed = deployed or route.current
        key = (route.name, deployed.version, method)
        with self._lock:
            fut = self._built.get(key)
            if fut is None or (fut.done() and fut.exception() is not None):
                fut = self._pool.submit(self._build, route, deployed, method)
                self._built[key] = fut
                # Versions no longer served (nor a canary or shadow) free their explainers.
                live = {route.current.version}
                for k in [k for k in self._built if k[0] == route.name and k[1] not in live]:
                    if k != key:
                        del self._built[k]
        return fut

    def follow(self, route: Route) -> None:
        """The route's version changed (or it was added): rebuild its surrogate now, so the
        first request for one does not wait for it."""
        if route.config.explain.surrogate is not None and methods_for(route.current.runtime):
            version = route.current.version
            self.prepare(route, "surrogate").add_done_callback(
                lambda fut: _report_failed_build(fut, route.name, version)
            )

    def _build(self, route: Route, deployed: Deployed, method: str) -> Prepared:
        runtime = deployed.runtime
        if method == "tree":
            return Prepared(TreeExplainer(runtime), {"exact": True})
        if method == "kernel":
            return self._kernel(route, deployed)
        return self._surrogate(route, deployed)

    def _registry(self, deployed: Deployed) -> Any:
        if self.server.registry is None or "@" not in deployed.version:
            raise ValidationError(
                f"{deployed.version} has no registered training set to explain it against"
            )
        return self.server.registry

    def _kernel(self, route: Route, deployed: Deployed) -> Prepared:
        cfg = route.config.explain
        runtime = deployed.runtime
        x = training_matrix(
            self._registry(deployed),
            self.server.features,
            deployed.version,
            list(runtime.feature_names),
            limit=SURROGATE_ROWS,
        )
        background, weights = kmeans_background(x, k=cfg.background)
        explainer = KernelExplainer(
            _score(runtime),
            background,
            list(runtime.feature_names),
            weights=weights,
            samples=cfg.samples,
        )
        return Prepared(
            explainer,
            {
                "samples": cfg.samples,
                "background": len(background),
                "exact": 2 ** len(runtime.feature_names) - 2 <= cfg.samples,
            },
        )

    def _surrogate(self, route: Route, deployed: Deployed) -> Prepared:
        """The registered surrogate of this version, or one fitted and registered now."""
        kind = route.config.explain.surrogate or "tree"
        registry = self._registry(deployed)
        name = deployed.version.partition("@")[0] + SURROGATE_SUFFIX
        names = list(deployed.runtime.feature_names)
        for v in reversed(registry.versions(name) if _exists(registry, name) else []):
            p = v.params
            if p.get("surrogate_of") == deployed.version and p.get("kind") == kind:
                model = registry.load(name, v.version)
                surrogate = Surrogate(kind, model, names, p["output"], dict(v.metrics))
                return Prepared(
                    surrogate.explainer(),
                    {"model": v.ref, "kind": kind, "fidelity": dict(v.metrics)},
                )
        return self._fit_surrogate(route, deployed, kind, name, names)

    def _fit_surrogate(
        self, route: Route, deployed: Deployed, kind: str, name: str, names: list[str]
    ) -> Prepared:
        registry = self._registry(deployed)
        runtime = deployed.runtime
        x = training_matrix(
            registry, self.server.features, deployed.version, names, limit=SURROGATE_ROWS
        )
        if "tree" in methods_for(runtime):
            reference: Explainer = TreeExplainer(runtime)
            target = reference.explain(x).outputs
        else:
            reference = self._kernel(route, deployed).explainer
            target = _score(runtime)(x)
        surrogate = fit_surrogate(x, target, names, kind=kind, reference=reference)
        fmt = "lightgbm" if kind == "tree" else "sklearn"
        v = registry.register(
            name,
            surrogate.model,
            format=fmt,
            params={
                "surrogate_of": deployed.version,
                "kind": kind,
                "output": surrogate.output,
                "features": names,
                "rows": len(x),
            },
            metrics=dict(surrogate.fidelity),
            description=f"a {kind} surrogate of {deployed.version}, fitted on its outputs "
            f"({surrogate.output}) over its training set",
        )
        logger.info("route %s: surrogate %s of %s registered", route.name, v.ref, deployed.version)
        return Prepared(
            surrogate.explainer(), {"model": v.ref, "kind": kind, "fidelity": surrogate.fidelity}
        )

    # -- explaining -----------------------------------------------------------------------
    async def explain(
        self,
        name: str,
        rows: list[dict[str, Any]],
        *,
        method: str | None = None,
        top: int | None = None,
    ) -> dict[str, Any]:
        """Explain ``rows`` (a predict request's) on route ``name``'s current version."""
        route = self.server.route(name)
        deployed = route.current
        chosen = self.choose(route, method)
        runtime = deployed.runtime
        tensors, _ = await asyncio.to_thread(
            rows_to_tensors, route, runtime, rows, self.server.features, route.config.features
        )
        x = tensors.arrays[runtime.inputs[0].name]
        prepared = await asyncio.wrap_future(self.prepare(route, chosen, deployed))
        cost = prepared.explainer.cost(len(x))
        budget = route.config.explain.max_evaluations
        if cost > budget:
            per_row = max(1, cost // len(x))
            raise OverBudget(
                f"explaining {len(x)} rows with {chosen} needs {cost:,} model evaluations, over "
                f"route {name!r}'s budget of {budget:,} per request (max_evaluations): send at "
                f"most {max(1, budget // per_row)} rows"
                + (", or ask for the surrogate" if "surrogate" in self.methods(route) else "")
            )
        loop = asyncio.get_running_loop()
        explanation, scores = await loop.run_in_executor(
            self._pool, self._run, prepared.explainer, runtime, x
        )
        explained = explanation.rows(top)
        index = {f: j for j, f in enumerate(explanation.features)}
        for i, row in enumerate(explained):  # each feature's value as served, beside its share
            row["values"] = {
                f: None if x[i, index[f]] != x[i, index[f]] else float(x[i, index[f]])
                for f in row["contributions"]
            }
        return {
            "route": name,
            "version": deployed.version,
            "method": chosen,
            "output": explanation.output,
            "features": explanation.features,
            "base_value": explanation.base_value,
            "details": prepared.details,
            "evaluations": explanation.evaluations,
            "predictions": {runtime.outputs[0].name: scores.tolist()},
            "explanations": explained,
        }

    @staticmethod
    def _run(explainer: Explainer, runtime: Any, x: np.ndarray) -> tuple[Explanation, Any]:
        return explainer.explain(x), _score(runtime)(x)

    # -- audit ----------------------------------------------------------------------------
    def audit(self, route: Route, used: Any, version: str, rows: Any) -> None:
        """Explain a sampled served request for the audit topic (tree or surrogate: never
        Kernel SHAP, whose cost would follow the traffic)."""
        share = route.config.explain.audit
        if share <= 0 or self.server.log is None or not isinstance(used, Tensors):
            return
        if self._rng.random() >= share:
            return
        available = self.methods(route)
        method = next((m for m in ("tree", "surrogate") if m in available), None)
        deployed = route.current
        if method is None or deployed.version != version:
            return
        x = used.arrays.get(deployed.runtime.inputs[0].name)
        if x is None:
            return
        ids = _ids(route, rows, len(x))
        # One worker thread runs in order: the explainer is built before this runs.
        built = self.prepare(route, method, deployed)
        self._pool.submit(self._audit, route, deployed, method, built, x, ids)

    def _audit(
        self,
        route: Route,
        deployed: Deployed,
        method: str,
        built: Future[Prepared],
        x: np.ndarray,
        ids: list[str],
    ) -> None:
        try:
            explanation = built.result(0).explainer.explain(x)
            log_ = self.server.log
            if not self._topic_ready:
                log_.create_topic(EXPLANATIONS, exist_ok=True)
                self._topic_ready = True
            now = datetime.fromtimestamp(self.server.clock.now(), UTC)
            inputs = [[None if v != v else v for v in row] for row in x.tolist()]
            records = [
                {
                    "ts": now,
                    "route": route.name,
                    "version": deployed.version,
                    "method": method,
                    "request_id": ids[i],
                    "payload": json.dumps(
                        {
                            "features": dict(zip(explanation.features, inputs[i], strict=True)),
                            **row,
                        },
                    ),
                }
                for i, row in enumerate(explanation.rows())
            ]
            log_.append(EXPLANATIONS.name, records)
        except KeelError as exc:
            logger.warning("route %s: audit explanation failed: %s", route.name, exc)
        except Exception:
            logger.exception("route %s: audit explanation failed", route.name)


def _ids(route: Route, rows: Any, n: int) -> list[str]:
    monitor = route.config.monitor
    field_ = None if monitor is None else monitor.id
    raw = getattr(rows, "rows", None)
    if field_ and raw is not None and len(raw) == n:
        return [str(r.get(field_, "")) for r in raw]
    return [""] * n


def _exists(registry: Any, name: str) -> bool:
    try:
        registry.versions(name)
    except KeelError:
        return False
    return True


def _report_failed_build(fut: Future[Any], route: str, version: str) -> None:
    """A surrogate built ahead of any request has no caller to raise to: say it failed (the
    next request for one retries the build and answers its error)."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if isinstance(exc, KeelError):
        logger.warning("route %s: no surrogate for %s: %s", route, version, exc)
    elif exc is not None:
        logger.error("route %s: surrogate of %s failed", route, version, exc_info=exc)
