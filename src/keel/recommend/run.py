"""``keel train`` and ``keel fine-tune`` for a declared recommender.

A full training reads the interactions of its window from the log, trains every parameter,
measures hit rate and NDCG on the last ``holdout``'s purchases, and registers the version
with the offsets it stopped at. A fine-tune starts from a registered version (the route's), reads
the interactions since those offsets, gives rows to IDs seen often enough and frees stale ones,
updates only the embedding rows those interactions touch, checks that every dense tensor is
unchanged and, below float32 serving, that the served precision agrees with float32; then it
registers a child version (parent, offset range, rows touched, steps) and moves the
``challenger`` alias so the route shadows it. Each version gets its own vector index.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keel.errors import KeelError, ValidationError
from keel.features import FeatureStore
from keel.index import IndexStore
from keel.jobs.worker import tag_with_job
from keel.log import Log
from keel.recommend.data import Interactions, last_features, offsets_at, read_interactions
from keel.recommend.definitions import Recommender
from keel.recommend.model import TwoTower
from keel.recommend.train import (
    admit,
    dense_digest,
    evaluate,
    init_model,
    precision_check,
    run_loop,
)
from keel.registry import ModelVersion, Registry
from keel.training.checkpoint import CheckpointStore, Preemption
from keel.training.trainers import RunContext

__all__ = [
    "FACTORY",
    "FineTuneResult",
    "InconsistentVersion",
    "NothingNew",
    "RecommenderResult",
    "fine_tune",
    "publish_index",
    "train_recommender",
]

FACTORY = "keel.recommend.model:TwoTower"
PHASES = ("interactions", "fit", "evaluate", "register")
Progress = Callable[[str, int, int], None]


class InconsistentVersion(KeelError):
    """A fine-tuned version whose served precision disagrees with float32: refused."""


class NothingNew(KeelError):
    """No interactions were logged since the parent version: nothing to fine-tune."""


@dataclass
class RecommenderResult:
    model: Recommender
    version: ModelVersion
    metrics: dict[str, float]
    data: Interactions
    seconds: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    checkpoints_written: int = 0
    shadow_alias: str | None = None


@dataclass
class FineTuneResult(RecommenderResult):
    parent: int = 0
    steps: int = 0
    touched: dict[str, int] = field(default_factory=dict)
    admitted: dict[str, int] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)
    precision: dict[str, Any] | None = None


def record(rec: Recommender) -> dict[str, Any]:
    """The declaration as JSON (durations in seconds)."""
    out = dataclasses.asdict(rec)
    for key, value in list(out.items()):
        if hasattr(value, "total_seconds"):
            out[key] = value.total_seconds()
    out["fine_tune"] = {
        k: (v.total_seconds() if hasattr(v, "total_seconds") else v)
        for k, v in dataclasses.asdict(rec.fine_tune).items()
    }
    return out


def publish_index(indexes: IndexStore, name: str, version: int, model: TwoTower) -> dict[str, Any]:
    """Build and publish ``name@version``'s item index (inner product of ``[v, bias]``)."""
    ids, vectors = model.catalogue()
    return indexes.publish(name, version, ids, vectors.float().numpy(), metric="ip")


