"""Definitions of this Keel project: its topics, feature views and models. `keel apply` reads
this module, creates the topics, validates and fingerprints the feature views, and checks the
models; `keel train MODEL` trains one and registers it with its lineage.
"""

from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc

from keel.embeddings import MiniLM
from keel.features import Aggregate, Entity, FeatureView, Last, Source
from keel.features.transforms import TextEmbeddingLookup
from keel.log import Topic
from keel.recommend import FineTune, Recommender
from keel.shop import TOPICS as SHOP_TOPICS
from keel.training import Label, LightGBM, Model, TimeSplit

# -- topics -------------------------------------------------------------------------------
# The demo shop's streams: items, users, events (views, carts, purchases), payments and the
# fraud labels that arrive later.
topics = [*SHOP_TOPICS]

# A topic of your own: fields with types ("?" = nullable), the event-time column, the key
# that picks the partition, and the number of partitions.
topics.append(
    Topic(
        "shop.reviews",
        {
            "ts": "timestamp",
            "user_id": "int64",
            "item_id": "int64",
            "stars": "int32",
            "text": "string?",
        },
        event_time="ts",
        key="item_id",
        partitions=2,
        retention_ms=30 * 24 * 3600 * 1000,
    )
)

# -- features -----------------------------------------------------------------------------
user = Entity("user", join_key="user_id")
card = Entity("card", join_key="card_id")


def event_flags(events: pa.Table) -> pa.Table:
    """Per event: is it a cart, a purchase, and what was spent (row by row)."""
    kind = events.column("event_type")
    purchase = pc.equal(kind, "purchase")
    return (
        events.append_column("is_cart", pc.equal(kind, "cart").cast(pa.float64()))
        .append_column("is_purchase", purchase.cast(pa.float64()))
        .append_column("spend", pc.if_else(purchase, events.column("price"), 0.0))
    )


user_activity = FeatureView(
    "user_activity",
    entity=user,
    source=Source(
        "shop.events",
        transform=event_flags,
        fields={"is_cart": "float64", "is_purchase": "float64", "spend": "float64"},
        allowed_lateness=timedelta(minutes=10),
    ),
    features=[
        Aggregate(None, "count", timedelta(hours=1), name="events_1h"),
        Aggregate(None, "count", timedelta(days=1), name="events_1d"),
        Aggregate("is_cart", "sum", timedelta(days=1), name="carts_1d"),
        Aggregate("is_purchase", "sum", timedelta(days=7), name="purchases_7d"),
        Aggregate("spend", "sum", timedelta(days=7), name="spend_7d"),
        Aggregate("price", "mean", timedelta(days=1), name="viewed_price_1d"),
        Last("category", name="last_category"),
        Last("device_id", name="last_device"),
    ],
    tile=timedelta(minutes=15),
    ttl=timedelta(days=30),
    description="What a user did in the shop lately.",
)

# Each viewed item's description, embedded with all-MiniLM-L6-v2, so the view can keep a
# user's 7-day mean item embedding: their taste, in the same space as the items.
item_embedding = TextEmbeddingLookup(
    topic="shop.items",
    key="item_id",
    text="description",
    into="item_emb",
    embed=MiniLM(),
    dim=MiniLM.dim,
    model="all-MiniLM-L6-v2",
)

user_taste = FeatureView(
    "user_taste",
    entity=user,
    source=Source(
        "shop.events",
        transform=item_embedding,
        fields=item_embedding.fields,
        allowed_lateness=timedelta(minutes=10),
    ),
    features=[Aggregate("item_emb", "vector_mean", timedelta(days=7), name="taste_7d")],
    tile=timedelta(days=1),
    description="A user's mean item embedding over the last 7 days.",
)

card_payments = FeatureView(
    "card_payments",
    entity=card,
    source=Source("shop.payments", allowed_lateness=timedelta(minutes=10)),
    features=[
        Aggregate(None, "count", timedelta(minutes=10), name="payments_10m"),
        Aggregate(None, "count", timedelta(hours=1), name="payments_1h"),
        Aggregate("amount", "sum", timedelta(hours=1), name="amount_1h"),
        Aggregate("amount", "max", timedelta(days=1), name="max_amount_1d"),
        Aggregate("amount", "mean", timedelta(days=7), name="mean_amount_7d"),
        Aggregate("new_device", "sum", timedelta(days=1), name="new_devices_1d"),
        Last("country"),
        Last("device_id", name="last_device"),
    ],
    tile=timedelta(minutes=5),
    ttl=timedelta(days=30),
    description="How a card has been used: velocity, amounts, devices.",
)

feature_views = [user_activity, user_taste, card_payments]

# -- models -------------------------------------------------------------------------------
# Card fraud, scored per payment by the "fraud" route. Each payment is graded by its label on
# shop.fraud_labels (joined by payment_id); a legitimate payment is confirmed a day or more
# later, so payments younger than 3 days are left out: their label may not be known yet.
# Trained on the past, evaluated on the last day: never a random split across time.
fraud = Model(
    "fraud",
    features=["card_payments", "user_activity"],
    inputs=["amount"],  # a field of the request itself
    label=Label(
        "shop.fraud_labels",
        "is_fraud",
        id="payment_id",
        examples="shop.payments",
        settle=timedelta(days=3),
    ),
    trainer=LightGBM(
        # Regularized, so its scores say how sure it is (what estimating its loss relies on).
        params={
            "num_iterations": 150,
            "learning_rate": 0.05,
            "num_leaves": 7,
            "min_data_in_leaf": 40,
            "lambda_l2": 10.0,
        },
        seed=7,
    ),
    split=TimeSplit(holdout=timedelta(days=2), warmup=timedelta(days=7)),
    metrics=["auc", "logloss", "recall@100"],
    route="fraud",
    description="card fraud on card and user features",
)

# Recommendations for the "recommend" route: a two-tower model over one embedding row per
# user and item, trained on views, carts and purchases (weighted) with sampled negatives; the
# user tower also reads the user's recent activity from the feature store. `keel fine-tune
# recommend` refreshes only the embedding rows that new interactions touch, every 30 minutes
# under `keel fine-tune recommend --every 30m`; every other layer stays frozen.
recommend = Recommender(
    "recommend",
    interactions="shop.events",
    weights={"view": 1.0, "cart": 2.0, "purchase": 4.0},
    features=["user_activity"],
    window=timedelta(days=3),  # recent tastes; older interactions are left out
    holdout=timedelta(hours=2),
    fine_tune=FineTune(
        every=timedelta(minutes=30),
        min_count=2,  # an ID gets its own row once seen twice
        expire_after=timedelta(days=14),  # and loses it after two weeks unseen
    ),
    route="recommend",
    description="two-tower recommender over user and item embedding tables",
)

models = [fraud, recommend]
