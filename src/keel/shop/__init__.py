"""A reproducible demo shop: items with texts, users, sessions of views, carts and purchases,
payments with bursts of card fraud, and the fraud labels that arrive later."""

from __future__ import annotations

from keel.shop.behaviour import Shift
from keel.shop.generator import Shop
from keel.shop.topics import EVENTS, ITEMS, LABELS, PAYMENTS, TOPICS, USERS

__all__ = ["EVENTS", "ITEMS", "LABELS", "PAYMENTS", "TOPICS", "USERS", "Shift", "Shop"]
