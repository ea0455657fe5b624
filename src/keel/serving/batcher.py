"""The micro-batcher: requests for one route gathered and run as one forward pass.

* An idle model runs a request at once; under load, requests gather while a batch runs and
  the next batch takes them all (up to ``max_batch_size``), waiting at most ``max_wait_ms``
  from its oldest request — and no longer than one forward pass takes — to fill up.
* The forward pass runs on the route's own worker thread, never on the event loop. A route
  with ``workers`` > 1 keeps up to that many batches in flight, each on its own thread (model
  instances, as Triton's instance groups). Another one starts only once a full batch waits
  behind those running: at moderate load one batch at a time keeps every core for the lowest
  latency; under a backlog batches run side by side, gathered, tokenized and encoded while
  the others compute, so no core waits for another stage. ``run_batch`` must then be safe to
  call from several threads at once (Keel's runtimes are).
* A bounded queue sheds load: a request that cannot be started before its deadline, or that
  finds the queue full, is refused at once (:class:`Overloaded`, HTTP 503 + Retry-After)
  instead of timing out later. Higher ``priority`` requests are taken first.
* One failing request never fails its batch-mates: the batch function returns a result or an
  exception per item, and if the whole batch raises, each item is rerun alone.

Written here rather than taken from a serving framework because the batching policy, the
shedding rule and the per-item isolation are the product.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from keel.errors import UnavailableError

__all__ = ["Batcher", "Overloaded"]


class Overloaded(UnavailableError):
    """The route cannot take (or finish in time) this request now."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(order=True)
class _Item:
    rank: int
    seq: int
    payload: Any = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    deadline: float | None = field(compare=False)
    enqueued: float = field(compare=False)


BatchFn = Callable[[Sequence[Any]], Sequence[Any]]


