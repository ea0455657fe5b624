"""The shadow runner: copies of answered requests run on the candidate, off the event loop.

The request path only appends to a bounded queue (a copy that finds it full is dropped and
counted, never waited for). The runner's own thread drains the queue in batches, runs the
candidate once per batch, compares the outputs vectorized and folds the discrepancies into
the route's :class:`~keel.serving.traffic.ShadowState`.

The candidate's forward passes run in a process of their own at a lower CPU priority
(:mod:`keel.serving.isolation`) when the registry can hand the candidate to it, so they take
neither the interpreter lock nor CPU time from the primary.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from keel.errors import KeelError
from keel.runtimes.recommend import RANKING
from keel.serving.isolation import CandidateProcess, candidate_spec, compare_outputs
from keel.serving.routes import Deployed, Route, Rows, Tensors, run_batch
from keel.serving.traffic import compare_rankings, discrepancy

__all__ = ["ShadowRunner"]

logger = logging.getLogger(__name__)

RESTART_S = 2.0  # the least time between starts of a candidate process that keeps exiting

# (what the candidate runs, the primary's outputs, the primary's latency, the request)
Item = tuple[Tensors | Rows, dict[str, np.ndarray], float, Tensors | Rows]


class ShadowRunner:
    """Compares a route's candidate with its primary on copies of live requests.

    With ``isolate`` (and a ``registry`` that can hand the candidate over) the candidate runs
    in its own process at CPU priority ``nice``; otherwise on the runner's thread. A
    recommender candidate's process opens its version's index from ``indexes``.

    With compare ``overlap`` (recommendations) each copy's discrepancy is 1 - the overlap of
    the two item lists, and the change of score of the items both hold is gathered beside it.
    """

    def __init__(
        self,
        route: Route,
        features: Any,
        on_update: Callable[[Route], None],
        *,
        log: Any = None,
        registry: Any = None,
        indexes: Any = None,
        isolate: bool = True,
        nice: int = 19,
        max_queue: int = 4096,
        gather_s: float = 0.02,
    ) -> None:
        self.route = route
        self.features = features
        self.on_update = on_update
        self.log = log
        self.registry = registry
        self.indexes = indexes
        self.isolate = isolate
        self.nice = nice
        self.max_queue = max_queue
        # How long to gather copies before a candidate pass. What the server's process does
        # per pass (stacking, the hand-over, folding the statistics) costs about the same
        # for 1 copy as for 20, so larger, rarer passes take far less of its CPU and lock
        # (see BENCHMARKS.md); the evidence lags by this much, the client not at all.
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
        self._process: CandidateProcess | None = None
        # the route's candidate → what runs it (a twin forwarding to the process, or itself)
        self._runs_on: tuple[Deployed, Deployed] | None = None
        self._started_at = -RESTART_S
        self._local_only: set[str] = set()  # versions whose process could not build them
        self._prepare: Deployed | None = None
        self._prepared = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"keel-shadow-{route.name}", daemon=True
        )
        self._thread.start()

    def prepare(self, candidate: Deployed, timeout: float = 60.0) -> None:
        """Start what runs ``candidate`` (its own process, when isolated) before any copy
        arrives, so the comparison runs at full pace from its first request instead of
        waiting on a process start. The runner's thread does it: only that thread talks to
        the process."""
        self._prepared.clear()
        self._prepare = candidate
        self._wake.set()
        if not self._prepared.wait(timeout):
            logger.warning(
                "route %s: candidate %s not ready after %g s; copies queue until it is",
                self.route.name,
                candidate.version,
                timeout,
            )

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

    @property
    def isolated(self) -> bool:
        """Whether the current candidate runs in its own process."""
        return self._runs_on is not None and self._runs_on[0] is not self._runs_on[1]

    @property
    def candidate_pid(self) -> int | None:
        """The candidate process's id, while one runs."""
        process = self._process
        return process.pid if process is not None and process.alive else None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)
        # Once the thread is done nothing else uses the process (if the thread is stuck
        # waiting on it, closing the pipe wakes it with an error).
        process, self._process = self._process, None
        if process is not None:
            process.close()

    def _run(self) -> None:
        limit = max(self.route.config.max_batch_size, 1)
        while not self._stop.is_set():
            candidate, self._prepare = self._prepare, None
            if candidate is not None:
                try:
                    self._runner_for(candidate)
                except Exception:
                    logger.exception(
                        "route %s: the shadow candidate did not start", self.route.name
                    )
                finally:
                    self._prepared.set()
            try:
                self._join_labels()
            except Exception:  # labels that are not 0/1 for an error loss, say
                logger.exception("route %s: shadow labels could not be joined", self.route.name)
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
            except Exception:
                # The runner outlives a bad batch: the next copies are still compared.
                logger.exception("route %s: a shadow comparison failed", self.route.name)
            finally:
                self._busy = False

    def _runner_for(self, candidate: Deployed) -> Deployed:
        """What runs ``candidate``: a twin in the candidate process, started (or restarted)
        as needed, or the candidate itself when it cannot be handed over."""
        known = self._runs_on if self._runs_on and self._runs_on[0] is candidate else None
        process = self._process
        if known is not None and (process is None or process.alive):
            return known[1]
        if known is not None and time.monotonic() - self._started_at < RESTART_S:
            # A process that keeps exiting is not restarted in a loop: until it is, the
            # copies fail against the exited one and count as the candidate's errors.
            return known[1]
        runs_on = candidate
        cfg = self.route.config
        spec = None
        if self.isolate and candidate.version not in self._local_only:
            spec = candidate_spec(
                candidate,
                self.registry,
                device=cfg.device,
                threads=cfg.threads,
                indexes=self.indexes,
            )
        if spec is not None:
            if process is None or not process.alive:
                if process is not None:
                    process.close()
                self._started_at = time.monotonic()
                self._process = process = CandidateProcess(nice=self.nice)
            try:
                runs_on = process.load(spec, candidate)
            except KeelError as exc:
                # It loaded in this process (the server checked it), so it still runs here.
                self._local_only.add(candidate.version)
                logger.error(
                    "route %s: candidate %s cannot run in its own process (%s); running it "
                    "in the server's",
                    self.route.name,
                    candidate.version,
                    exc,
                )
        self._runs_on = (candidate, runs_on)
        return runs_on

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
        joined = []
        for key, y in zip(ids, ys, strict=True):
            pair = self._awaiting.pop(key, None)
            if pair is not None and y is not None:
                joined.append((float(y), *pair))
        if joined:
            y, primary, candidate = np.array(joined, dtype=np.float64).T
            p_loss, c_loss = label_losses(labels.loss, y, primary, candidate)
            st.primary_loss.update_many(p_loss)
            st.label_delta.update_many(c_loss - p_loss)
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
        runs_on = self._runner_for(candidate)
        # The state and settings are read once: a shadow cleared or replaced meanwhile
        # (set_traffic, a promotion) must not see half of this batch.
        if not self._compare_stacked(items, runs_on, candidate, st, cfg):
            self._compare_each(items, runs_on, candidate, st, cfg)
        self.on_update(route)

    def _compare_stacked(
        self, items: list[Item], runs_on: Deployed, candidate: Deployed, st: Any, cfg: Any
    ) -> bool:
        """The common case in one step: copies that all carry the model's input tensors
        are stacked, run, and compared in one call (in the candidate's process when it has
        one), with no Python loop over the copies while the interpreter lock is held — the
        event loop waits on that lock. False (nothing counted) when the copies need the
        general path: rows to join, outputs that do not stack, or a copy that fails."""
        payloads = [p for p, _, _, _ in items if isinstance(p, Tensors)]
        if len(payloads) < len(items):
            return False
        if cfg.compare == "overlap":
            names = [n for n in RANKING if n in items[0][1]]
        else:
            outputs = {s.name for s in candidate.runtime.outputs}
            names = [n for n in items[0][1] if n in outputs][:1]
        if not names or (cfg.compare == "overlap" and len(names) != len(RANKING)):
            return False
        try:
            # Every array the copies carry: the model's inputs, and what the primary was
            # given beside them (a recommender's joined features).
            inputs = {
                n: np.concatenate([p.arrays[n] for p in payloads]) for n in payloads[0].arrays
            }
            stacked = {n: np.concatenate([o[n] for _, o, _, _ in items]) for n in names}
        except (KeyError, ValueError):
            return False
        process = self._process if runs_on is not candidate else None
        try:
            if process is not None:
                got = process.compare(inputs, stacked, cfg.compare, cfg.top_k)
            else:
                got = compare_outputs(candidate.runtime, inputs, stacked, cfg.compare, cfg.top_k)
        except Exception:
            return False  # the general path finds which copies fail
        primary, scores = stacked[names[0]], got.candidate
        st.requests += len(items)
        if cfg.labels is not None:
            start = 0
            for p, (_, _, _, source) in zip(payloads, items, strict=True):
                end = start + p.n
                self._await_labels(cfg.labels, source, primary[start:end], scores[start:end])
                start = end
        self._fold(st, got.diffs, got.predict_s, items, got.score_diffs)
        return True

    def _compare_each(
        self, items: list[Item], runs_on: Deployed, candidate: Deployed, st: Any, cfg: Any
    ) -> None:
        """Any copies: rows joined for the candidate, and a failing copy counted as an error
        while the others still count."""
        route = self.route
        process = self._process if runs_on is not candidate else None
        if process is not None:
            process.transport_s = 0.0
        started = time.perf_counter()
        try:
            results = run_batch(route, [p for p, _, _, _ in items], self.features, runs_on)
        except Exception:
            results = []
            for p, _, _, _ in items:  # find which copies fail; the others still count
                try:
                    results.extend(run_batch(route, [p], self.features, runs_on))
                except Exception as exc:
                    results.append(exc)
        # The hand-over to the candidate's process is not the candidate's model time.
        elapsed = time.perf_counter() - started
        if process is not None:
            elapsed = max(elapsed - process.transport_s, 0.0)
        # One discrepancy call per output name for the whole batch, not one per copy.
        pairs: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for (_, primary, _, source), result in zip(items, results, strict=True):
            st.requests += 1
            if isinstance(result, BaseException):
                st.errors += 1
                continue
            outputs = result[0]
            names = (
                list(RANKING)
                if cfg.compare == "overlap"
                else [n for n in primary if n in outputs][:1]
            )
            if not names or any(
                n not in primary or n not in outputs or np.shape(primary[n]) != np.shape(outputs[n])
                for n in names
            ):
                st.errors += 1
                continue
            for name in names:
                a, b = pairs.setdefault(name, ([], []))
                a.append(np.asarray(primary[name]))
                b.append(np.asarray(outputs[name]))
            if cfg.labels is not None:
                self._await_labels(cfg.labels, source, primary[names[0]], outputs[names[0]])
        if not pairs:
            return
        if cfg.compare == "overlap":
            # Copies differ in k: pad each list to the widest (-1: no item) to stack them.
            (ia, ib), (sa, sb) = (pairs[n] for n in RANKING)
            diffs, score_diffs = compare_rankings(
                _pad(ia, -1), _pad(ib, -1), _pad(sa, np.nan), _pad(sb, np.nan)
            )
            self._fold(st, diffs, elapsed, items, score_diffs)
            return
        per_name = [
            discrepancy(cfg.compare, np.concatenate(a), np.concatenate(b), cfg.top_k)
            for a, b in pairs.values()
        ]
        self._fold(st, np.concatenate(per_name), elapsed, items)

    def _await_labels(
        self, labels: Any, source: Tensors | Rows, primary: np.ndarray, candidate: np.ndarray
    ) -> None:
        """Remember both scores of the source's rows that carry a label id."""
        if not isinstance(source, Rows):
            return
        for row, p, c in zip(source.rows, np.ravel(primary), np.ravel(candidate), strict=False):
            if labels.id in row:
                self._awaiting[row[labels.id]] = (float(p), float(c))
        while len(self._awaiting) > 100_000:
            self._awaiting.popitem(last=False)

    def _fold(
        self,
        st: Any,
        diffs: np.ndarray,
        candidate_s: float,
        items: list[Item],
        score_diffs: np.ndarray | None = None,
    ) -> None:
        """Fold a batch's discrepancies and latencies into the evidence."""
        route = self.route
        st.diff.update_many(diffs)
        if score_diffs is not None:
            st.score_diff.update_many(score_diffs[np.isfinite(score_diffs)])
        # Model time against model time: the candidate's forward pass per example versus
        # the primary's (its batcher's moving average), queueing excluded on both sides.
        st.candidate_ms.update_many([candidate_s * 1000 / max(len(items), 1)])
        primary_s = route.batcher.seconds_per_request if route.batcher is not None else 0.0
        if primary_s:
            st.primary_ms.update_many([primary_s * 1000])
        else:
            st.primary_ms.update_many([ms for _, _, ms, _ in items])


def _pad(parts: list[np.ndarray], fill: float) -> np.ndarray:
    """Row blocks of different widths stacked into one, the short rows padded with ``fill``."""
    width = max(p.shape[1] for p in parts)
    out = np.full((sum(len(p) for p in parts), width), fill, dtype=parts[0].dtype)
    start = 0
    for p in parts:
        out[start : start + len(p), : p.shape[1]] = p
        start += len(p)
    return out


def label_losses(
    kind: str, labels: np.ndarray, primary: np.ndarray, candidate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each version's per-row loss against the labels, by the monitor's rule
    (:func:`keel.monitoring.concept.row_loss`: a score of 0.5 counts as positive), so that a
    shadow and the monitor grade a version alike."""
    from keel.monitoring.concept import row_loss

    return row_loss(kind, labels, primary), row_loss(kind, labels, candidate)
