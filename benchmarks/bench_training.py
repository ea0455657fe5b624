"""Training: `keel train fraud` on the demo shop, phase by phase; the torch trainer's
checkpoint cost; and how long a preempted run takes to get back to training.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_training.py [--users 5000]
[--days 14] [--repeat 3]``. The shop is the demo's (seed 7, the demo's shift); the torch
figures use a 1.6M-parameter MLP on synthetic rows.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from keel.config import CONFIG_FILE
from keel.demo.data_steps import append_history, demo_shop
from keel.project import Project, init_project
from keel.training import CheckpointStore, Preempted, RunContext, Torch

TORCH_JOB = dict(module_kwargs={"hidden": [1024, 1024, 512]}, batch_size=256, seed=3)


def shop_project(root: Path, users: int, days: float) -> Project:
    init_project(root, name="bench", force=True)
    project = Project.load(root / CONFIG_FILE)
    project.apply()
    now = datetime.now(UTC).replace(microsecond=0)
    shop = demo_shop(seed=7, users=users, items=2_000, days=days, now=now)
    append_history(project.log, shop, days=days, now=now)
    project.features.land()
    return project


def bench_train(users: int, days: float, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        project = shop_project(Path(tmp), users, days)
        print(
            f"demo shop: {users:,} users, {days:g} days, "
            f"built in {time.perf_counter() - start:.1f} s"
        )
        runs: dict[str, list[float]] = {}
        for _ in range(repeat):
            result = project.train("fraud")
            for phase, s in result.seconds.items():
                runs.setdefault(phase, []).append(s)
        data = result.data
        print(
            f"keel train fraud: {data.table.num_rows:,} rows × {len(data.names)} features, "
            f"{int(data.train.sum()):,} to fit, {int(data.holdout.sum()):,} held out; "
            f"holdout AUC {result.metrics['auc']:.3f}"
        )
        total = [sum(v) for v in zip(*runs.values(), strict=True)]
        for phase, values in [*runs.items(), ("total", total)]:
            print(f"  {phase:13s} median {statistics.median(values):7.3f} s  (of {repeat})")


def synthetic(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 64))
    return x, (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=rows) > 0.5).astype(float)


def bench_checkpoints(rows: int, epochs: int) -> None:
    """The same torch job without checkpoints and with one every few seconds, alternated
    twice (medians), and the cost of each checkpoint as the trainer measured it."""
    x, y = synthetic(rows)
    names = [f"f{i}" for i in range(x.shape[1])]
    plain_s, with_s, per, written, every, size = [], [], [], 0, 0.0, 0
    for _ in range(2):
        start = time.perf_counter()
        Torch(epochs=epochs, checkpoint_every_s=None, **TORCH_JOB).fit(x, y, names, RunContext())
        plain_s.append(time.perf_counter() - start)
        every = max(statistics.median(plain_s) / 8, 0.5)  # several per run, to time each
        with tempfile.TemporaryDirectory() as tmp:
            ctx = RunContext(checkpoints=CheckpointStore(tmp, keep=2), data_sha256="bench")
            start = time.perf_counter()
            Torch(epochs=epochs, checkpoint_every_s=every, **TORCH_JOB).fit(x, y, names, ctx)
            with_s.append(time.perf_counter() - start)
            size = max(p.stat().st_size for p in Path(tmp).glob("*.ckpt"))
        per.append(ctx.checkpoint_s / max(ctx.checkpoints_written, 1))
        written += ctx.checkpoints_written
    each = statistics.median(per)
    base, saving = statistics.median(plain_s), statistics.median(with_s)
    print(
        f"torch MLP (1.6M parameters), {rows:,} rows × {epochs} epochs: {base:.1f} s without "
        f"checkpoints, {saving:.1f} s with one every {every:.1f} s (medians of 2, alternated)"
    )
    print(
        f"  {written} checkpoints of {size / 1e6:.1f} MB, {each * 1000:.0f} ms each (weights, "
        "Adam state, RNG, position; fsync + rename)"
    )
    print(
        f"  cost at one every 30 s: {each / 30 * 100:.2f}% of training time; at one every "
        f"{every:.1f} s: {each / every * 100:.1f}% by the checkpoint's own time, "
        f"{(saving - base) / base * 100:+.1f}% by whole-run time"
    )


RESUME = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {bench!r})
from bench_training import TORCH_JOB, synthetic
from keel.training import CheckpointStore, Preempted, RunContext, Torch
x, y = synthetic({rows})
names = [f"f{{i}}" for i in range(64)]
ctx = RunContext(checkpoints=CheckpointStore({root!r}), data_sha256="bench")
done = []
def stop(step, total):
    if not done:
        done.append(time.perf_counter() - t0)
        ctx.preemption.request()
ctx.progress = stop
try:
    Torch(epochs=1, checkpoint_every_s=None, **TORCH_JOB).fit(x, y, names, ctx)
except Preempted:
    pass
print(done[0], ctx.first_step_s, ctx.resumed_from)
"""


def bench_resume(rows: int) -> None:
    """A run preempted mid-epoch, then restarted as a new process: seconds from the
    process's start (and from the start of `fit`) to its first new step."""
    x, y = synthetic(rows)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(checkpoints=CheckpointStore(tmp), data_sha256="bench")
        names = [f"f{i}" for i in range(64)]

        def halfway(step: int, total: int) -> None:
            if step == total // 2:
                ctx.preemption.request()

        ctx.progress = halfway
        try:
            Torch(epochs=1, checkpoint_every_s=None, **TORCH_JOB).fit(x, y, names, ctx)
        except Preempted as stop:
            print(f"torch run preempted at step {stop.step} (a checkpoint written on the request)")
        script = RESUME.format(bench=str(Path(__file__).parent), rows=rows, root=tmp)
        figures = []
        for _ in range(3):
            # The same checkpoint each time: the restarted process stops after one step.
            out = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True
            ).stdout.split()
            figures.append((float(out[0]), float(out[1]), out[2]))
            for p in sorted(Path(tmp).glob("*.ckpt"))[1:]:
                p.unlink()  # keep the preemption's checkpoint as the newest
        proc = statistics.median(f[0] for f in figures)
        fit = statistics.median(f[1] for f in figures)
        print(
            f"  resume from step {figures[0][2]}: first new step {proc:.2f} s after the process "
            f"starts (imports, data, checkpoint load), {fit * 1000:.0f} ms after fit() begins "
            f"(median of 3)"
        )
        # The same resume in this warm process: checkpoint read and verified, state loaded.
        warm = []
        for _ in range(3):
            again = RunContext(checkpoints=CheckpointStore(tmp), data_sha256="bench")
            again.progress = lambda step, total, c=again: c.preemption.request()
            with contextlib.suppress(Preempted):
                Torch(epochs=1, checkpoint_every_s=None, **TORCH_JOB).fit(x, y, names, again)
            warm.append(again.first_step_s or 0.0)
            for p in sorted(Path(tmp).glob("*.ckpt"))[1:]:
                p.unlink()
        print(
            f"  in a warm process: first new step {statistics.median(warm) * 1000:.0f} ms "
            "after fit() begins (median of 3)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    bench_train(args.users, args.days, args.repeat)
    bench_checkpoints(args.rows, args.epochs)
    bench_resume(args.rows)


if __name__ == "__main__":
    main()
