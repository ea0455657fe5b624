"""A route's fast path: a separate CPU pipeline for its strictest requests.

A request whose deadline (``x-keel-deadline-ms``) is below the route's ``fast_path.below_ms``
skips the micro-batch and runs, alone, on the fast path's own small checkpoint, on its own
thread, reading its own in-process replica of the feature views it needs
(:meth:`~keel.features.FeatureStore.replica`, kept current from the log by the server). So a
saturated main route — its queue, its batch thread, a shared online store slowed by load — does
not slow it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from keel.config import FastPathConfig
from keel.serving.routes import Deployed, Prediction, Route, RouteConfig, Rows, Tensors, run_batch

__all__ = ["FastPath"]

logger = logging.getLogger(__name__)


class FastPath:
    """The fast path of route ``route`` (see the module's docstring). ``features`` is the
    server's feature store, replicated for the views ``config.features`` read."""

    def __init__(
        self,
        route: str,
        config: FastPathConfig,
        deployed: Deployed,
        features: Any = None,
        *,
        features_at: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.deployed = deployed
        self.features = None
        if features is not None and config.features:
            self.features = features.replica(config.features, name=route)
            self.features.materialize()  # caught up before its first answer
        self._route = Route(
            RouteConfig(name=route, model=config.model, features=config.features), deployed
        )
        self._route.features_at = features_at
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"keel-fast-{route}")

    def takes(self, deadline_ms: float | None) -> bool:
        """Whether a request with this deadline is the fast path's."""
        return deadline_ms is not None and deadline_ms < self.config.below_ms

    async def answer(self, payload: Tensors | Rows) -> Prediction:
        loop = asyncio.get_running_loop()
        deployed = self.deployed  # one version for the whole request, across a swap
        result = await loop.run_in_executor(
            self._executor, run_batch, self._route, [payload], self.features, deployed
        )
        answer = result[0]
        if isinstance(answer, BaseException):
            raise answer
        return Prediction(answer.outputs, answer.version, answer.staleness)

    def catch_up(self) -> int:
        """Bring the replica up to date with the log; the events it folded in."""
        if self.features is None:
            return 0
        return sum(s.events for s in self.features.materialize().values())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
