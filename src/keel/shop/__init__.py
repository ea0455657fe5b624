"""A reproducible demo shop: users, items with texts, sessions, payments, fraud, labels."""

from __future__ import annotations

from keel.shop.generator import Shift, Shop
from keel.shop.topics import EVENTS, ITEMS, LABELS, PAYMENTS, TOPICS, USERS

__all__ = ["EVENTS", "ITEMS", "LABELS", "PAYMENTS", "TOPICS", "USERS", "Shift", "Shop"]
