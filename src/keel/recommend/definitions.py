"""A declared recommender: where its interactions come from, how big its tables are, how it
is trained in full, and how (and how often) its embedding tables are fine-tuned.

Example
-------
>>> rec = Recommender("recommend", features=["user_activity"], route="recommend")
>>> rec.fine_tune.every
datetime.timedelta(seconds=1800)
>>> Recommender("r", weights={"view": -1.0})
Traceback (most recent call last):
...
keel.errors.ValidationError: recommender 'r': weight of 'view' must be positive, got -1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from keel.errors import ValidationError

__all__ = ["PRECISIONS", "FineTune", "Recommender"]

PRECISIONS = ("float32", "bfloat16", "float16")


def _positive(owner: str, name: str, value: Any, *, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value <= 0:
        kind = "a positive integer" if integer else "positive"
        raise ValidationError(f"{owner}: {name} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class FineTune:
    """How the embedding tables are refreshed from the stream.

    Parameters
    ----------
    every
        How often a fine-tune runs (on the project's clock).
    min_count
        Interactions an unknown user or item needs before it gets its own row.
    expire_after
        A row unseen for this long is freed.
    epochs, lr
        Passes over the new interactions, and the row-wise Adagrad learning rate.
    precision
        The dtype the serving runtime computes in. Below float32, every fine-tuned version is
        scored on a probe set in both and refused when they disagree beyond ``tolerance``
        (largest score difference over the spread of the float32 scores) or the top-10
        overlap falls below ``min_overlap``.
    checkpoint_every_steps
        Steps between checkpoints (and on SIGTERM).
    """

    every: timedelta = timedelta(minutes=30)
    min_count: int = 2
    expire_after: timedelta = timedelta(days=14)
    epochs: int = 2
    lr: float = 0.05
    precision: str = "float32"
    tolerance: float = 0.05
    min_overlap: float = 0.8
    checkpoint_every_steps: int = 25

    def __post_init__(self) -> None:
        owner = "fine_tune"
        if self.every <= timedelta(0) or self.expire_after <= timedelta(0):
            raise ValidationError(f"{owner}: every and expire_after must be positive durations")
        _positive(owner, "min_count", self.min_count, integer=True)
        _positive(owner, "epochs", self.epochs, integer=True)
        _positive(owner, "checkpoint_every_steps", self.checkpoint_every_steps, integer=True)
        _positive(owner, "lr", self.lr)
        _positive(owner, "tolerance", self.tolerance)
        if not 0 <= self.min_overlap <= 1:
            raise ValidationError(f"{owner}: min_overlap must be in [0, 1]")
        if self.precision not in PRECISIONS:
            raise ValidationError(
                f"{owner}: precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"
            )


@dataclass(frozen=True)
class Recommender:
    """A two-tower recommender declared in the project (``models = [...]``).

    Parameters
    ----------
    name
        The model's registry name.
    interactions
        The topic of user–item interactions, with ``user``, ``item``, ``kind`` and
        ``category`` columns; ``weights`` gives each kind's weight as a positive (kinds not
        named are left out).
    features
        The user's feature-store features (views or ``view:feature``) the user tower reads,
        joined as of each interaction in training and online when serving.
    window, holdout
        ``keel train`` learns from the interactions of ``window`` before the training time,
        less the last ``holdout``, on whose purchases it measures hit rate and NDCG at ``k``.
    dim, hidden, negatives, epochs, batch_size, lr, dense_lr, seed
        Model size and the full training's settings: sampled negatives per interaction,
        row-wise Adagrad on the tables at ``lr``, Adam on the dense part at ``dense_lr``.
    fine_tune
        The refresh of the tables from the stream (see :class:`FineTune`).
    """

    name: str
    interactions: str = "shop.events"
    user: str = "user_id"
    item: str = "item_id"
    kind: str = "event_type"
    category: str = "category"
    weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "cart": 2.0, "purchase": 4.0}
    )
    purchase: str = "purchase"
    features: list[str] = field(default_factory=list)
    categories: list[str] | None = None
    window: timedelta = timedelta(days=7)
    holdout: timedelta = timedelta(hours=1)
    k: int = 10
    dim: int = 32
    hidden: int = 64
    negatives: int = 4
    epochs: int = 3
    batch_size: int = 512
    lr: float = 0.05
    dense_lr: float = 3e-3
    seed: int = 0
    fine_tune: FineTune = field(default_factory=FineTune)
    route: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        owner = f"recommender {self.name!r}"
        for key in ("dim", "hidden", "negatives", "epochs", "batch_size", "k"):
            _positive(owner, key, getattr(self, key), integer=True)
        _positive(owner, "lr", self.lr)
        _positive(owner, "dense_lr", self.dense_lr)
        if not self.weights:
            raise ValidationError(f"{owner}: weights must name at least one interaction kind")
        for kind, w in self.weights.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or w <= 0:
                raise ValidationError(f"{owner}: weight of {kind!r} must be positive, got {w!r}")
        if self.window <= self.holdout or self.holdout <= timedelta(0):
            raise ValidationError(
                f"{owner}: holdout must be positive and shorter than window "
                f"({self.holdout} vs {self.window})"
            )
        if not isinstance(self.fine_tune, FineTune):
            raise ValidationError(f"{owner}: fine_tune must be a FineTune")
