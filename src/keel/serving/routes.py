"""Routes: one per served model, configured (``keel.toml`` or the control API), not coded.

A route owns its loaded model (a :class:`Deployed` runtime + version), its micro-batcher and
its optional fast path. Swapping versions loads and warms the new one beside the old, then
replaces one reference: a batch already started keeps the runtime it captured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from keel.config import FastPathConfig, RouteConfig
from keel.errors import NotFoundError, ValidationError
from keel.runtimes import BUILTIN_TEXT, Runtime, TextEmbeddingRuntime, runtime_for
from keel.runtimes.recommend import is_recommender, is_two_tower, published_index

__all__ = [
    "Answer",
    "Deployed",
    "FastPathConfig",
    "Prediction",
    "Route",
    "RouteConfig",
    "Rows",
    "Tensors",
    "load",
    "lookup",
    "run_batch",
]


class Answer(NamedTuple):
    """One request's result out of a forward pass: the outputs, the version that answered,
    each joined feature's staleness (or None) and the model's input exactly as used."""

    outputs: dict[str, np.ndarray]
    version: str
    staleness: Any
    used: Tensors


class Prediction(NamedTuple):
    """What a route answers a request: the outputs, the version and the staleness."""

    outputs: dict[str, np.ndarray]
    version: str
    staleness: Any


@dataclass(frozen=True)
class Deployed:
    """One loaded, warmed model version."""

    runtime: Runtime
    version: str  # "fraud@3", or the builtin's name
    loaded_at: float
    sample_output: dict[str, np.ndarray] | None = None


@dataclass
class Tensors:
    arrays: dict[str, np.ndarray]
    n: int


@dataclass
class Rows:
    rows: list[dict[str, Any]]
    n: int


def load(
    model: str,
    registry: Any,
    *,
    device: str = "cpu",
    threads: int | None = None,
    indexes: Any = None,
    backend: str = "auto",
) -> Deployed:
    """Load and warm ``model`` (a registry reference or a builtin). A recommender comes with
    its version's vector index from ``indexes`` (an :class:`~keel.index.IndexStore`), or one
    built from its own catalogue when that version has none published. ``backend`` chooses
    how a builtin text model runs (``torch``, ``onnx``, ``onnx-int8``; ``auto``: torch); a
    registered model runs in its format's runtime."""
    if model.startswith("builtin:"):
        name = model.split(":", 1)[1]
        if name != BUILTIN_TEXT:
            raise NotFoundError(f"no builtin model {name!r}; builtins: {BUILTIN_TEXT}")
        runtime: Runtime = TextEmbeddingRuntime(
            device=device, threads=threads, backend="torch" if backend == "auto" else backend
        )
        version = name
    else:
        if registry is None:
            raise ValidationError(f"model {model!r} needs a registry")
        name, _, ref = model.partition("@")
        v = registry.get(name, ref or "latest")
        obj = registry.load(name, v.version)
        index = published_index(indexes, name, v.version) if is_two_tower(obj) else None
        runtime = runtime_for(obj, v.format, device=device, index=index, threads=threads)
        version = v.ref
    sample = runtime.warmup()
    return Deployed(runtime, version, time.time(), sample)


class Route:
    """A configured route with its current model; swapped atomically."""

    def __init__(self, config: RouteConfig, deployed: Deployed) -> None:
        self.config = config
        self.current = deployed
        self.fast_path: Any = None  # a FastPath: its own checkpoint, thread and replica
        self.batcher: Any = None
        self.swap_lock = threading.Lock()
        self.last_error: str | None = None
        # Traffic between versions (set through InferenceServer.set_traffic).
        self.canary: Deployed | None = None
        self.canary_batcher: Any = None
        self.canary_stats: Any = None
        self.shadow: Deployed | None = None
        self.shadow_runner: Any = None
        self.shadow_state: Any = None
        self.join_keys: list[str] = []
        self.predictions: Any = None  # a PredictionLog when the route is monitored
        # When feature lookups are made (seconds since the epoch); None: now. A replay or a
        # simulation serves as of its own clock.
        self.features_at: Callable[[], float] | None = None

    def entity_key(self, payload: Tensors | Rows, header_key: str | None) -> Any:
        """The key a canary split is sticky by: the first joined entity's key of the first
        row, or the ``x-keel-key`` header."""
        if header_key is not None:
            return header_key
        if isinstance(payload, Rows) and payload.rows:
            first = payload.rows[0]
            for key in self.join_keys:
                if key in first:
                    return first[key]
        return None

    @property
    def name(self) -> str:
        return self.config.name

    def swap(self, deployed: Deployed) -> Deployed:
        """Make ``deployed`` current (one reference assignment); return the old one."""
        old, self.current = self.current, deployed
        return old

    def check_tensors(self, arrays: dict[str, np.ndarray], runtime: Runtime) -> Tensors:
        """Validate a request's tensors against the model's declared inputs."""
        specs = {s.name: s for s in runtime.inputs}
        unknown = [n for n in arrays if n not in specs]
        if unknown:
            raise ValidationError(
                f"route {self.name!r} has no input {unknown[0]!r}; inputs: {', '.join(specs)}"
            )
        out = {}
        n = None
        for name, spec in specs.items():
            if name not in arrays:
                raise ValidationError(f"route {self.name!r}: input {name!r} is missing")
            arr = spec.check(np.asarray(arrays[name]), f"route {self.name!r}")
            if n is not None and arr.shape[0] != n:
                raise ValidationError(f"route {self.name!r}: inputs disagree on the batch size")
            n = arr.shape[0]
            out[name] = arr
        return Tensors(out, int(n or 0))


