"""The model registry: versions with lineage, content-addressed artifacts, aliases.

Open one with :class:`Registry` (``sqlite://`` by default, ``postgresql://`` to scale out).
"""

from __future__ import annotations

from keel.registry.artifacts import ArtifactStore, TamperedArtifactError
from keel.registry.registry import (
    EVENTS_TOPIC,
    AliasMove,
    Change,
    ModelVersion,
    Registry,
    ReproduceReport,
)

__all__ = [
    "EVENTS_TOPIC",
    "AliasMove",
    "ArtifactStore",
    "Change",
    "ModelVersion",
    "Registry",
    "ReproduceReport",
    "TamperedArtifactError",
]
