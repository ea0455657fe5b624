"""The shadow runner: copies of answered requests run on the candidate, off the event loop.

The request path only appends to a bounded queue (a copy that finds it full is dropped and
counted, never waited for). The runner's own thread drains the queue in batches, runs the
candidate once per batch, compares the outputs vectorized and folds the discrepancies into
the route's :class:`~keel.serving.traffic.ShadowState`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from keel.serving.routes import Route, Rows, Tensors, run_batch
from keel.serving.traffic import discrepancy

__all__ = ["ShadowRunner"]

# (what the candidate runs, the primary's outputs, the primary's latency, the request)
Item = tuple[Tensors | Rows, dict[str, np.ndarray], float, Tensors | Rows]


class ShadowRunner:
    """Compares a route's candidate with its primary on copies of live requests."""

    def __init__(
        self,
        route: Route,
        features: Any,
        on_update: Callable[[Route], None],
        *,
        log: Any = None,
        max_queue: int = 4096,
        gather_s: float = 0.0,
    ) -> None:
        self.route = route
        self.features = features
        self.on_update = on_update
        self.log = log
        self.max_queue = max_queue
        # How long to gather copies before a candidate pass. Larger, rarer passes hold the
        # interpreter in longer bursts, which the primary's p99 feels more (measured: 0 is
        # best on the LightGBM route; see BENCHMARKS.md).
        self.gather_s = gather_s
        self.dropped = 0
        self._queue: collections.deque[Item] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy = False
        # id → (primary score, candidate score) of shadowed rows awaiting their label
        self._awaiting: collections.OrderedDict[Any, tuple[float, float]] = (
            collections.OrderedDict()
        )
        self._labels: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"keel-shadow-{route.name}", daemon=True
        )
        self._thread.start()

    def offer(
        self,
        payload: Tensors | Rows,
        outputs: dict[str, np.ndarray],
        primary_ms: float,
        *,
        source: Tensors | Rows | None = None,
    ) -> None:
        """Queue a copy: ``payload`` runs on the candidate; ``source`` (the request as
        received) carries the ids that labels join on. O(1) on the event loop."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append((payload, outputs, primary_ms, source or payload))
        self._wake.set()

    @property
    def idle(self) -> bool:
        return not self._queue and not self._busy

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        limit = max(self.route.config.max_batch_size, 1)
        while not self._stop.is_set():
            self._join_labels()
            if not self._queue:
                self._wake.clear()
                self._wake.wait(0.05)
                continue
            self._busy = True
            try:
                if self.gather_s and len(self._queue) < limit:
                    self._stop.wait(self.gather_s)
                items = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
                self._compare(items)
            finally:
                self._busy = False

    def _join_labels(self) -> None:
        """Fold in the outcomes that arrived for shadowed requests: both versions' loss."""
        st, cfg = self.route.shadow_state, self.route.config.shadow
        if st is None or cfg is None or cfg.labels is None or self.log is None:
            return
        labels = cfg.labels
        if self._labels is None:
            self._labels = self.log.consumer(f"keel-shadow-labels.{self.route.name}", labels.topic)
        batch = self._labels.poll(10_000)
        if not batch.num_rows:
            return
        ids = batch.column(labels.id).to_pylist()
        ys = batch.column(labels.label).to_pylist()
        p_loss, deltas = [], []
        for key, y in zip(ids, ys, strict=True):
            pair = self._awaiting.pop(key, None)
            if pair is None or y is None:
                continue
            lp, lc = (_loss(labels.loss, float(y), s) for s in pair)
            p_loss.append(lp)
            deltas.append(lc - lp)
        if deltas:
            st.primary_loss.update_many(p_loss)
            st.label_delta.update_many(deltas)
            self.on_update(self.route)

    def _compare(self, items: list[Item]) -> None:
        route, st, cfg, candidate = (
            self.route,
            self.route.shadow_state,
            self.route.config.shadow,
            self.route.shadow,
        )
        if st is None or cfg is None or candidate is None or st.status != "comparing":
            return
        started = time.perf_counter()
        try:
            results = run_batch(route, [p for p, _, _, _ in items], self.features, candidate)
        except Exception:
            results = []
            for p, _, _, _ in items:  # find which copies fail; the others still count
                try:
                    results.extend(run_batch(route, [p], self.features, candidate))
                except Exception as exc:
                    results.append(exc)
        # Model time against model time: the candidate's forward pass per example versus
        # the primary's (its batcher's moving average), queueing excluded on both sides.
        per_example_ms = (time.perf_counter() - started) * 1000 / max(len(items), 1)
        primary_s = route.batcher.seconds_per_request if route.batcher is not None else 0.0
        primary_ms = primary_s * 1000 if primary_s else None
        diffs = []
        labels = cfg.labels
        for (_, primary, _, payload), result in zip(items, results, strict=True):
            st.requests += 1
            if isinstance(result, BaseException):
                st.errors += 1
                continue
            outputs = result[0]
            name = next((n for n in primary if n in outputs), None)
            if name is None:
                st.errors += 1
                continue
            diffs.append(discrepancy(cfg.compare, primary[name], outputs[name], cfg.top_k))
            if labels is not None and isinstance(payload, Rows):
                for row, p, c in zip(
                    payload.rows, np.ravel(primary[name]), np.ravel(outputs[name]), strict=False
                ):
                    if labels.id in row:
                        self._awaiting[row[labels.id]] = (float(p), float(c))
                while len(self._awaiting) > 100_000:
                    self._awaiting.popitem(last=False)
        if diffs:
            st.diff.update_many(np.concatenate(diffs))
            st.candidate_ms.update_many([per_example_ms])
            primary_each = [ms for _, _, ms, _ in items] if primary_ms is None else [primary_ms]
            st.primary_ms.update_many(primary_each)
        self.on_update(route)


def _loss(kind: str, y: float, score: float) -> float:
    if kind == "error":
        return float(round(score) != y)
    return abs(y - score)
