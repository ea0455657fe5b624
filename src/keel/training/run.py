"""``keel train``: build a declared model's point-in-time set, fit, evaluate on the later
holdout, and register the version with its lineage.

Example
-------
The shop's fraud model, declared in the example project, trained end to end::

    from keel.project import Project
    from keel.training import train

    result = train(Project.load("keel.toml"), "fraud")
    print(result.version.ref, result.metrics["auc"])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from keel.errors import NotFoundError
from keel.features import FeatureStore
from keel.jobs.worker import current_job, tag_with_job
from keel.log import Log
from keel.registry import ModelVersion, Registry
from keel.training.checkpoint import CheckpointStore, Preemption
from keel.training.dataset import TrainingData, build_training_data
from keel.training.definitions import Model
from keel.training.metrics import evaluate
from keel.training.trainers import RunContext, trainer_from_record

__all__ = ["PHASES", "TrainResult", "fit", "train_model"]

#: The phases of a training run, in order, as reported to ``progress``.
PHASES = ("training set", "fit", "evaluate", "register")

Progress = Callable[[str, int, int], None]


@dataclass
class TrainResult:
    model: Model
    version: ModelVersion
    metrics: dict[str, float]
    data: TrainingData
    seconds: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    checkpoints_written: int = 0
    checkpoint_s: float = 0.0
    shadow_alias: str | None = None


def fit(
    model: Model,
    data: TrainingData,
    *,
    checkpoints: CheckpointStore | None = None,
    preemption: Preemption | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, RunContext]:
    """Fit ``model``'s trainer on the training part of ``data`` (resuming from the newest
    good checkpoint in ``checkpoints``)."""
    train = data.train
    ctx = RunContext(
        checkpoints=checkpoints,
        preemption=preemption or Preemption(),
        data_sha256=data.sha256,
        progress=progress,
    )
    fitted = model.trainer.fit(data.x[train], data.y[train], data.names, ctx)
    return fitted, ctx


def train_model(
    model: Model,
    *,
    log: Log,
    features: FeatureStore,
    registry: Registry,
    until: datetime | None = None,
    shadow: bool = False,
    alias: str | None = None,
    checkpoint_dir: str | Path | None = None,
    code_dir: str | None = None,
    parent_alias: str | None = None,
    progress: Progress | None = None,
    preemption: Preemption | None = None,
) -> TrainResult:
    """Train ``model`` as of ``until`` and register it (nothing is registered on error).

    ``alias`` moves that alias to the new version; ``shadow`` moves ``challenger``, which a
    route shadowing ``MODEL@challenger`` picks up. Checkpoints go under ``checkpoint_dir``
    and are removed once the version is registered. The parent is the version
    ``parent_alias`` points to (the route's), else the latest.
    """

    def report(phase: str, done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    report("training set", 0, 4)
    data = build_training_data(
        model,
        log,
        features,
        until=until,
        progress=lambda done, total: report("training set", done, total),
    )
    seconds["training set"] = time.perf_counter() - start

    store = None
    if checkpoint_dir is not None:
        store = CheckpointStore(Path(checkpoint_dir) / model.name / data.sha256[:16])
    start = time.perf_counter()
    fitted, ctx = fit(
        model,
        data,
        checkpoints=store,
        preemption=preemption,
        progress=lambda done, total: report("fit", done, total),
    )
    seconds["fit"] = time.perf_counter() - start

    start = time.perf_counter()
    report("evaluate", 0, 1)
    hold = data.holdout
    metrics = evaluate(model.metrics, data.y[hold], model.trainer.predict(fitted, data.x[hold]))
    parent = _parent(registry, model, parent_alias)
    # The version it would replace, graded on the very same rows: what a retrain must beat.
    baseline = _baseline(registry, model, parent, data)
    seconds["evaluate"] = time.perf_counter() - start
    report("evaluate", 1, 1)

    start = time.perf_counter()
    report("register", 0, 1)
    version = registry.register(
        model.name,
        fitted,
        format=model.trainer.format,
        params=model.trainer.effective_params(fitted),
        metrics={
            **metrics,
            "train_rows": int(data.train.sum()),
            "holdout_rows": int(hold.sum()),
            "holdout_positive_rate": float(np.mean(data.y[hold])),
        },
        training_set=data.table,
        parent=parent,
        description=model.description or f"keel train {model.name}",
        code_dir=code_dir,
        training={**lineage(model, data, ctx), "parent_holdout": baseline},
        **model.trainer.register_options(fitted),
    )
    moved = "challenger" if shadow else alias
    if moved is not None:
        reason = tag_with_job(f"keel train {model.name}")
        registry.set_alias(model.name, moved, version.version, reason=reason)
    if store is not None:
        store.clear()
    seconds["register"] = time.perf_counter() - start
    report("register", 1, 1)
    return TrainResult(
        model,
        version,
        metrics,
        data,
        seconds,
        resumed_from=ctx.resumed_from,
        checkpoints_written=ctx.checkpoints_written,
        checkpoint_s=ctx.checkpoint_s,
        shadow_alias=moved,
    )


def lineage(model: Model, data: TrainingData, ctx: RunContext) -> dict[str, Any]:
    """How the trainer produced the version: what ``reproduce_model`` retrains from."""
    trainer = model.trainer
    return {
        "model": model.name,
        "trainer": trainer.record(),
        "seed": trainer.seed,
        "code_fingerprint": trainer.fingerprint(),
        "feature_names": data.names,
        "label": {
            "topic": model.label.topic,
            "column": model.label.column,
            "join": model.label.join,
            "id": model.label.id,
            "examples": model.label.examples,
            "settle_s": model.label.settle.total_seconds(),
        },
        "until": data.until.isoformat(),
        "split": {
            "holdout_s": model.split.holdout.total_seconds(),
            "warmup_s": model.split.warmup.total_seconds(),
            "window_s": None if model.split.window is None else model.split.window.total_seconds(),
            "cut_us": data.cut_us,
            "train_range": data.time_range(data.train),
            "holdout_range": data.time_range(data.holdout),
        },
        "metrics": list(model.metrics),
        "route": model.route,
        "resumed_from": ctx.resumed_from,
        "job": current_job(),
    }


def _baseline(
    registry: Registry, model: Model, parent: int | None, data: TrainingData
) -> dict[str, Any] | None:
    """The parent version's metrics on this run's holdout, when it reads the same features
    (None otherwise: a parent of other inputs cannot be graded on these rows)."""
    if parent is None:
        return None
    recorded = registry.get(model.name, parent)
    info = recorded.lineage.get("training") or {}
    if info.get("feature_names") != data.names or "trainer" not in info:
        return None
    hold = data.holdout
    trainer = trainer_from_record(info["trainer"])  # the parent's own: it may be another kind
    scores = trainer.predict(registry.load(model.name, parent), data.x[hold])
    return {"version": recorded.ref, "metrics": evaluate(model.metrics, data.y[hold], scores)}


def _parent(registry: Registry, model: Model, alias: str | None) -> int | None:
    """The version this one follows: what the route serves (its alias), else the latest."""
    try:
        aliases = registry.aliases(model.name)
    except NotFoundError:
        return None
    if alias is not None and alias in aliases:
        return aliases[alias]
    return registry.get(model.name, "latest").version
