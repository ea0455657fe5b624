"""The feature store: features defined once, served offline (point in time) and online.

See :class:`FeatureStore`; definitions are :class:`Entity`, :class:`Source`,
:class:`FeatureView`, :func:`Aggregate` and :func:`Last`.
"""

from __future__ import annotations

from keel.features.definitions import Aggregate, Entity, Feature, FeatureView, Last, Source
from keel.features.offline import OfflineStore
from keel.features.online import OnlineStore, open_online_store
from keel.features.store import FeatureStore, OnlineResult

__all__ = [
    "Aggregate",
    "Entity",
    "Feature",
    "FeatureStore",
    "FeatureView",
    "Last",
    "OfflineStore",
    "OnlineResult",
    "OnlineStore",
    "Source",
    "open_online_store",
]