def train_recommender(
    rec: Recommender,
    *,
    log: Log,
    features: FeatureStore | None,
    registry: Registry,
    indexes: IndexStore,
    until: datetime | None = None,
    shadow: bool = False,
    alias: str | None = None,
    checkpoint_dir: str | Path | None = None,
    code_dir: str | None = None,
    parent: int | None = None,
    progress: Progress | None = None,
    preemption: Preemption | None = None,
    holdout: bool = True,
) -> RecommenderResult:
    """Train ``rec`` from scratch on its window before ``until`` and register it.

    With ``holdout`` (the default) the last ``rec.holdout`` is kept out of training and
    its purchases measure the version; without, the version learns from all of the window
    (a scheduled retrain that wants the freshest data) and records no quality metrics.
    """

    def report(phase: str, done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    until = (until or datetime.now(UTC)).astimezone(UTC)
    report("interactions", 0, 1)
    # Split by offsets, not by time, so the fine-tune that follows starts exactly where the
    # training part ends (late events included on one side only).
    start = offsets_at(log, rec.interactions, until - rec.window)
    end = offsets_at(log, rec.interactions, until)
    cut = offsets_at(log, rec.interactions, until - rec.holdout) if holdout else end
    train = read_interactions(rec, log, features, start, cut)
    if not len(train):
        raise ValidationError(
            f"recommender {rec.name!r}: no interactions on {rec.interactions!r} in the "
            f"{rec.window - rec.holdout} before {(until - rec.holdout).isoformat()}"
        )
    hold = read_interactions(rec, log, features, cut, end, feature_names=train.feature_names)
    seconds["interactions"] = time.perf_counter() - t0
    report("interactions", 1, 1)

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    model = init_model(
        train,
        dim=rec.dim,
        hidden=rec.hidden,
        seed=rec.seed,
        min_count=rec.fine_tune.min_count,
        categories=rec.categories,
    )
    ctx = _context(checkpoint_dir, rec.name, "full", train.sha256, preemption, report)
    loop = run_loop(
        model,
        train,
        epochs=rec.epochs,
        batch_size=rec.batch_size,
        lr=rec.lr,
        negatives=rec.negatives,
        seed=rec.seed,
        ctx=ctx,
        dense_lr=rec.dense_lr,
        checkpoint_every_steps=rec.fine_tune.checkpoint_every_steps * 4,
    )
    seconds["fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report("evaluate", 0, 1)
    metrics = evaluate(model, hold, rec.k) if holdout else {}
    seconds["evaluate"] = time.perf_counter() - t0
    report("evaluate", 1, 1)

    t0 = time.perf_counter()
    report("register", 0, 1)
    # The version has learnt from the training part: a fine-tune continues from its end.
    lineage = {
        "kind": "recommender",
        "mode": "full",
        "model": rec.name,
        "recommender": record(rec),
        "interactions": {
            "topic": rec.interactions,
            "from": train.start,
            "to": cut,
            "rows": len(train),
            "time_range": train.time_range(),
            "sha256": train.sha256,
        },
        "until": until.isoformat(),
        "feature_names": model.feature_names,
        "steps": loop.steps,
        "dense_sha256": dense_digest(model),
        "resumed_from": ctx.resumed_from,
        "route": rec.route,
    }
    version = _register(
        registry, rec, model, metrics, lineage, parent, code_dir, loop.steps, len(train)
    )
    moved = _publish(
        registry, indexes, rec, model, version, ctx, shadow, alias, reason=f"keel train {rec.name}"
    )
    seconds["register"] = time.perf_counter() - t0
    report("register", 1, 1)
    return RecommenderResult(
        rec,
        version,
        metrics,
        train,
        seconds,
        resumed_from=ctx.resumed_from,
        checkpoints_written=ctx.checkpoints_written,
        shadow_alias=moved,
    )


def fine_tune(
    rec: Recommender,
    *,
    log: Log,
    features: FeatureStore | None,
    registry: Registry,
    indexes: IndexStore,
    parent: int | str = "latest",
    until: datetime | None = None,
    shadow: bool = True,
    alias: str | None = None,
    checkpoint_dir: str | Path | None = None,
    code_dir: str | None = None,
    progress: Progress | None = None,
    preemption: Preemption | None = None,
) -> FineTuneResult:
    """Refresh ``parent``'s embedding tables with the interactions logged since it, and
    register the child version (the ``challenger`` by default, for the route to shadow).

    ``until`` stops at the offsets of that time (default: the log's end). Raises
    :class:`InconsistentVersion`, registering nothing, when the served precision disagrees
    with float32 on the probe set.
    """

    def report(phase: str, done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    ft = rec.fine_tune
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    report("interactions", 0, 1)
    base = registry.get(rec.name, parent)
    lineage = registry.lineage(rec.name, base.version).get("training") or {}
    if lineage.get("kind") != "recommender":
        raise ValidationError(
            f"{base.ref} was not trained as a recommender; fine-tune a version made by "
            f"keel train {rec.name}"
        )
    start = {int(p): int(o) for p, o in lineage["interactions"]["to"].items()}
    if until is None:
        end = dict(enumerate(log.end_offsets(rec.interactions)))
    else:
        end = offsets_at(log, rec.interactions, until.astimezone(UTC))
    end = {p: max(o, start.get(p, 0)) for p, o in end.items()}
    start = {p: start.get(p, 0) for p in end}
    model: TwoTower = registry.load(rec.name, base.version)
    data = read_interactions(
        rec, log, features, start, end, feature_names=list(model.feature_names)
    )
    seconds["interactions"] = time.perf_counter() - t0
    report("interactions", 1, 1)
    if not len(data):
        raise NothingNew(
            f"no interactions on {rec.interactions!r} since {base.ref} was made; nothing to "
            "fine-tune (no version registered)"
        )

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    before = dense_digest(model)
    seed = rec.seed + base.version
    g = torch.Generator().manual_seed(seed)
    admitted = admit(model, data, min_count=ft.min_count, generator=g)
    now_us = int(data.ts.max())  # expiry is measured on the log's clock, not the wall's
    freed_u = model.users.expire(now_us, int(ft.expire_after.total_seconds() * 1e6))
    freed_i = model.items.expire(now_us, int(ft.expire_after.total_seconds() * 1e6))
    model.sync_out()
    expired = {"users": len(freed_u), "items": len(freed_i)}
    ctx = _context(checkpoint_dir, rec.name, f"ft-{base.version}", data.sha256, preemption, report)
    loop = run_loop(
        model,
        data,
        epochs=ft.epochs,
        batch_size=rec.batch_size,
        lr=ft.lr,
        negatives=rec.negatives,
        seed=seed,
        ctx=ctx,
        dense_lr=None,
        checkpoint_every_steps=ft.checkpoint_every_steps,
    )
    after = dense_digest(model)
    changed = sorted(k for k in before if before[k] != after.get(k))
    if changed:  # a guarantee of the loop; checked, never assumed
        raise KeelError(f"fine-tune changed frozen parameters: {', '.join(changed)}")
    seconds["fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report("evaluate", 0, 1)
    check = None
    if ft.precision != "float32":
        # The probe: the users of this fine-tune's own interactions, as of their last one.
        users = np.unique(data.users)[:256]
        feats = last_features(data, users)
        check = precision_check(model, users, feats, ft.precision, k=rec.k)
        if check["max_score_diff"] > ft.tolerance or check["top_k_overlap"] < ft.min_overlap:
            if ctx.checkpoints is not None:
                ctx.checkpoints.clear()
            raise InconsistentVersion(
                f"fine-tune of {base.ref} refused: served in {ft.precision} its scores differ "
                f"from float32 by {check['max_score_diff']:.3f} of their spread (tolerance "
                f"{ft.tolerance}) and its top-{rec.k} overlap is {check['top_k_overlap']:.2f} "
                f"(at least {ft.min_overlap}); serve in float32 or keep the tables' scale in "
                "range"
            )
    metrics = evaluate(model, data, rec.k)
    seconds["evaluate"] = time.perf_counter() - t0
    report("evaluate", 1, 1)

    t0 = time.perf_counter()
    report("register", 0, 1)
    touched = {"users": len(loop.touched_users), "items": len(loop.touched_items)}
    child = {
        **{k: v for k, v in lineage.items() if k in ("kind", "model", "recommender", "route")},
        "recommender": record(rec),
        "mode": "fine_tune",
        "parent": base.version,
        "interactions": {
            "topic": rec.interactions,
            "from": start,
            "to": end,
            "rows": len(data),
            "time_range": data.time_range(),
            "sha256": data.sha256,
        },
        "feature_names": model.feature_names,
        "steps": loop.steps,
        "rows_touched": touched,
        "admitted": admitted,
        "expired": expired,
        "dense_sha256": after,
        "precision": check,
        "resumed_from": ctx.resumed_from,
    }
    version = _register(
        registry,
        rec,
        model,
        metrics,
        child,
        base.version,
        code_dir,
        loop.steps,
        len(data),
        description=f"fine-tune of {base.ref}: {len(data):,} interactions, "
        f"{touched['users']:,} user and {touched['items']:,} item rows",
    )
    moved = _publish(
        registry,
        indexes,
        rec,
        model,
        version,
        ctx,
        shadow,
        alias,
        reason=f"fine-tune of {base.ref}",
    )
    seconds["register"] = time.perf_counter() - t0
    report("register", 1, 1)
    return FineTuneResult(
        rec,
        version,
        metrics,
        data,
        seconds,
        resumed_from=ctx.resumed_from,
        checkpoints_written=ctx.checkpoints_written,
        shadow_alias=moved,
        parent=base.version,
        steps=loop.steps,
        touched=touched,
        admitted=admitted,
        expired=expired,
        precision=check,
    )


def _register(
    registry: Registry,
    rec: Recommender,
    model: TwoTower,
    metrics: dict[str, float],
    lineage: dict[str, Any],
    parent: int | None,
    code_dir: str | None,
    steps: int,
    rows: int,
    description: str = "",
) -> ModelVersion:
    return registry.register(
        rec.name,
        model,
        format="torch",
        factory=FACTORY,
        init_kwargs=model.init_kwargs(),
        params={
            "dim": rec.dim,
            "hidden": rec.hidden,
            "negatives": rec.negatives,
            "user_rows": len(model.users.live),
            "item_rows": len(model.items.live),
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        metrics={**metrics, "interactions": float(rows), "steps": float(steps)},
        parent=parent,
        description=description or rec.description or f"keel train {rec.name}",
        code_dir=code_dir,
        training=lineage,
    )


def _publish(
    registry: Registry,
    indexes: IndexStore,
    rec: Recommender,
    model: TwoTower,
    version: ModelVersion,
    ctx: RunContext,
    shadow: bool,
    alias: str | None,
    *,
    reason: str,
) -> str | None:
    """After registering: the version's index, the alias moved (``challenger`` with
    ``shadow``), the run's checkpoints cleared; returns the alias moved."""
    publish_index(indexes, rec.name, version.version, model)
    moved = "challenger" if shadow else alias
    if moved is not None:
        registry.set_alias(rec.name, moved, version.version, reason=tag_with_job(reason))
    if ctx.checkpoints is not None:
        ctx.checkpoints.clear()
    return moved


def _context(
    checkpoint_dir: str | Path | None,
    name: str,
    run: str,
    sha: str,
    preemption: Preemption | None,
    report: Progress,
) -> RunContext:
    store = None
    if checkpoint_dir is not None:
        store = CheckpointStore(Path(checkpoint_dir) / name / f"{run}-{sha[:16]}")
    return RunContext(
        checkpoints=store,
        preemption=preemption or Preemption(),
        data_sha256=sha,
        progress=lambda done, total: report("fit", done, total),
    )
