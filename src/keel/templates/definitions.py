"""Definitions of this Keel project: its topics (and, as the project grows, its features,
models and routes). `keel apply` reads this module and creates what it declares.
"""

from keel.log import Topic
from keel.shop import TOPICS as SHOP_TOPICS

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
