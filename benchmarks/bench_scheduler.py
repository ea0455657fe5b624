"""Job admission engine: admission decisions per second and per-cycle latency.

Run: ``.venv/bin/python benchmarks/bench_scheduler.py [--jobs 10000] [--queues 20]
[--arrivals 0.2] [--fair-sharing]``. ``--jobs`` jobs (cpu 1-8, memory 1-32 GiB, one in ten
asking for 1-2 GPUs; priority 0 or 100) are spread over ``--queues`` cluster queues in
one cohort, each with two flavors (on-demand, spot), preempting lower priorities within the
queue and reclaiming from borrowers. All but the ``--arrivals`` share are pending at the
start; those arrive 20 a cycle at priority 500 once 60% of the others were admitted, and
preempt. Cycles are driven until every job has been admitted and has finished: an admitted
job runs 2-10 cycles (priority 0: 20-60), then is released; a preempted one is requeued.
Only the engine's calls are timed (``cycle``, ``release``, ``requeue``). Goals: at least 1,000
admission decisions per second, and no decision slower than 50 ms (a cycle decides one head
per queue, so its latency bounds each decision's).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import msgspec

from keel.jobs.admission import Scheduler, Workload
from keel.jobs.spec import JobsConfig

GI = 2.0**30


def build_config(queues: int, fair_sharing: bool) -> JobsConfig:
    def flavor(name: str, cpu: int, memory: float, gpu: int) -> dict:
        return {
            "name": name,
            "resources": {
                "cpu": {"nominal": cpu},
                "memory": {"nominal": memory},
                "nvidia.com/gpu": {"nominal": gpu},
            },
        }

    cluster_queues = [
        {
            "name": f"cq{i}",
            "cohort": "all",
            "preemption": {
                "within_cluster_queue": "LowerPriority",
                "reclaim_within_cohort": "LowerPriority",
            },
            "resource_groups": [
                {
                    "covered": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [
                        flavor("on-demand", 8, 32 * GI, 1),
                        flavor("spot", 4, 16 * GI, 1),
                    ],
                }
            ],
        }
        for i in range(queues)
    ]
    return msgspec.convert(
        {
            "flavors": [{"name": "on-demand"}, {"name": "spot"}],
            "cluster_queues": cluster_queues,
            "local_queues": [{"name": f"lq{i}", "cluster_queue": f"cq{i}"} for i in range(queues)],
            "fair_sharing": fair_sharing,
        },
        JobsConfig,
    )


def make_jobs(n: int, queues: int, rng: random.Random) -> list[Workload]:
    jobs = []
    for i in range(n):
        requests = {"cpu": float(rng.randint(1, 8)), "memory": rng.randint(1, 32) * GI}
        if rng.random() < 0.1:
            requests["nvidia.com/gpu"] = float(rng.randint(1, 2))
        jobs.append(
            Workload(
                id=f"job-{i:05d}",
                queue=f"lq{rng.randrange(queues)}",
                priority=rng.choice((0, 100)),
                requests=requests,
                created=float(i),
            )
        )
    return jobs


def run(n: int, queues: int, arrivals: float, fair_sharing: bool, seed: int) -> None:
    rng = random.Random(seed)
    scheduler = Scheduler(build_config(queues, fair_sharing))
    jobs = make_jobs(n, queues, rng)
    late = jobs[n - int(n * arrivals) :]
    start = time.perf_counter()
    for job in jobs[: n - len(late)]:
        scheduler.submit(job)
    submit_s = time.perf_counter() - start
    late.reverse()

    finishes: dict[int, list[tuple[str, float]]] = {}
    running: dict[str, float] = {}
    cycle_s: list[float] = []
    engine_s = 0.0
    admitted = evicted = heads = 0
    now = 0
    done = 0
    while done < n:
        now += 1
        # Late jobs come once the early high priorities have run, so they find lower
        # priorities to preempt.
        arriving = []
        if admitted >= 0.6 * (n - int(n * arrivals)):
            arriving = [late.pop() for _ in range(min(20, len(late)))]
        t0 = time.perf_counter()
        for job in arriving:
            job.created = float(n + now)
            job.priority = 500
            scheduler.submit(job)
        for id, at in finishes.pop(now, []):
            if running.get(id) == at:  # not preempted since
                del running[id]
                scheduler.release(id)
                done += 1
        t1 = time.perf_counter()
        result = scheduler.cycle(float(now))
        t2 = time.perf_counter()
        for eviction in result.evictions:
            scheduler.requeue(eviction.victim)  # the victim stops at once
            del running[eviction.victim]
        t3 = time.perf_counter()
        cycle_s.append(t2 - t1)
        engine_s += (t1 - t0) + (t2 - t1) + (t3 - t2)
        heads += sum(1 for q in scheduler.usage() if q.pending) + len(result.admitted)
        admitted += len(result.admitted)
        evicted += len(result.evictions)
        for wl in result.admitted:
            runs = rng.randint(20, 60) if wl.priority == 0 else rng.randint(2, 10)
            finishes.setdefault(now + runs, []).append((wl.id, float(now)))
            running[wl.id] = float(now)
        if now > 50 * n:
            raise RuntimeError(f"no progress after {now} cycles: {n - done} jobs left")

    cycles_ms = sorted(s * 1e3 for s in cycle_s)
    p99 = cycles_ms[min(len(cycles_ms) - 1, int(0.99 * len(cycles_ms)))]
    print(
        f"{n:,} jobs over {queues} cluster queues in one cohort"
        f"{' (fair sharing)' if fair_sharing else ''}:"
    )
    up_front = n - int(n * arrivals)
    print(f"  submit          {submit_s * 1e3:8.1f} ms ({up_front / submit_s:,.0f} jobs/s)")
    print(f"  cycles          {len(cycle_s):8d}   admitted {admitted:,}  evictions {evicted:,}")
    print(
        f"  engine time     {engine_s:8.2f} s   {admitted / engine_s:,.0f} admissions/s  "
        f"{heads / engine_s:,.0f} head decisions/s"
    )
    print(
        f"  cycle latency   median {statistics.median(cycles_ms):.3f} ms  p99 {p99:.3f} ms  "
        f"max {cycles_ms[-1]:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--arrivals", type=float, default=0.2)
    parser.add_argument("--fair-sharing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.jobs, args.queues, args.arrivals, args.fair_sharing, args.seed)


if __name__ == "__main__":
    main()
