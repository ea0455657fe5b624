"""Reproduce a registered version's model, not only its data: rebuild the training set
from the lineage (recorded labels, recorded log offsets), refit with the recorded trainer,
parameters and seeds, and compare the artifact's bytes with the registered ones."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from keel.errors import ValidationError
from keel.features import FeatureStore
from keel.registry import Registry
from keel.registry.artifacts import sha256
from keel.registry.formats import serialize
from keel.training.checkpoint import Preemption
from keel.training.dataset import TS, matrix, micros
from keel.training.trainers import RunContext, trainer_from_record

__all__ = ["ModelReproduction", "reproduce_model"]


@dataclass
class ModelReproduction:
    model: str
    version: int
    data_matches: bool
    identical: bool
    recorded_artifact: str
    rebuilt_artifact: str
    rows: int
    #: Largest |score difference| over the training set's rows (0.0 when identical).
    max_prediction_diff: float
    code_changed: bool
    recorded_fingerprint: str
    current_fingerprint: str
    changed_views: dict[str, tuple[str, str]] = field(default_factory=dict)


def reproduce_model(
    registry: Registry, features: FeatureStore, name: str, ref: int | str = "latest"
) -> ModelReproduction:
    """Retrain ``name@ref`` from its lineage and compare with what was registered."""
    v = registry.get(name, ref)
    info = v.lineage.get("training")
    if not info:
        raise ValidationError(
            f"{v.ref} was not trained by Keel (no training lineage); only versions from "
            "`keel train` can be retrained — `keel registry reproduce` still checks its data"
        )
    data = registry.reproduce(name, v.version, features)
    table = data.table
    assert table is not None  # Registry.reproduce hands back the table it rebuilt
    names = list(info["feature_names"])
    x = matrix(table, names)
    y = matrix(table, [info["label"]["column"]])[:, 0]
    ts = micros(table, TS)
    train = ts < int(info["split"]["cut_us"])
    trainer = trainer_from_record(info["trainer"])
    current = trainer.fingerprint()
    ctx = RunContext(preemption=Preemption(), data_sha256=data.rebuilt_sha256)
    fitted = trainer.fit(x[train], y[train], names, ctx)
    rebuilt = serialize(fitted, trainer.format, **trainer.register_options(fitted))
    digest = sha256(rebuilt.data)
    identical = digest == v.artifact
    diff = 0.0
    if not identical:
        recorded = registry.load(name, v.version)
        diff = float(
            np.max(np.abs(trainer.predict(recorded, x) - trainer.predict(fitted, x)), initial=0.0)
        )
    return ModelReproduction(
        model=name,
        version=v.version,
        data_matches=data.matches,
        identical=identical,
        recorded_artifact=v.artifact,
        rebuilt_artifact=digest,
        rows=table.num_rows,
        max_prediction_diff=diff,
        code_changed=current != info["code_fingerprint"],
        recorded_fingerprint=info["code_fingerprint"],
        current_fingerprint=current,
        changed_views=data.changed_views,
    )
