"""The shop's world: categories with their vocabularies and prices, items, users.

Item texts are built from per-category words so that a sentence embedding of a title or a
description lands near the other items of its category.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "CATEGORIES",
    "COUNTRIES",
    "FOREIGN",
    "PLATFORMS",
    "Category",
    "Items",
    "Users",
    "build_items",
    "build_users",
    "concat_items",
    "fresh_device_names",
    "launch_items",
]

DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True, slots=True)
class Category:
    """A category: its share of browsing, its price level and the words its items use."""

    name: str
    weight: float
    price_median: float
    price_sigma: float
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    uses: tuple[str, ...]
    features: tuple[str, ...]


# fmt: off
CATEGORIES: tuple[Category, ...] = (
    Category(
        "electronics", 1.6, 80.0, 0.9,
        ("Voltra", "Nexon", "Sonique", "Arkwave"),
        ("wireless", "portable", "compact", "fast-charging", "noise-cancelling", "smart"),
        ("headphones", "earbuds", "bluetooth speaker", "smartwatch", "power bank",
         "mechanical keyboard", "webcam", "tablet", "USB-C charger", "4K monitor"),
        ("for music, calls and video meetings", "for working from home",
         "for gaming and streaming", "for travel and commuting"),
        ("with a battery that lasts all week", "that pairs with your phone in seconds",
         "with a two-year warranty", "with a built-in microphone"),
    ),
    Category(
        "books", 1.2, 14.0, 0.4,
        ("Penrose", "Lantern", "Quillfield", "Harbour"),
        ("bestselling", "illustrated", "award-winning", "paperback", "hardcover", "classic"),
        ("novel", "cookbook", "biography", "crime thriller", "poetry collection",
         "travel guide", "history book", "children's picture book", "fantasy saga"),
        ("for long train journeys", "for cosy evenings with tea",
         "for book clubs and curious readers", "that makes a thoughtful gift"),
        ("with a foreword by the author", "printed on recycled paper",
         "with full-colour photographs", "translated into twenty languages"),
    ),
    Category(
        "fashion", 1.4, 35.0, 0.6,
        ("Norrland", "Atelier Vey", "Urbanfit", "Kestrel"),
        ("slim-fit", "vintage", "lightweight", "oversized", "classic", "unisex", "breathable"),
        ("sneakers", "denim jacket", "wool sweater", "summer dress", "leather belt",
         "rain coat", "t-shirt", "scarf", "hoodie"),
        ("for everyday wear", "for cold winter days", "for weekend city trips",
         "for the office and evenings out"),
        ("made from recycled fabric", "available in six colours", "that is machine washable",
         "with reinforced seams"),
    ),
    Category(
        "home", 1.0, 40.0, 0.7,
        ("Hygga", "Casaluna", "Ironbark", "Willow & Co"),
        ("minimalist", "stainless steel", "handmade", "energy-saving", "cosy", "Scandinavian"),
        ("table lamp", "throw pillow", "coffee maker", "bed sheets", "storage box",
         "wall clock", "chef's knife", "vacuum cleaner", "scented candle"),
        ("for a calm living room", "that makes mornings easier", "for small apartments",
         "for a tidy kitchen"),
        ("that is easy to clean", "with a five-year guarantee", "designed in Copenhagen",
         "that fits any interior"),
    ),
    Category(
        "garden", 0.6, 30.0, 0.7,
        ("Greenthumb", "Bloomwell", "Terrano"),
        ("frost-resistant", "solar-powered", "ceramic", "heavy-duty", "foldable", "cordless"),
        ("watering can", "seed starter kit", "hedge trimmer", "plant pot", "garden hose",
         "bird feeder", "lawn mower", "compost bin"),
        ("for balconies and small gardens", "for a tidy lawn all summer",
         "for raised beds and allotments", "for the spring planting season"),
        ("built to survive frost and rain", "with a lifetime warranty",
         "made from recycled plastic", "that stores flat over winter"),
    ),
    Category(
        "toys", 0.7, 25.0, 0.6,
        ("Tinkertot", "Brightblock", "Little Fox"),
        ("educational", "colourful", "wooden", "battery-free", "award-winning"),
        ("building block set", "jigsaw puzzle", "plush bear", "remote-control car",
         "board game", "doll's house", "science kit", "train set"),
        ("for kids aged five and up", "for rainy family afternoons",
         "for toddlers learning shapes and colours", "for curious young inventors"),
        ("with non-toxic paints", "that comes gift-wrapped", "with over a hundred pieces",
         "tested to European safety standards"),
    ),
    Category(
        "sports", 0.8, 45.0, 0.8,
        ("Stridex", "Peakform", "Velocita"),
        ("non-slip", "adjustable", "breathable", "lightweight", "professional", "foldable"),
        ("yoga mat", "dumbbell set", "running shoes", "bike helmet", "tennis racket",
         "water bottle", "fitness tracker", "resistance bands"),
        ("for home workouts", "for marathon training", "for weekend rides in the hills",
         "for the gym and the studio"),
        ("with a carry strap", "trusted by professional athletes", "that dries in minutes",
         "with a lifetime warranty"),
    ),
    Category(
        "beauty", 0.8, 20.0, 0.6,
        ("Lumiere", "Botanica", "Velvetine"),
        ("vegan", "fragrance-free", "long-lasting", "hydrating", "organic",
         "dermatologist-tested"),
        ("face cream", "shampoo", "lipstick", "perfume", "sunscreen", "body lotion",
         "nail polish", "face serum"),
        ("for sensitive skin", "for a natural everyday look", "for your morning routine",
         "for dry winter skin"),
        ("that smells of citrus and cedar", "in a refillable glass bottle",
         "free from parabens", "made with aloe vera"),
    ),
    Category(
        "grocery", 1.1, 8.0, 0.5,
        ("Olivia Farms", "Casa Verde", "Nordic Pantry"),
        ("organic", "fair-trade", "single-origin", "cold-pressed", "gluten-free", "artisan"),
        ("coffee beans", "olive oil", "dark chocolate", "green tea", "durum wheat pasta",
         "wildflower honey", "granola", "basmati rice"),
        ("for a healthy breakfast", "for everyday Italian cooking", "for cosy afternoons",
         "for a well-stocked pantry"),
        ("from small family farms", "packed in a resealable bag", "with no added sugar",
         "sourced directly from growers"),
    ),
    Category(
        "music", 0.4, 60.0, 1.0,
        ("Harmonia", "Fretwell", "Soundforge"),
        ("beginner", "studio-grade", "limited-edition", "handcrafted", "vintage"),
        ("acoustic guitar", "vinyl record", "ukulele", "digital piano", "drum pad",
         "condenser microphone", "violin"),
        ("for learning your first chords", "for home recording",
         "for live gigs and rehearsals", "for collectors and audiophiles"),
        ("with a padded gig bag", "with free online lessons", "tuned and checked by hand",
         "with a warm, rich tone"),
    ),
    Category(
        "games", 0.9, 45.0, 0.5,
        ("Pixelforge", "Questline", "Arcadia"),
        ("multiplayer", "open-world", "wireless", "collector's edition", "retro"),
        ("video game", "game controller", "gaming headset", "console bundle", "gift card",
         "racing wheel"),
        ("for couch co-op with friends", "for long weekend gaming sessions",
         "for competitive online play", "for fans of fantasy adventures"),
        ("with a hundred hours of adventure", "redeemable instantly online",
         "with customisable buttons", "including two bonus levels"),
    ),
    Category(
        "pets", 0.5, 22.0, 0.6,
        ("Pawsome", "Happy Tails", "Furrow"),
        ("grain-free", "durable", "washable", "vet-approved", "orthopaedic", "natural"),
        ("dog food", "cat tree", "dog leash", "chew toy", "aquarium filter", "pet bed",
         "cat litter", "bird cage"),
        ("for large breeds", "for indoor cats", "for senior dogs", "for puppies and kittens"),
        ("made with real chicken", "that is easy to clean", "recommended by vets",
         "built to last through chewing"),
    ),
)
# fmt: on

# Home countries of the shop's users, with their shares; fraud mostly comes from FOREIGN.
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
FOREIGN: tuple[str, ...] = ("US", "BR", "NG", "RU", "CN", "VN", "ID", "RO")
PLATFORMS: tuple[str, ...] = ("ios", "android", "web")


@dataclass(frozen=True, slots=True)
class Items:
    """The catalogue, one entry per item (item ``i`` has id ``i + 1``)."""

    listed: np.ndarray  # int64 µs since the epoch, ascending with the id (launches: their clock)
    category: np.ndarray  # int64 index into CATEGORIES
    title: np.ndarray  # str
    description: np.ndarray  # str
    price: np.ndarray  # float64 list price


@dataclass(frozen=True, slots=True)
class Users:
    """The users, one entry per user (user ``u`` has id ``u + 1``).

    Device codes index ``devices``: user ``u``'s first device is ``u``, a second one (of the
    other kind: a phone for a browser user, a browser for a phone user) is ``n_users + u``;
    ``mobile`` and ``web`` hold the code of each kind, or ``-1`` where the user has none.
    Card ``k`` of user ``u`` (``k < n_cards[u]``) has id ``first_card[u] + k``.
    """

    signup: np.ndarray  # int64 µs, ascending with the id
    country: np.ndarray  # int64 index into COUNTRIES
    activity: np.ndarray  # float64, relative sessions per day
    preference: np.ndarray  # float64 (users, categories), rows sum to 1
    devices: np.ndarray  # str, by device code
    mobile: np.ndarray  # int64 device code or -1
    web: np.ndarray  # int64 device code or -1
    first_card: np.ndarray  # int64
    n_cards: np.ndarray  # int64, 1 or 2


def build_items(rng: np.random.Generator, n_items: int, start_us: int) -> Items:
    """Draw ``n_items`` items: a category each (every category has one), words, a price."""
    weights = np.array([c.weight for c in CATEGORIES])
    cat = rng.choice(len(CATEGORIES), n_items, p=weights / weights.sum())
    cat[: len(CATEGORIES)] = np.arange(len(CATEGORIES))
    title, description, price = _describe(rng, cat)
    listed = np.sort(start_us - rng.integers(1, 730, n_items) * DAY_US)
    return Items(listed, cat.astype(np.int64), title, description, price)


def launch_items(rng: np.random.Generator, n: int, category: int, listed_us: int) -> Items:
    """Draw ``n`` new items of category ``category`` (an index into CATEGORIES), all listed at
    ``listed_us``, their words and prices drawn as :func:`build_items` draws them."""
    cat = np.full(n, category, dtype=np.int64)
    title, description, price = _describe(rng, cat)
    return Items(np.full(n, listed_us, dtype=np.int64), cat, title, description, price)


def concat_items(*parts: Items) -> Items:
    """One catalogue of ``parts`` in order, in new arrays (the parts are left as they are)."""
    columns = [np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Items)]
    return Items(*columns)


def _describe(
    rng: np.random.Generator, cat: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Titles, descriptions and list prices of items of categories ``cat``."""
    words = {}
    for part in ("brands", "adjectives", "nouns", "uses", "features"):
        flat, index = _pick(rng, cat, [getattr(c, part) for c in CATEGORIES])
        words[part] = flat[index]
        if part == "adjectives":
            capital = np.array([w[:1].upper() + w[1:] for w in flat])[index]
    title = _join(words["brands"], " ", words["adjectives"], " ", words["nouns"])
    description = _join(capital, " ", words["nouns"], " ", words["uses"], ", ")
    description = _join(description, words["features"], ".")
    median = np.array([c.price_median for c in CATEGORIES])[cat]
    sigma = np.array([c.price_sigma for c in CATEGORIES])[cat]
    # Shop prices end in .99: round the lognormal draw up to the next whole unit, less a cent.
    price = np.maximum(np.ceil(median * np.exp(sigma * rng.standard_normal(len(cat)))), 1) - 0.01
    return title, description, np.round(price, 2)


