"""The micro-batcher's contract."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.runtimes import LightGBMRuntime
from keel.serving import Batcher, Overloaded


def doubling(payloads):
    return [p * 2 for p in payloads]


def test_an_idle_model_runs_a_request_at_once() -> None:
    async def go() -> int:
        b = Batcher(doubling, max_batch_size=8, max_wait_ms=60_000)
        try:
            # A 60 s window: waiting it out would hit the 5 s timeout.
            return await asyncio.wait_for(b.submit(21), timeout=5)
        finally:
            await b.close()

    assert asyncio.run(go()) == 42


def test_requests_under_load_share_forward_passes(wait_until_async) -> None:
    sizes: list[int] = []
    running: list[int] = []
    gate = threading.Event()

    def slow(payloads):
        running.append(len(payloads))
        gate.wait(5)
        return [p + 1 for p in payloads]

    async def go() -> list[int]:
        b = Batcher(slow, max_batch_size=16, max_wait_ms=5, on_batch=lambda n, s: sizes.append(n))
        tasks = [asyncio.create_task(b.submit(i)) for i in range(40)]
        await wait_until_async(
            lambda: running and running[0] + b.depth == 40,
            lambda: f"a batch running and the rest queued ({running} running, {b.depth} queued)",
        )
        gate.set()
        out = await asyncio.gather(*tasks)
        await b.close()
        return out

    assert asyncio.run(go()) == [i + 1 for i in range(40)]
    assert max(sizes) > 1 and max(sizes) <= 16 and sum(sizes) == 40


def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    def picky(payloads):
        if any(p < 0 for p in payloads):
            raise ValueError("negative input")
        return [p * 10 for p in payloads]

    async def go():
        b = Batcher(picky, max_batch_size=8, max_wait_ms=20)
        results = await asyncio.gather(
            *(b.submit(p) for p in (1, 2, -3, 4)), return_exceptions=True
        )
        await b.close()
        return results

    results = asyncio.run(go())
    assert results[0] == 10 and results[1] == 20 and results[3] == 40
    assert isinstance(results[2], ValueError)


def test_a_full_queue_sheds_load_with_a_retry_hint(wait_until_async) -> None:
    entered = threading.Event()
    gate = threading.Event()

    def blocked(payloads):
        entered.set()
        gate.wait(5)
        return payloads

    async def go():
        b = Batcher(blocked, max_batch_size=1, max_wait_ms=0, max_queue=2)
        first = asyncio.create_task(b.submit(0))
        await wait_until_async(entered.is_set, "the worker to take request 0")
        queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await wait_until_async(lambda: b.depth == 2, lambda: f"2 queued, not {b.depth}")
        with pytest.raises(Overloaded, match="overloaded") as info:
            await b.submit(3)
        assert info.value.retry_after_s > 0
        gate.set()
        assert await first == 0
        assert await asyncio.gather(*queued) == [1, 2]
        await b.close()

    asyncio.run(go())


def test_a_deadline_that_cannot_be_met_is_refused_up_front(wait_until_async) -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def slow(payloads):
        calls.append(payloads)
        if len(calls) == 1:
            time.sleep(0.2)  # a forward pass with a cost the batcher can learn
        else:
            gate.wait(5)
        return payloads

    async def go():
        b = Batcher(slow, max_batch_size=1, max_wait_ms=0)
        await b.submit(0)  # learn how long a batch takes (~0.2 s)
        waiting = [asyncio.create_task(b.submit(i)) for i in range(3)]
        await wait_until_async(
            lambda: len(calls) == 2 and b.depth == 2,
            lambda: f"one request running and two queued ({len(calls)} calls, {b.depth} queued)",
        )
        with pytest.raises(Overloaded, match="cannot answer within 5 ms"):
            await b.submit(9, deadline_s=0.005)
        gate.set()
        await asyncio.gather(*waiting)
        await b.close()

    asyncio.run(go())


def test_higher_priority_goes_first(wait_until_async) -> None:
    order: list[int] = []
    entered = threading.Event()
    gate = threading.Event()

    def record(payloads):
        entered.set()
        gate.wait(5)
        order.extend(payloads)
        return payloads

    async def go():
        b = Batcher(record, max_batch_size=1, max_wait_ms=0)
        first = asyncio.create_task(b.submit(0))
        await wait_until_async(entered.is_set, "the worker to take request 0")
        low = asyncio.create_task(b.submit(1, priority=0))
        high = asyncio.create_task(b.submit(2, priority=5))
        await wait_until_async(lambda: b.depth == 2, lambda: f"2 queued, not {b.depth}")
        gate.set()
        await asyncio.gather(first, low, high)
        await b.close()

    asyncio.run(go())
    assert order == [0, 2, 1]


@pytest.fixture(scope="module")
def gbm_runtime() -> LightGBMRuntime:
    import lightgbm

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    y = (x[:, 0] * x[:, 1] + x[:, 2] > 0).astype(int)
    return LightGBMRuntime(lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(x, y))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=12),
    max_batch=st.integers(1, 8),
)
def test_batching_never_changes_a_prediction(gbm_runtime, data, sizes, max_batch) -> None:
    rows = [
        np.asarray(
            data.draw(
                st.lists(
                    st.lists(st.floats(-3, 3, allow_nan=False), min_size=6, max_size=6),
                    min_size=n,
                    max_size=n,
                )
            ),
            dtype=np.float64,
        )
        for n in sizes
    ]

    def run(payloads):
        stacked = np.concatenate(payloads)
        out = gbm_runtime.predict({"features": stacked})["score"]
        splits = np.cumsum([len(p) for p in payloads])[:-1]
        return np.split(out, splits)

    alone = [gbm_runtime.predict({"features": r})["score"] for r in rows]

    async def go():
        b = Batcher(run, max_batch_size=max_batch, max_wait_ms=2)
        got = await asyncio.gather(*(b.submit(r) for r in rows))
        await b.close()
        return got

    for a, g in zip(alone, asyncio.run(go()), strict=True):
        np.testing.assert_allclose(g, a, rtol=1e-12, atol=1e-12)


def test_a_drained_batcher_answers_everything_queued_and_running(wait_until_async) -> None:
    entered = threading.Event()
    gate = threading.Event()
    sizes: list[int] = []

    def slow(payloads):
        entered.set()
        gate.wait(5)
        sizes.append(len(payloads))
        return [p * 2 for p in payloads]

    async def go() -> tuple[list[int], Exception]:
        b = Batcher(slow, max_batch_size=2, max_wait_ms=0)
        pending = [asyncio.ensure_future(b.submit(i)) for i in range(7)]
        await wait_until_async(
            lambda: entered.is_set() and b.depth == 5,
            lambda: f"the first batch running and 5 queued ({b.depth} queued)",
        )
        began = asyncio.Event()

        async def drain() -> None:
            began.set()
            await b.drain(timeout_s=10)

        drained = asyncio.ensure_future(drain())
        # This task resumes only once the drain has run up to its first wait, so the
        # batcher is draining, not merely about to, when the worker is let go.
        await began.wait()
        assert not drained.done()
        gate.set()
        await drained
        try:
            await b.submit(99)
        except Overloaded as exc:
            late = exc
        return list(await asyncio.gather(*pending)), late

    answers, late = asyncio.run(go())
    assert answers == [i * 2 for i in range(7)] and sum(sizes) == 7
    assert "replaced" in str(late)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_keep_that_many_batches_in_flight(workers: int, wait_until_async) -> None:
    """``workers`` batches run at once, each on its own thread; never more."""
    lock = threading.Lock()
    now_running: list[int] = [0]
    most: list[int] = [0]
    threads: set[str] = set()
    gate = threading.Event()

    def held(payloads):
        with lock:
            now_running[0] += 1
            most[0] = max(most[0], now_running[0])
            threads.add(threading.current_thread().name)
        gate.wait(5)
        with lock:
            now_running[0] -= 1
        return [p * 10 for p in payloads]

    async def go() -> list[int]:
        b = Batcher(held, max_batch_size=2, max_wait_ms=0, workers=workers)
        tasks = [asyncio.create_task(b.submit(i)) for i in range(12)]
        await wait_until_async(
            lambda: now_running[0] == workers,
            lambda: f"{workers} batches running at once ({now_running[0]} are)",
        )
        # The rest wait for a free worker rather than starting a batch of their own.
        await asyncio.sleep(0.05)
        assert now_running[0] == workers
        gate.set()
        out = await asyncio.gather(*tasks)
        await b.close()
        return out

    assert asyncio.run(go()) == [i * 10 for i in range(12)]
    assert most[0] == workers
    assert len(threads) == workers


def test_a_second_worker_waits_for_a_full_batch(wait_until_async) -> None:
    """Below a full batch of backlog the running batch keeps the cores; the waiting requests
    go at once when it ends, as one batch."""
    sizes: list[int] = []
    gate = threading.Event()
    running: list[int] = []

    def held(payloads):
        running.append(len(payloads))
        gate.wait(5)
        return list(payloads)

    async def go() -> None:
        b = Batcher(
            held, max_batch_size=8, max_wait_ms=0, workers=2, on_batch=lambda n, s: sizes.append(n)
        )
        first = asyncio.create_task(b.submit(0))
        await wait_until_async(lambda: running == [1], lambda: f"one batch running ({running})")
        rest = [asyncio.create_task(b.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        assert running == [1]  # 5 waiting, fewer than a batch: no second batch yet
        more = [asyncio.create_task(b.submit(i)) for i in range(6, 12)]
        await wait_until_async(lambda: len(running) == 2, lambda: f"a second batch ({running})")
        assert running == [1, 8]  # a full batch waited: it runs beside the first
        gate.set()
        await asyncio.gather(first, *rest, *more)
        await b.close()

    asyncio.run(go())
    assert sorted(sizes) == [1, 3, 8]


def test_drain_answers_the_batches_in_flight_on_every_worker() -> None:
    def slow(payloads):
        time.sleep(0.05)
        return [p + 1 for p in payloads]

    async def go() -> list[int]:
        b = Batcher(slow, max_batch_size=2, max_wait_ms=0, workers=2)
        tasks = [asyncio.create_task(b.submit(i)) for i in range(9)]
        await asyncio.sleep(0.01)
        await b.drain(timeout_s=10)
        return await asyncio.gather(*tasks)

    assert asyncio.run(go()) == [i + 1 for i in range(9)]


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        Batcher(doubling, workers=0)
