"""The demo shop's topics."""

from __future__ import annotations

from keel.log import Topic

__all__ = ["EVENTS", "ITEMS", "LABELS", "PAYMENTS", "TOPICS", "USERS"]

ITEMS = Topic(
    "shop.items",
    {
        "ts": "timestamp",
        "item_id": "int64",
        "category": "string",
        "title": "string",
        "description": "string",
        "price": "float64",
    },
    event_time="ts",
    key="item_id",
)
USERS = Topic(
    "shop.users",
    {"ts": "timestamp", "user_id": "int64", "country": "string", "device_id": "string"},
    event_time="ts",
    key="user_id",
)
EVENTS = Topic(
    "shop.events",
    {
        "ts": "timestamp",
        "event_id": "int64",
        "user_id": "int64",
        "session_id": "int64",
        "item_id": "int64",
        "event_type": "string",
        "category": "string",
        "price": "float64",
        "device_id": "string",
    },
    event_time="ts",
    key="user_id",
    partitions=4,
)
PAYMENTS = Topic(
    "shop.payments",
    {
        "ts": "timestamp",
        "payment_id": "int64",
        "user_id": "int64",
        "card_id": "int64",
        "amount": "float64",
        "country": "string",
        "device_id": "string",
        "merchant_category": "string",
        "new_device": "bool",
    },
    event_time="ts",
    key="user_id",
    partitions=4,
)
LABELS = Topic(
    "shop.fraud_labels",
    {"ts": "timestamp", "payment_id": "int64", "user_id": "int64", "is_fraud": "bool"},
    event_time="ts",
    key="user_id",
    partitions=4,
)
TOPICS = (ITEMS, USERS, EVENTS, PAYMENTS, LABELS)
