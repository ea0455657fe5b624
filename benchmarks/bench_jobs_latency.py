"""Job start latency: from ``Executor.start()`` to the command running, and to ``poll()``
seeing its outcome, through ``local://`` and a loopback Dask cluster.

Run: ``.venv/bin/python benchmarks/bench_jobs_latency.py [--runs 50] [--skip-dask]``.
The command is a Python one-liner that first writes ``time.time()`` to a file; "to running" is
that timestamp minus the time just before ``start()``, so it includes the command's own
interpreter start-up, shown on its own as the baseline (the same command started with a bare
``subprocess.Popen``). Attempts run one at a time, after a few unmeasured warm-up runs.
Then the same through the job manager: ``submit()`` (stored pending), a tick (admitted by
the scheduler), started on ``local://``. Goal: local submit-to-running p95 <= 200 ms.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from keel.jobs.executors import Attempt, Executor, executor_for

WARMUP = 3
GOAL_LOCAL_S = 0.200
POLL_S = 0.002
STAMP = "import sys, time; open(sys.argv[1], 'w').write(repr(time.time()))"


def read_stamp(path: Path, timeout_s: float = 60.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text:
            return float(text)
        time.sleep(POLL_S)
    raise SystemExit(f"the command never wrote {path}")


def baseline(root: Path, runs: int) -> dict[str, list[float]]:
    """The floor: the command started directly, no executor and no wrapper."""
    out: dict[str, list[float]] = {"running": [], "ended": []}
    for i in range(WARMUP + runs):
        stamp = root / f"base-{i}"
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-c", STAMP, str(stamp)])
        proc.wait()
        ended = time.time()
        if i >= WARMUP:
            out["running"].append(read_stamp(stamp) - t0)
            out["ended"].append(ended - t0)
    return out


def measure(executor: Executor, root: Path, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"start call": [], "running": [], "ended": []}
    for i in range(WARMUP + runs):
        stamp = root / f"{executor.scheme}-{i}"
        attempt = Attempt(
            job_id=f"bench-{executor.scheme}-{i}",
            attempt=1,
            argv=[sys.executable, "-c", STAMP, str(stamp)],
            env={},
            cwd=str(root),
            requests={"cpu": 1.0, "memory": 1e8},
            run_dir=str(root / "runs" / executor.scheme / str(i)),
        )
        t0 = time.time()
        executor.start(attempt)
        started = time.time()
        while (outcome := executor.poll(attempt)) is None:
            time.sleep(POLL_S)
        ended = time.time()
        if outcome.exit_code != 0:
            raise SystemExit(f"{attempt.key} failed: {outcome}")
        if i >= WARMUP:
            out["start call"].append(started - t0)
            out["running"].append(read_stamp(stamp) - t0)
            out["ended"].append(ended - t0)
    return out


def through_manager(url: str, root: Path, runs: int) -> dict[str, list[float]]:
    """The whole path a submitted job takes: stored as pending, picked up by the manager's
    next tick, admitted by the scheduler, started on the executor. The manager ticks back to
    back here; ``keel jobs run`` ticks every 0.2 s, which adds up to that much."""
    from keel.jobs.manager import JobManager, JobSpec
    from keel.jobs.spec import JobsConfig
    from keel.jobs.store import JobStore

    store = JobStore(f"sqlite:///{root}/manager-{url[:5]}.db")
    manager = JobManager(
        JobsConfig(), store, executor_for(url), run_root=root / "manager-runs" / url[:5]
    )
    out: dict[str, list[float]] = {"submit call": [], "running": []}
    try:
        manager.tick()  # takes the lease and builds the scheduler
        for i in range(WARMUP + runs):
            stamp = root / f"manager-{url[:5]}-{i}"
            spec = JobSpec(
                name=f"bench-{i}",
                argv=[sys.executable, "-c", STAMP, str(stamp)],
                requests={"cpu": 1},
                cwd=str(root),
            )
            t0 = time.time()
            job = manager.submit(spec)
            submitted = time.time()
            while not stamp.exists() or not stamp.read_text():
                manager.tick()
            running = read_stamp(stamp)
            manager.wait(job.id, interval=POLL_S)
            if i >= WARMUP:
                out["submit call"].append(submitted - t0)
                out["running"].append(running - t0)
    finally:
        manager.close()
    return out


def report(label: str, results: dict[str, list[float]]) -> None:
    for what, values in results.items():
        ms = np.asarray(values) * 1000
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        print(
            f"  {label:9s} {what:11s} median {p50:7.1f} ms   p95 {p95:7.1f} ms   "
            f"p99 {p99:7.1f} ms   max {ms.max():7.1f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--skip-dask", action="store_true")
    args = ap.parse_args()
    print(
        f"start() to the command running / to poll() seeing its outcome, {args.runs} runs "
        f"each, one at a time, poll every {POLL_S * 1000:.0f} ms"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        report("baseline", baseline(root, args.runs))
        with executor_for("local://") as local:
            results = measure(local, root, args.runs)
        report("local://", results)
        p95 = float(np.percentile(results["running"], 95))
        verdict = "met" if p95 <= GOAL_LOCAL_S else "missed"
        print(
            f"  goal: local submit-to-running p95 <= {GOAL_LOCAL_S * 1000:.0f} ms: "
            f"{verdict} ({p95 * 1000:.1f} ms)"
        )
        managed = through_manager("local://", root, args.runs)
        report("manager", managed)
        p95 = float(np.percentile(managed["running"], 95))
        verdict = "met" if p95 <= GOAL_LOCAL_S else "missed"
        print(
            f"  goal through the manager (submit, admit, start on local://) p95 <= "
            f"{GOAL_LOCAL_S * 1000:.0f} ms: {verdict} ({p95 * 1000:.1f} ms)"
        )
        if not args.skip_dask:
            import distributed

            with distributed.LocalCluster(
                n_workers=1,
                threads_per_worker=4,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                resources={"cpu": 4, "memory": 8e9},
            ) as cluster:
                url = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
                with executor_for(url) as dask_executor:
                    report("dask://", measure(dask_executor, root, args.runs))


if __name__ == "__main__":
    main()
