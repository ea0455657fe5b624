"""A training run to preempt: ``python preemptible.py KIND CHECKPOINTS OUT``.

Fits ``KIND`` (torch, lightgbm, lightgbm-bagging) on fixed synthetic data, checkpointing
into CHECKPOINTS; prints ``ready <resumed step>`` once training starts, prints ``trained``
once the fit returned, writes the final model's bytes to OUT and exits 0, or exits 143 when
SIGTERM stopped it at a checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from keel.training import CheckpointStore, LightGBM, Preempted, RunContext, Torch


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8_000, 16))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(size=len(x)) > 0.8).astype(float)
    return x, y


def trainer(kind: str) -> object:
    if kind == "torch":
        return Torch(
            module_kwargs={"hidden": [128, 64]},
            epochs=4,
            batch_size=64,
            lr=3e-3,
            optimizer="adamw",
            scheduler="cosine",
            seed=11,
            checkpoint_every_steps=25,
            checkpoint_every_s=None,
        )
    params = {"num_iterations": 200, "num_leaves": 31, "learning_rate": 0.05}
    if kind == "lightgbm-bagging":
        params.update(bagging_fraction=0.7, bagging_freq=1, feature_fraction=0.8)
    return LightGBM(params=params, seed=11, checkpoint_rounds=5)


def main() -> int:
    kind, root, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    x, y = data()
    t = trainer(kind)
    names = [f"f{i}" for i in range(x.shape[1])]

    def progress(done: int, total: int) -> None:
        if not started:
            started.append(done)
            print(f"ready {ctx.resumed_from or 0}", flush=True)

    started: list[int] = []
    ctx = RunContext(
        checkpoints=CheckpointStore(root), data_sha256="synthetic-0", progress=progress
    )
    try:
        model = t.fit(x, y, names, ctx)
    except Preempted as stop:
        print(f"preempted {stop.step}", flush=True)
        return 143
    # Training is over and SIGTERM is back to its default: a signal from here on ends the
    # process as an ordinary SIGTERM does, which the test tells apart by this line.
    print("trained", flush=True)
    if kind == "torch":
        from safetensors.torch import save

        out.write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    else:
        out.write_bytes(model.model_to_string(num_iteration=-1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
