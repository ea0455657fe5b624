"""Kill a training run at random moments — SIGTERM and SIGKILL — and resume it each time:
it ends with exactly the weights of a run never interrupted. Checkpoints are atomic and
verified; a torn or corrupt one is skipped for the previous good one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keel.errors import ValidationError
from keel.training import (
    CheckpointStore,
    LightGBM,
    Preempted,
    Preemption,
    RunContext,
    Torch,
    XGBoost,
)

SCRIPT = Path(__file__).with_name("preemptible.py")
KILLS = 10


class Run:
    """One training process; its stderr goes to a file (read on failure)."""

    def __init__(self, kind: str, root: Path, out: Path, log: Path) -> None:
        self.log = log
        self.said = ""  # what it printed after ``ready``, read once it ended
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), kind, str(root), str(out)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def ready(self) -> int | None:
        """The step the run resumed from, once it trains; None if it ended first."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        return int(line.split()[1]) if line.startswith("ready") else None

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
            if self.proc.stdout is not None:
                self.said = self.proc.stdout.read()
            return code
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def errors(self) -> str:
        return self.log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torch", "lightgbm", "lightgbm-bagging"])
def test_killed_ten_times_ends_with_the_uninterrupted_weights(tmp_path: Path, kind: str) -> None:
    # The uninterrupted run, timed, so the kills land inside training on any machine.
    reference = tmp_path / "reference.bin"
    started = time.monotonic()
    log = tmp_path / "stderr.log"
    run = Run(kind, tmp_path / "ref-ckpt", reference, log)
    assert run.ready() == 0, run.errors()
    ready_at = time.monotonic()
    assert run.wait(300) == 0, run.errors()
    training_s = time.monotonic() - ready_at
    assert training_s > 0 and started < ready_at

    rng = random.Random(f"kills-{kind}")
    root, out = tmp_path / "ckpt", tmp_path / "resumed.bin"
    resumed_from: list[int] = []
    signals = []
    for i in range(KILLS):
        run = Run(kind, root, out, log)
        step = run.ready()
        assert step is not None, run.errors()
        resumed_from.append(step)
        # Ten kills take up at most about half the training, so the run still gets to the end.
        time.sleep(rng.uniform(0.02, training_s / (2 * KILLS)))
        sig = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
        signals.append(sig)
        run.proc.send_signal(sig)
        code = run.wait(120)
        if sig == signal.SIGTERM:
            # Stopped at a checkpoint it wrote, or finished the last step before the signal
            # (and then exited, or the signal ended it after its fit returned).
            if code == 143:
                assert run.said.startswith("preempted"), run.said + run.errors()
            else:
                assert code in (0, -signal.SIGTERM), run.errors()
                assert run.said.startswith("trained"), run.said + run.errors()
        else:
            assert code == -signal.SIGKILL
        # A run killed after it wrote its result (and before it exited) wrote it whole.
        assert not out.exists() or code == 0 or out.read_bytes() == reference.read_bytes()
        if code == 0:
            break
    run = Run(kind, root, out, log)
    final_step = run.ready()
    assert run.wait(300) == 0, run.errors()
    assert out.read_bytes() == reference.read_bytes()
    # The kills were real interruptions: later runs started from later checkpoints.
    assert signal.SIGKILL in signals and signal.SIGTERM in signals
    progress = [*resumed_from, final_step or 0]
    assert progress == sorted(progress) and progress[-1] > 0
    assert len(set(progress)) >= 4


def test_a_torn_or_corrupt_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    for step in (1, 2, 3):
        store.save(step, f"state {step}".encode() * 100, {"epoch": 0})
    newest = tmp_path / "step-000000000003.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # torn: the machine died mid-write
    assert store.latest().step == 2 and store.rejected == [newest]
    middle = tmp_path / "step-000000000002.ckpt"
    flipped = bytearray(middle.read_bytes())
    flipped[-5] ^= 0xFF  # one bit of the payload rotted
    middle.write_bytes(bytes(flipped))
    cp = store.latest()
    assert cp.step == 1 and cp.payload == b"state 1" * 100
    with pytest.raises(ValidationError, match="checksum"):
        store.read(middle)
    # A write leaves no temporary file behind, and only `keep` checkpoints remain.
    small = CheckpointStore(tmp_path / "small", keep=2)
    for step in range(5):
        small.save(step, b"x")
    assert sorted(p.name for p in (tmp_path / "small").iterdir()) == [
        "step-000000000003.ckpt",
        "step-000000000004.ckpt",
    ]


def test_a_checkpoint_of_other_data_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    RunContext(checkpoints=store, data_sha256="a" * 64).save(5, b"w", {})
    with pytest.raises(ValidationError, match="another training set"):
        RunContext(checkpoints=store, data_sha256="b" * 64).resume()
    assert RunContext(checkpoints=store, data_sha256="a" * 64).resume().step == 5


def test_sigterm_sets_the_flag_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Preemption() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: Torch(
                module_kwargs={"hidden": [16]},
                epochs=3,
                batch_size=50,
                seed=1,
                checkpoint_every_steps=7,
                scheduler="step",
            ),
            id="torch",
        ),
        pytest.param(
            lambda: LightGBM(params={"num_iterations": 40}, seed=1, checkpoint_rounds=6),
            id="lightgbm",
        ),
        pytest.param(
            lambda: XGBoost(
                params={"n_estimators": 30, "max_depth": 3}, seed=1, checkpoint_rounds=4
            ),
            id="xgboost",
        ),
        pytest.param(
            lambda: XGBoost(
                params={"n_estimators": 30, "subsample": 0.7}, seed=1, checkpoint_rounds=4
            ),
            id="xgboost-subsample",
        ),
    ],
)
def test_stopped_at_every_few_steps_and_resumed_gives_the_same_model(tmp_path: Path, make) -> None:
    """In-process: ask the run to stop (as SIGTERM does) at several steps, resume each time."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 5))
    y = (x[:, 0] + rng.normal(size=600) > 0.3).astype(float)
    names = [f"f{i}" for i in range(5)]
    reference = make().fit(x, y, names, RunContext())
    store = CheckpointStore(tmp_path)
    stops, resumed = [3, 9, 16, 22], []
    while True:
        ctx = RunContext(checkpoints=store, data_sha256="d")

        def progress(done: int, total: int, ctx: RunContext = ctx) -> None:
            if stops and done >= stops[0]:
                stops.pop(0)
                ctx.preemption.request()

        ctx.progress = progress
        try:
            model = make().fit(x, y, names, ctx)
            break
        except Preempted:
            resumed.append(store.latest().step)
    assert len(resumed) >= 3 and resumed == sorted(resumed)
    assert _bytes(model) == _bytes(reference)


def _bytes(model) -> bytes:
    if hasattr(model, "state_dict"):
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in model.state_dict().items()})
    if hasattr(model, "model_to_string"):
        return model.model_to_string(num_iteration=-1).encode()
    return bytes(model.save_raw("json"))


def test_a_lightgbm_run_that_ends_early_by_itself_is_finished_not_preempted(tmp_path: Path) -> None:
    """One class in the data: LightGBM stops before its rounds (no leaf can split). That is a
    finished fit, not a SIGTERM, and must not raise Preempted."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 4))
    y = np.zeros(200)
    ctx = RunContext(checkpoints=CheckpointStore(tmp_path), data_sha256="d")
    model = LightGBM(params={"num_iterations": 10}, seed=1, checkpoint_rounds=3).fit(
        x, y, [f"f{i}" for i in range(4)], ctx
    )
    assert model.current_iteration() <= 10
    assert np.allclose(model.predict(x), model.predict(x[:1])[0])
