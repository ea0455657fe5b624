"""Recommendation: a two-tower recommender over collisionless embedding tables, trained in
full by ``keel train`` and refreshed from the stream by ``keel fine-tune``, which updates only
the table rows new interactions touch; each version is served with its own vector index."""

from keel.recommend.definitions import FineTune, Recommender
from keel.recommend.model import TwoTower
from keel.recommend.run import (
    FineTuneResult,
    InconsistentVersion,
    NothingNew,
    RecommenderResult,
    fine_tune,
    publish_index,
    train_recommender,
)

__all__ = [
    "FineTune",
    "FineTuneResult",
    "InconsistentVersion",
    "NothingNew",
    "Recommender",
    "RecommenderResult",
    "TwoTower",
    "fine_tune",
    "publish_index",
    "train_recommender",
]