class Batcher:
    """Gathers ``submit`` calls into batches for ``run_batch`` (called off the event loop).

    ``run_batch(payloads)`` returns one result per payload, in order; a result that is an
    exception instance fails only its own request.
    """

    def __init__(
        self,
        run_batch: BatchFn,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
        max_queue: int = 1024,
        name: str = "",
        on_batch: Callable[[int, float], None] | None = None,
        workers: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or workers < 1:
            raise ValueError("max_batch_size, max_queue and workers must be >= 1, max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.name = name
        self.on_batch = on_batch
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self.workers = workers
        self._wake: asyncio.Event | None = None
        self._busy = 0  # workers running (or gathering) a batch
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()  # batches in flight
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"keel-batch-{name}")
        self._draining = False
        self._closed = False
        self._batch_s = 0.0  # moving average of one forward pass, for shedding decisions
        self._item_s = 0.0  # moving average of a forward pass per request

    @property
    def seconds_per_request(self) -> float:
        """Moving average of the forward-pass time per request (0 before the first)."""
        return self._item_s

    @property
    def depth(self) -> int:
        return len(self._heap)

    def estimated_wait_s(self, position: int | None = None) -> float:
        """How long a request entering now would wait before its batch finishes."""
        ahead = self.depth if position is None else position
        return (ahead // (self.max_batch_size * self.workers) + 1) * max(self._batch_s, 1e-4)

    async def submit(
        self, payload: Any, *, deadline_s: float | None = None, priority: int = 0
    ) -> Any:
        """Queue ``payload`` and wait for its result. ``deadline_s`` is relative to now."""
        if self._closed:
            raise Overloaded(f"route {self.name!r} was replaced; send the request again", 0.1)
        self._ensure_running()
        now = time.monotonic()
        if len(self._heap) >= self.max_queue:
            raise Overloaded(
                f"route {self.name!r} is overloaded: {self.depth} requests queued",
                self.estimated_wait_s(),
            )
        if deadline_s is not None and self._batch_s and self.estimated_wait_s() > deadline_s:
            raise Overloaded(
                f"route {self.name!r} cannot answer within {deadline_s * 1000:.0f} ms now "
                f"(about {self.estimated_wait_s() * 1000:.0f} ms of work queued)",
                self.estimated_wait_s(),
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        item = _Item(
            -priority,
            next(self._seq),
            payload,
            future,
            None if deadline_s is None else now + deadline_s,
            now,
        )
        heapq.heappush(self._heap, item)
        assert self._wake is not None
        self._wake.set()
        return await future

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def drain(self, timeout_s: float = 60.0) -> None:
        """Answer every request queued or running, then stop: what a route that is replaced
        (a new device or batch policy) does with its old batcher, so that the swap loses
        nothing. Whatever is still queued after ``timeout_s`` is refused as by :meth:`close`."""
        self._draining = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        self._closed = True
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._running):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for item in self._heap:
            if not item.future.done():
                item.future.set_exception(Overloaded(f"route {self.name!r} is closing", 1.0))
        self._heap.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            while not self._heap:
                if self._draining:
                    if self._running:
                        await asyncio.wait(list(self._running))
                    return
                self._wake.clear()
                await self._wake.wait()
            # A batch starts on an idle worker; another one beside a running batch only once
            # a full batch waits: until then the batch in flight keeps every thread (the
            # lowest latency), and the next one is taken the moment it ends. Under a backlog,
            # batches run side by side and share the cores.
            while self._busy >= self.workers or (
                self._busy and len(self._heap) < self.max_batch_size and not self._draining
            ):
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            self._busy += 1
            if len(batch) < self.max_batch_size and self._heap == [] and len(batch) > 1:
                # Under load but not full: wait for more, up to the oldest request's window —
                # and never longer than one forward pass takes, which would cost more than
                # the larger batch saves.
                until = min(
                    min(i.enqueued for i in batch) + self.max_wait_s,
                    time.monotonic() + self._batch_s,
                )
                while len(batch) < self.max_batch_size and time.monotonic() < until:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), until - time.monotonic())
                    except TimeoutError:
                        break
                    batch += self._take(self.max_batch_size - len(batch))
            live = self._drop_expired(batch)
            if not live:
                self._busy -= 1
                continue
            task = asyncio.get_running_loop().create_task(self._dispatch(live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _dispatch(self, live: list[_Item]) -> None:
        """Run one batch on a worker thread and answer its requests."""
        started = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run, live
            )
        except Exception as exc:  # the executor itself failed: fail this batch only
            results = [exc] * len(live)
        finally:
            self._busy -= 1
            if self._wake is not None:
                self._wake.set()  # the worker is free: the next batch may start
        elapsed = time.monotonic() - started
        self._batch_s = elapsed if not self._batch_s else 0.8 * self._batch_s + 0.2 * elapsed
        each = elapsed / len(live)
        self._item_s = each if not self._item_s else 0.8 * self._item_s + 0.2 * each
        if self.on_batch is not None:
            self.on_batch(len(live), elapsed)
        for item, result in zip(live, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _take(self, limit: int | None = None) -> list[_Item]:
        n = min(limit or self.max_batch_size, len(self._heap))
        return [heapq.heappop(self._heap) for _ in range(n)]

    def _drop_expired(self, batch: list[_Item]) -> list[_Item]:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.future.done():  # the client went away
                continue
            if item.deadline is not None and now > item.deadline:
                item.future.set_exception(
                    Overloaded(
                        f"route {self.name!r}: the request's deadline passed while it was queued",
                        self.estimated_wait_s(),
                    )
                )
                continue
            live.append(item)
        return live

    def _run(self, items: list[_Item]) -> list[Any]:
        payloads = [i.payload for i in items]
        try:
            results = list(self.run_batch(payloads))
            if len(results) != len(payloads):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(payloads)} inputs"
                )
            return results
        except Exception:
            if len(payloads) == 1:
                raise
        # The batch failed as a whole: run each request alone so only the culprit fails.
        out: list[Any] = []
        for p in payloads:
            try:
                out.extend(self.run_batch([p]))
            except Exception as exc:
                out.append(exc)
        return out