def build_users(rng: np.random.Generator, n_users: int, start_us: int) -> Users:
    """Draw ``n_users`` users: home country, activity, category taste, devices and cards."""
    shares = np.array([w for _, w in COUNTRIES])
    country = rng.choice(len(COUNTRIES), n_users, p=shares / shares.sum())
    activity = rng.lognormal(0.0, 1.0, n_users)
    weights = np.array([c.weight for c in CATEGORIES])
    # A concentration of 3 spread by category weight: most users care for a few categories.
    preference = rng.dirichlet(3.0 * weights / weights.sum(), n_users)
    # A first device (phone or browser), and for half of the users a second of the other kind.
    first = rng.choice(len(PLATFORMS), n_users, p=[0.35, 0.35, 0.30])
    other = np.where(first == 2, rng.integers(0, 2, n_users), 2)
    devices = fresh_device_names(
        np.concatenate([first, other]), rng.integers(0, 2**32, 2 * n_users)
    )
    has_second = rng.random(n_users) < 0.5
    codes = np.arange(n_users, dtype=np.int64)
    second = np.where(has_second, n_users + codes, -1)
    on_phone = first < 2
    n_cards = 1 + (rng.random(n_users) < 0.4).astype(np.int64)
    first_card = 100_001 + np.cumsum(n_cards) - n_cards
    signup = np.sort(start_us - rng.integers(1, 730 * DAY_US, n_users))
    return Users(
        signup=signup,
        country=country.astype(np.int64),
        activity=activity,
        preference=preference,
        devices=devices,
        mobile=np.where(on_phone, codes, second),
        web=np.where(on_phone, second, codes),
        first_card=first_card,
        n_cards=n_cards,
    )


def fresh_device_names(platform: np.ndarray, serial: np.ndarray) -> np.ndarray:
    """``platform-hex`` names, e.g. ``ios-0a1b2c3d``, from platform indexes and 32-bit serials."""
    digits = (serial.astype(np.uint64)[:, None] >> np.arange(28, -1, -4, dtype=np.uint64)) & 15
    hexes = np.array(list("0123456789abcdef"))[digits.astype(np.int64)]
    hexes = np.ascontiguousarray(hexes).view("<U8").ravel()
    return _join(np.array(PLATFORMS)[platform], "-", hexes)


def _pick(
    rng: np.random.Generator, cat: np.ndarray, lists: list[tuple[str, ...]]
) -> tuple[np.ndarray, np.ndarray]:
    """All words in one array, and for each row the index of a word of its category."""
    flat = np.array([w for words in lists for w in words])
    sizes = np.array([len(words) for words in lists])
    offsets = np.cumsum(sizes) - sizes
    return flat, offsets[cat] + (rng.random(len(cat)) * sizes[cat]).astype(np.int64)


def _join(*parts: np.ndarray | str) -> np.ndarray:
    out = np.asarray(parts[0])
    for part in parts[1:]:
        out = np.char.add(out, part)
    return out
