"""Declared models: what a model learns from, how its labels join, how it is trained,
split in time, evaluated, and which route it feeds.

Example
-------
>>> from datetime import timedelta
>>> fraud = Model(
...     "fraud",
...     features=["card_payments", "user_activity"],
...     label=Label("shop.fraud_labels", "is_fraud", id="payment_id",
...                 examples="shop.payments", settle=timedelta(days=3)),
...     inputs=["amount"],
...     trainer=LightGBM(params={"num_iterations": 50}),
...     split=TimeSplit(holdout=timedelta(days=2)),
...     metrics=["auc", "logloss", "recall@100"],
...     route="fraud",
... )
>>> fraud.label.join
'id'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from keel.errors import ValidationError
from keel.training.metrics import parse_metric
from keel.training.trainers import LightGBM, Trainer

__all__ = ["Label", "Model", "TimeSplit"]


@dataclass(frozen=True)
class Label:
    """Where a model's truth comes from and how it meets the prediction it grades.

    Parameters
    ----------
    topic
        The log topic the labels arrive on; its event time is when a label became known.
    column
        The label column (0/1, a boolean, or a number for regression).
    id
        Join by an id: each label names the prediction it grades by this column, and the
        prediction's rows (entity keys, request fields, prediction time) come from
        ``examples``. Without ``id``, each label row is itself the example: its entity key
        and time say what was predicted when (entity + time).
    examples
        With ``id``: the topic of the predictions' requests (e.g. the payments scored).
    time
        With ``id``: the examples' column holding the prediction time (default: the
        topic's event time).
    settle
        How long labels take to be known. Examples younger than this at training time are
        left out: a missing label there means "not known yet", not a negative.
    """

    topic: str
    column: str
    id: str | None = None
    examples: str | None = None
    time: str | None = None
    settle: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if (self.id is None) != (self.examples is None):
            raise ValidationError(
                f"label {self.topic!r}: a join by id needs both id= and examples= (the topic "
                "of the predictions' requests); give neither to join by entity and time"
            )
        if self.settle < timedelta(0):
            raise ValidationError(f"label {self.topic!r}: settle must not be negative")

    @property
    def join(self) -> str:
        return "id" if self.id is not None else "entity+time"


@dataclass(frozen=True)
class TimeSplit:
    """Train on the rows before ``T - holdout``, evaluate on the later ones up to ``T``, the
    settle horizon (training time minus the label's settle time); never a random split
    across time. ``warmup`` leaves out the rows of
    the history's first stretch, whose long windows are not yet full; ``window``, when set,
    trains on the last ``window`` before the holdout only (the freshest data, as a retrain
    after a drift wants)."""

    holdout: timedelta = timedelta(days=2)
    warmup: timedelta = timedelta(0)
    window: timedelta | None = None

    def __post_init__(self) -> None:
        if self.holdout <= timedelta(0):
            raise ValidationError("time split: holdout must be a positive duration")
        if self.warmup < timedelta(0):
            raise ValidationError("time split: warmup must not be negative")
        if self.window is not None and self.window <= timedelta(0):
            raise ValidationError("time split: window must be a positive duration")


@dataclass(frozen=True)
class Model:
    """A model declared in the project's definitions (``models = [...]``).

    ``features`` names views (all their numeric features) or single features
    (``"view:feature"``); ``inputs`` names fields of the examples that the model reads as
    they are (a request field such as a payment's amount).
    """

    name: str
    features: list[str]
    label: Label
    trainer: Trainer = field(default_factory=LightGBM)
    inputs: list[str] = field(default_factory=list)
    split: TimeSplit = field(default_factory=TimeSplit)
    metrics: list[str] = field(default_factory=lambda: ["auc", "logloss"])
    route: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.features and not self.inputs:
            raise ValidationError(f"model {self.name!r} declares no features and no inputs")
        if not isinstance(self.trainer, Trainer):
            raise ValidationError(
                f"model {self.name!r}: trainer must be a Keel trainer (LightGBM, XGBoost, "
                f"Sklearn, Torch), not {type(self.trainer).__name__}"
            )
        for m in self.metrics:
            parse_metric(m)
