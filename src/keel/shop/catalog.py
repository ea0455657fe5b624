"""The shop's categories: vocabularies for item texts, price levels, how popular they are."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATEGORIES", "COUNTRIES", "FOREIGN", "Category"]


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    weight: float  # share of browsing
    price_median: float
    price_sigma: float
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    uses: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category(
        "electronics",
        1.6,
        80.0,
        0.9,
        (
            "headphones",
            "charger",
            "smartwatch",
            "speaker",
            "keyboard",
            "webcam",
            "tablet",
            "earbuds",
            "power bank",
            "monitor",
        ),
        (
            "wireless",
            "noise-cancelling",
            "portable",
            "compact",
            "fast-charging",
            "bluetooth",
            "4K",
            "ergonomic",
        ),
        (
            "for music, calls and video meetings",
            "that pairs with your phone in seconds",
            "with a battery that lasts all week",
            "for gaming and streaming",
        ),
    ),
    Category(
        "books",
        1.2,
        14.0,
        0.4,
        (
            "novel",
            "cookbook",
            "biography",
            "thriller",
            "poetry collection",
            "travel guide",
            "history book",
            "children's book",
        ),
        (
            "bestselling",
            "illustrated",
            "award-winning",
            "paperback",
            "hardcover",
            "gripping",
            "heartwarming",
        ),
        (
            "about a family secret spanning three generations",
            "with one hundred easy weeknight recipes",
            "set in post-war Berlin",
            "for curious readers of all ages",
        ),
    ),
    Category(
        "fashion",
        1.4,
        35.0,
        0.6,
        (
            "sneakers",
            "denim jacket",
            "wool sweater",
            "summer dress",
            "leather belt",
            "rain coat",
            "t-shirt",
            "scarf",
        ),
        (
            "slim-fit",
            "organic cotton",
            "waterproof",
            "vintage",
            "lightweight",
            "oversized",
            "classic",
        ),
        (
            "for everyday wear",
            "that keeps you warm in winter",
            "for running and the gym",
            "made from recycled fabric",
        ),
    ),
    Category(
        "home",
        1.0,
        40.0,
        0.7,
        (
            "table lamp",
            "throw pillow",
            "coffee maker",
            "bed sheets",
            "storage box",
            "wall clock",
            "kitchen knife",
            "vacuum cleaner",
        ),
        ("minimalist", "stainless steel", "handmade", "energy-saving", "cozy", "modern"),
        (
            "for a calm living room",
            "that makes mornings easier",
            "for small apartments",
            "that is easy to clean",
        ),
    ),
    Category(
        "garden",
        0.6,
        30.0,
        0.7,
        (
            "watering can",
            "seed kit",
            "hedge trimmer",
            "plant pot",
            "garden hose",
            "bird feeder",
            "lawn mower",
        ),
        ("frost-resistant", "solar-powered", "ceramic", "heavy-duty", "foldable"),
        ("for balcony herbs and tomatoes", "that attracts songbirds", "for a tidy lawn all summer"),
    ),
    Category(
        "toys",
        0.7,
        25.0,
        0.6,
        (
            "building blocks",
            "puzzle",
            "plush bear",
            "remote-control car",
            "board game",
            "doll house",
            "science kit",
        ),
        ("educational", "colourful", "wooden", "award-winning", "battery-free"),
        (
            "for kids aged five and up",
            "for rainy family evenings",
            "that teaches counting and colours",
        ),
    ),
    Category(
        "sports",
        0.8,
        45.0,
        0.8,
        (
            "yoga mat",
            "dumbbells",
            "running shoes",
            "bike helmet",
            "tennis racket",
            "water bottle",
            "fitness tracker",
        ),
        ("non-slip", "adjustable", "breathable", "lightweight", "professional"),
        ("for home workouts", "for marathon training", "for weekend rides in the hills"),
    ),
    Category(
        "beauty",
        0.8,
        20.0,
        0.6,
        ("face cream", "shampoo", "lipstick", "perfume", "sunscreen", "hair dryer", "nail polish"),
        ("vegan", "fragrance-free", "long-lasting", "hydrating", "SPF 50"),
        ("for sensitive skin", "that smells of citrus and cedar", "for shiny, soft hair"),
    ),
    Category(
        "grocery",
        1.1,
        8.0,
        0.5,
        ("coffee beans", "olive oil", "dark chocolate", "green tea", "pasta", "honey", "granola"),
        ("organic", "fair-trade", "single-origin", "cold-pressed", "gluten-free"),
        ("from small farms in Italy", "roasted in small batches", "for a healthy breakfast"),
    ),
    Category(
        "music",
        0.4,
        60.0,
        1.0,
        ("acoustic guitar", "vinyl record", "ukulele", "digital piano", "drum pads", "microphone"),
        ("beginner", "studio-grade", "limited-edition", "handcrafted"),
        ("for learning your first chords", "for home recording", "remastered from tape"),
    ),
    Category(
        "games",
        0.9,
        45.0,
        0.5,
        ("video game", "game controller", "gift card", "gaming headset", "console bundle"),
        ("multiplayer", "open-world", "wireless", "collector's", "digital"),
        (
            "with a hundred hours of adventure",
            "for couch co-op with friends",
            "redeemable instantly online",
        ),
    ),
    Category(
        "pets",
        0.5,
        22.0,
        0.6,
        ("dog food", "cat tree", "leash", "chew toy", "aquarium filter", "pet bed"),
        ("grain-free", "durable", "washable", "vet-approved", "orthopedic"),
        ("for large breeds", "that keeps indoor cats busy", "for senior dogs"),
    ),
)

COUNTRIES: tuple[tuple[str, float], ...] = (
    ("DE", 0.30),
    ("FR", 0.18),
    ("GB", 0.14),
    ("NL", 0.08),
    ("ES", 0.10),
    ("IT", 0.10),
    ("PL", 0.06),
    ("SE", 0.04),
)
FOREIGN = ("US", "BR", "NG", "RU", "CN", "VN", "ID")
