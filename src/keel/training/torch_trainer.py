"""A PyTorch trainer: a module with a training step, epochs of shuffled mini-batches, and
checkpoints that resume to the very weights of an uninterrupted run.

A checkpoint holds the weights, the optimizer's and the scheduler's state, every RNG state
(torch, NumPy, Python; each epoch's shuffle is seeded by the epoch), and the data position as a row
range: the epoch and the next row of that epoch's permutation. Resuming regenerates the
epoch's permutation and continues at that row — nothing is replayed or skipped batch by batch.
"""

from __future__ import annotations

import inspect
import io
import random
import time
from typing import Any

import numpy as np

from keel.errors import ValidationError
from keel.training.checkpoint import Preempted
from keel.training.trainers import RunContext, Trainer, _import

__all__ = ["Torch"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = (None, "cosine", "step")


class Torch(Trainer):
    """Train ``module`` (import path of an ``nn.Module`` class, built with ``in_features``
    and ``module_kwargs``) for ``epochs`` of mini-batches.

    The loss is the module's ``training_step(x, y)`` when it has one, else binary cross
    entropy on its output (``loss="mse"`` for regression). Single-threaded by default:
    CPU kernels then add in one order, and a rerun gives the same bits.

    Example
    -------
    >>> Torch(optimizer="adagrad").validate()
    Traceback (most recent call last):
    ...
    keel.errors.ValidationError: torch trainer: optimizer 'adagrad' is not one of adam, adamw, sgd
    """

    kind = "torch"
    format = "torch"

    def __init__(
        self,
        module: str = "keel.training.nets:MLP",
        *,
        module_kwargs: dict[str, Any] | None = None,
        epochs: int = 5,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        scheduler: str | None = None,
        loss: str = "bce",
        seed: int = 0,
        threads: int = 1,
        checkpoint_every_steps: int | None = None,
        checkpoint_every_s: float | None = 30.0,
    ) -> None:
        self.module = module
        self.module_kwargs = dict(module_kwargs or {})
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss = loss
        self._seed = seed
        self.threads = threads
        self.checkpoint_every_steps = checkpoint_every_steps
        self.checkpoint_every_s = checkpoint_every_s

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def binary(self) -> bool:
        return self.loss == "bce"

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "module": self.module,
            "module_kwargs": self.module_kwargs,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "loss": self.loss,
            "seed": self._seed,
            "threads": self.threads,
            "checkpoint_every_steps": self.checkpoint_every_steps,
            "checkpoint_every_s": self.checkpoint_every_s,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Torch:
        rest = {k: v for k, v in record.items() if k != "kind"}
        return cls(**rest)

    def validate(self) -> None:
        cls = _import(self.module, "torch trainer")
        if self.optimizer not in OPTIMIZERS:
            raise ValidationError(
                f"torch trainer: optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"
            )
        if self.scheduler not in SCHEDULERS:
            raise ValidationError(
                f"torch trainer: scheduler {self.scheduler!r} is not one of none, cosine, step"
            )
        if self.loss not in ("bce", "mse"):
            raise ValidationError(f"torch trainer: loss {self.loss!r} is not 'bce' or 'mse'")
        for name in ("epochs", "batch_size", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValidationError(f"torch trainer: {name} must be >= 1")
        accepted = inspect.signature(cls).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            for key in self.module_kwargs:
                if key not in accepted:
                    raise ValidationError(
                        f"torch trainer: module {self.module} does not accept {key!r}; it takes "
                        f"{', '.join(k for k in accepted if k != 'in_features')}"
                    )

    def code_files(self) -> list[str]:
        return [*super().code_files(), inspect.getfile(_import(self.module, "torch trainer"))]

    def build(self, width: int, names: list[str] | None = None) -> Any:
        cls = _import(self.module, "torch trainer")
        kwargs: dict[str, Any] = {"in_features": width, **self.module_kwargs}
        if names and "feature_names" in inspect.signature(cls).parameters:
            kwargs["feature_names"] = list(names)  # so a route can join them by name
        return cls(**kwargs)

    def register_options(self, model: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"in_features": int(model.in_features), **self.module_kwargs}
        if getattr(model, "feature_names", None):
            kwargs["feature_names"] = list(model.feature_names)
        return {"factory": self.module, "init_kwargs": kwargs}

    def fit(self, x: np.ndarray, y: np.ndarray, names: list[str], ctx: RunContext) -> Any:
        import torch

        start = time.perf_counter()
        torch.set_num_threads(self.threads)
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        yt = torch.as_tensor(np.asarray(y, dtype=np.float32))
        n = len(yt)
        per_epoch = -(-n // self.batch_size)
        total = per_epoch * self.epochs

        torch.manual_seed(self._seed)
        random.seed(self._seed)
        np.random.seed(self._seed % 2**32)
        model = self.build(x.shape[1], names)
        if hasattr(model, "fit_normalization"):
            with torch.no_grad():
                model.fit_normalization(xt)
        opt = self._optimizer(model)
        sched = self._scheduler(opt, total)
        step, epoch, row = 0, 0, 0

        cp = ctx.resume()
        if cp is not None:
            state = torch.load(io.BytesIO(cp.payload), weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None:
                sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(_np_state(state["rng"]["numpy"]))
            random.setstate(_py_state(state["rng"]["python"]))
            step, epoch, row = state["step"], state["epoch"], state["row"]

        def save() -> None:
            buf = io.BytesIO()
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": None if sched is None else sched.state_dict(),
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "numpy": _np_saved(),
                        "python": list(random.getstate()),
                    },
                    "step": step,
                    "epoch": epoch,
                    "row": row,
                },
                buf,
            )
            ctx.save(step, buf.getvalue(), {"epoch": epoch, "rows": [row, n], "step": step})

        def loss_of(xb: Any, yb: Any) -> Any:
            if hasattr(model, "training_step"):
                return model.training_step(xb, yb)
            out = model(xb).reshape(-1)
            if self.loss == "bce":
                return torch.nn.functional.binary_cross_entropy_with_logits(out, yb)
            return torch.nn.functional.mse_loss(out, yb)

        last_save = time.monotonic()
        model.train()
        with ctx.preemption:
            while epoch < self.epochs:
                perm = _permutation(n, epoch, self._seed)
                while row < n:
                    idx = perm[row : row + self.batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss_of(xt[idx], yt[idx]).backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    step += 1
                    row += len(idx)
                    if ctx.first_step_s is None:
                        ctx.first_step_s = time.perf_counter() - start
                    ctx.report(step, total)
                    if ctx.preemption.requested:
                        save()
                        raise Preempted(step)
                    due = (
                        self.checkpoint_every_steps and step % self.checkpoint_every_steps == 0
                    ) or (
                        self.checkpoint_every_s is not None
                        and time.monotonic() - last_save >= self.checkpoint_every_s
                    )
                    if due and step < total:
                        save()
                        last_save = time.monotonic()
                epoch, row = epoch + 1, 0
        model.eval()
        return model

    def _optimizer(self, model: Any) -> Any:
        import torch

        params = model.parameters()
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        cls = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

    def _scheduler(self, opt: Any, total: int) -> Any:
        import torch

        if self.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
        if self.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=max(total // 3, 1), gamma=0.3)
        return None

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = model(torch.as_tensor(np.asarray(x, dtype=np.float32))).reshape(-1)
            if self.loss == "bce":
                out = torch.sigmoid(out)
        return out.double().numpy()

    def effective_params(self, model: Any) -> dict[str, Any]:
        out = {k: v for k, v in self.record().items() if k != "kind"}
        out["parameters"] = int(sum(p.numel() for p in model.parameters()))
        out["module_repr"] = repr(model)
        return out


def _permutation(n: int, epoch: int, seed: int) -> Any:
    import torch

    # Each epoch's order is drawn from its own generator seeded by (seed, epoch): the data
    # position (epoch, row) then names the same rows in a resumed run, with no generator
    # state to carry for the shuffle.
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _np_saved() -> list[Any]:
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the global generator is MT19937: its legacy state is one
    name, keys, pos, has_gauss, gauss = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _np_state(saved: list[Any]) -> tuple[Any, ...]:
    return (saved[0], np.asarray(saved[1], dtype=np.uint32), *saved[2:])  # legacy layout


def _py_state(saved: list[Any]) -> tuple[Any, ...]:
    return (int(saved[0]), tuple(int(v) for v in saved[1]), saved[2])