def run_batch(
    route: Route,
    payloads: Sequence[Tensors | Rows],
    features: Any,
    deployed: Deployed | None = None,
) -> list[Any]:
    """One forward pass for every payload of a micro-batch (rows get their features joined
    with one batched online lookup). Returns one result per payload."""
    deployed = deployed or route.current  # captured once: the whole batch sees one version
    runtime = deployed.runtime
    if is_recommender(runtime):
        from keel.serving.retrieval import run_retrieval_batch  # (it builds on this module)

        return run_retrieval_batch(route, payloads, features, deployed)
    joined: dict[int, tuple[Tensors, dict[str, list[float | None]]]] = {}
    rows = [(i, p) for i, p in enumerate(payloads) if isinstance(p, Rows)]
    if rows:
        all_rows = [r for _, p in rows for r in p.rows]
        tensors, stale = rows_to_tensors(route, runtime, all_rows, features, route.config.features)
        start = 0
        for i, p in rows:
            part = Tensors({k: v[start : start + p.n] for k, v in tensors.arrays.items()}, p.n)
            joined[i] = (part, {k: v[start : start + p.n] for k, v in stale.items()})
            start += p.n
    parts = [joined[i][0] if isinstance(p, Rows) else p for i, p in enumerate(payloads)]
    names = [s.name for s in runtime.inputs]
    batch = {n: np.concatenate([t.arrays[n] for t in parts]) for n in names}
    out = runtime.predict(batch)
    results: list[Any] = []
    start = 0
    for i, used in enumerate(parts):
        sliced = {k: v[start : start + used.n] for k, v in out.items()}
        start += used.n
        # The input actually used travels with the result, so a shadow can reuse it.
        stale_of = joined[i][1] if i in joined else None
        results.append(Answer(sliced, deployed.version, stale_of, used))
    return results


def rows_to_tensors(
    route: Route,
    runtime: Runtime,
    rows: list[dict[str, Any]],
    features: Any,
    refs: list[str],
) -> tuple[Tensors, dict[str, list[float | None]]]:
    """Build the model's input from request rows: named features come from the online store
    (one lookup for all rows), the rest from the rows' own fields."""
    names = getattr(runtime, "feature_names", [])
    staleness: dict[str, list[float | None]] = {}
    if not names:  # a tensor model: each row maps input names to values
        arrays = {}
        for spec in runtime.inputs:
            try:
                arrays[spec.name] = np.asarray([r[spec.name] for r in rows])
            except KeyError:
                raise ValidationError(
                    f"route {route.name!r}: each row needs {spec.name!r}"
                ) from None
        return route.check_tensors(arrays, runtime), staleness
    columns: dict[str, np.ndarray] = {}
    if refs:
        keys = {}
        for view, _ in features.resolve(refs):
            jk = view.entity.join_key
            try:
                keys[jk] = [r[jk] for r in rows]
            except KeyError:
                raise ValidationError(
                    f"route {route.name!r}: each row needs the entity key {jk!r}"
                ) from None
        columns, staleness = lookup(route, features, refs, keys)
    matrix = np.empty((len(rows), len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        if name in columns:
            matrix[:, j] = columns[name]
            continue
        try:
            matrix[:, j] = [float(r[name]) if r[name] is not None else np.nan for r in rows]
        except KeyError:
            raise ValidationError(
                f"route {route.name!r}: the model needs {name!r}, which is neither a joined "
                "feature nor a field of the request"
            ) from None
        except (TypeError, ValueError):
            raise ValidationError(
                f"route {route.name!r}: field {name!r} must be a number"
            ) from None
    return Tensors({runtime.inputs[0].name: matrix}, len(rows)), staleness


def lookup(
    route: Route, features: Any, refs: list[str], keys: dict[str, list[Any]]
) -> tuple[dict[str, np.ndarray], dict[str, list[float | None]]]:
    """One online lookup of the features ``refs`` for ``keys`` (join key → keys), as of the
    route's feature time: the numeric columns as float64, and every column's staleness."""
    at = None if route.features_at is None else route.features_at()
    got = features.get_online(refs, keys, at=at)
    columns: dict[str, np.ndarray] = {}
    staleness: dict[str, list[float | None]] = {}
    for name, values in got.values.items():
        arr = np.asarray(values)
        if arr.dtype.kind in "fiub":
            columns[name] = arr.astype(np.float64)
        staleness[name] = [None if s != s else float(s) for s in got.staleness_s[name]]
    return columns, staleness
