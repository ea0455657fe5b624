"""A seeded, reproducible web shop: catalogue, sessions, payments, fraud and its labels.

Everything is drawn with NumPy over whole arrays (sessions, then their views, carts and
purchases), so a week of a mid-sized shop takes a second or two.

Example
-------
>>> from datetime import datetime, UTC
>>> shop = Shop(seed=1, n_users=100, n_items=50, start=datetime(2026, 11, 1, tzinfo=UTC))
>>> day = shop.history(days=1)
>>> sorted(day)
['shop.events', 'shop.fraud_labels', 'shop.payments']
>>> day["shop.events"].num_rows == Shop(seed=1, n_users=100, n_items=50,
...     start=datetime(2026, 11, 1, tzinfo=UTC)).history(days=1)["shop.events"].num_rows
True
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from keel.errors import ValidationError, did_you_mean
from keel.shop.catalog import CATEGORIES, COUNTRIES, FOREIGN
from keel.shop.topics import EVENTS, ITEMS, LABELS, PAYMENTS, USERS

__all__ = ["Shift", "Shop"]

US = 1_000_000
DAY = 86_400 * US
VIEWS_PER_SESSION = 6.0
CART_P = 0.09
BUY_P = 0.35
EVENTS_PER_SESSION = VIEWS_PER_SESSION * (1 + CART_P + CART_P * BUY_P)
# Relative activity per hour of the day (UTC): quiet at night, peak in the evening.
HOURLY = np.array(
    [
        0.25,
        0.15,
        0.1,
        0.08,
        0.08,
        0.12,
        0.3,
        0.55,
        0.75,
        0.85,
        0.9,
        0.95,
        1.0,
        0.95,
        0.9,
        0.9,
        0.95,
        1.05,
        1.25,
        1.45,
        1.55,
        1.35,
        0.95,
        0.55,
    ]
)
NIGHT = np.zeros(24)
NIGHT[[0, 1, 2, 3, 4, 5]] = 1.0


@dataclass(frozen=True, slots=True)
class Shift:
    """Distribution knobs; the defaults are the unshifted shop."""

    price_scale: float = 1.0
    category_weights: dict[str, float] | None = None
    popularity_exponent: float = 1.1
    fraud_rate: float = 0.01
    night_share: float = 0.0
    mobile_share: float = 0.6
    fraud_amount_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("price_scale", "popularity_exponent", "fraud_amount_scale"):
            if getattr(self, name) <= 0:
                raise ValidationError(f"shift {name} must be positive, got {getattr(self, name)}")
        for name in ("fraud_rate", "night_share", "mobile_share"):
            if not 0 <= getattr(self, name) < 1:
                raise ValidationError(f"shift {name} must be in [0, 1), got {getattr(self, name)}")
        known = {c.name for c in CATEGORIES}
        for cat, w in (self.category_weights or {}).items():
            if cat not in known:
                raise ValidationError(
                    f"shift category_weights: unknown category {cat!r}{did_you_mean(cat, known)}"
                )
            if w < 0:
                raise ValidationError(f"shift category_weights[{cat!r}] must be >= 0")


class Shop:
    """A reproducible shop of ``n_users`` users and ``n_items`` items from ``start`` on.

    Parameters
    ----------
    seed
        Same seed and arguments, same tables.
    n_users, n_items
        Catalogue sizes.
    start
        When the history begins (default 2026-11-01 UTC).
    sessions_per_user_day
        Mean browsing sessions per user and day.
    shift
        Distribution knobs (see :class:`Shift`).
    """

    def __init__(
        self,
        *,
        seed: int = 7,
        n_users: int = 5_000,
        n_items: int = 2_000,
        start: datetime | None = None,
        sessions_per_user_day: float = 1.0,
        shift: Shift | None = None,
    ) -> None:
        if n_users < 1 or n_items < len(CATEGORIES):
            raise ValidationError(
                f"a shop needs n_users >= 1 and n_items >= {len(CATEGORIES)}, got "
                f"n_users={n_users}, n_items={n_items}"
            )
        if sessions_per_user_day <= 0:
            raise ValidationError("sessions_per_user_day must be positive")
        self.seed = seed
        self.n_users = n_users
        self.n_items = n_items
        self.start = start or datetime(2026, 11, 1, tzinfo=UTC)
        if self.start.tzinfo is None:
            self.start = self.start.replace(tzinfo=UTC)
        self.sessions_per_user_day = sessions_per_user_day
        self.shift_ = shift or Shift()
        self._build_catalog()
        self._cursor = _us(self.start)
        self._ids = 0

    # -- catalogue ------------------------------------------------------------------------
    def _build_catalog(self) -> None:
        rng = np.random.default_rng([self.seed, 1])
        weights = np.array([c.weight for c in CATEGORIES])
        cats = rng.choice(len(CATEGORIES), self.n_items, p=weights / weights.sum())
        cats[: len(CATEGORIES)] = np.arange(len(CATEGORIES))  # every category has items
        self.item_cat = cats
        titles, descriptions = [], []
        price = np.empty(self.n_items)
        for i, c in enumerate(cats):
            cat = CATEGORIES[c]
            adj = cat.adjectives[rng.integers(len(cat.adjectives))]
            noun = cat.nouns[rng.integers(len(cat.nouns))]
            use = cat.uses[rng.integers(len(cat.uses))]
            titles.append(f"{adj.capitalize()} {noun}")
            descriptions.append(f"A {adj} {noun} {use}.")
            price[i] = round(cat.price_median * rng.lognormal(0, cat.price_sigma), 2)
        self.item_title, self.item_desc, self.item_price = titles, descriptions, price
        # Popularity ranks within each category, for the Zipf draw.
        self.item_rank_order = [
            np.flatnonzero(cats == c)[rng.permutation((cats == c).sum())]
            for c in range(len(CATEGORIES))
        ]
        self.user_activity = rng.lognormal(0, 0.8, self.n_users)
        self.user_pref = rng.dirichlet(np.full(len(CATEGORIES), 0.4), self.n_users)
        names = [c for c, _ in COUNTRIES]
        shares = np.array([w for _, w in COUNTRIES])
        self.user_country = np.array(names)[
            rng.choice(len(names), self.n_users, p=shares / shares.sum())
        ]
        self.user_signup = _us(self.start) - rng.integers(1, 730, self.n_users) * DAY
        ids = np.arange(1, self.n_users + 1).astype(str)
        self.mobile_device = np.char.add("m-", ids)
        self.web_device = np.char.add("w-", ids)

    def catalog(self) -> dict[str, pa.Table]:
        """The items (with texts and prices) and the users, stamped at their creation."""
        ids = np.arange(1, self.n_items + 1)
        items = pa.table(
            {
                "ts": _ts(np.full(self.n_items, _us(self.start) - 365 * DAY)),
                "item_id": ids,
                "category": [CATEGORIES[c].name for c in self.item_cat],
                "title": self.item_title,
                "description": self.item_desc,
                "price": self.item_price,
            },
            schema=ITEMS.schema,
        )
        users = pa.table(
            {
                "ts": _ts(self.user_signup),
                "user_id": np.arange(1, self.n_users + 1),
                "country": self.user_country,
                "device_id": self.mobile_device,
            },
            schema=USERS.schema,
        )
        return {ITEMS.name: items, USERS.name: users.sort_by("ts")}

    # -- shifting -------------------------------------------------------------------------
    def shift(self, **changes: Any) -> Shop:
        """A new shop with the same catalogue and users and shifted distributions."""
        known = [f.name for f in dataclasses.fields(Shift)]
        for name in changes:
            if name not in known:
                raise ValidationError(
                    f"unknown shift knob {name!r}{did_you_mean(name, known)}; knobs: "
                    f"{', '.join(known)}"
                )
        new = Shop.__new__(Shop)
        new.__dict__.update(self.__dict__)
        new.shift_ = dataclasses.replace(self.shift_, **changes)
        return new

    # -- history and streams --------------------------------------------------------------
    def history(self, days: float = 7.0) -> dict[str, pa.Table]:
        """``days`` of events, payments and fraud labels from the current cursor (``start``
        at first); each table sorted by time. Labels carry the time they become known."""
        if days <= 0:
            raise ValidationError(f"days must be positive, got {days}")
        lo = self._cursor
        hi = lo + int(days * DAY)
        rng = np.random.default_rng([self.seed, 2, lo // US, int(days * 1000)])
        n = rng.poisson(self.sessions_per_user_day * days * self.n_users)
        out = self._simulate(rng, lo, hi, n, daily_cycle=True)
        self._cursor = hi
        return {
            name: t.filter(_before(t, hi)) if name != LABELS.name else t for name, t in out.items()
        }

    def stream(
        self,
        rate: float = 2_000.0,
        *,
        start: datetime | None = None,
        realtime: bool = False,
        tick_s: float = 1.0,
        duration_s: float | None = None,
    ) -> Iterator[dict[str, pa.Table]]:
        """Yield one dict of tables per tick, about ``rate * tick_s`` shop events each.

        With ``realtime`` the ticks are paced by the wall clock and stamped with it.
        Events of sessions that run past a tick are held back until their time comes.
        """
        if rate <= 0 or tick_s <= 0:
            raise ValidationError(f"rate and tick_s must be positive, got {rate}, {tick_s}")
        cursor = _us(start) if start is not None else self._cursor
        if realtime:
            cursor = _us(datetime.now(UTC))
        rng = np.random.default_rng([self.seed, 3, cursor // US])
        step = int(tick_s * US)
        ticks = None if duration_s is None else max(round(duration_s / tick_s), 1)
        # Sessions already under way when the stream starts, so it begins at full rate.
        warm = 10 * 60 * US
        n = rng.poisson(rate * warm / US / EVENTS_PER_SESSION)
        pending = {
            name: table.filter(pa.compute.invert(_before(table, cursor)))
            for name, table in self._simulate(
                rng, cursor - warm, cursor, n, daily_cycle=False
            ).items()
        }
        wall = time.monotonic()
        i = 0
        while ticks is None or i < ticks:
            lo, hi = cursor + i * step, cursor + (i + 1) * step
            n = rng.poisson(rate * tick_s / EVENTS_PER_SESSION)
            fresh = self._simulate(rng, lo, hi, n, daily_cycle=False)
            out = {}
            for name, table in fresh.items():
                both = pa.concat_tables([pending[name], table]).sort_by("ts")
                now = _before(both, hi)
                out[name] = both.filter(now)
                pending[name] = both.filter(pa.compute.invert(now))
            if realtime:
                time.sleep(max(0.0, wall + (i + 1) * tick_s - time.monotonic()))
            self._cursor = hi
            i += 1
            yield out

    # -- simulation -----------------------------------------------------------------------
    def _simulate(
        self, rng: np.random.Generator, lo: int, hi: int, n: int, *, daily_cycle: bool
    ) -> dict[str, pa.Table]:
        s = self.shift_
        p = self.user_activity / self.user_activity.sum()
        user = rng.choice(self.n_users, n, p=p)
        start = self._session_starts(rng, lo, hi, n, daily_cycle)
        length = rng.geometric(1 / VIEWS_PER_SESSION, n)
        mobile = rng.random(n) < s.mobile_share
        session_id = 1 + self._next_ids(n)
        # Views: one row per view, its time the session start plus exponential gaps.
        sess = np.repeat(np.arange(n), length)
        gaps = rng.exponential(40 * US, len(sess)).astype(np.int64)
        first = np.r_[0, np.cumsum(length)[:-1]]
        gaps[first] = 0
        cum = np.cumsum(gaps)
        vts = start[sess] + cum - cum[first][sess]
        vuser = user[sess]
        pref = self.user_pref[vuser]
        if s.category_weights:
            w = np.array([s.category_weights.get(c.name, 1.0) for c in CATEGORIES])
            pref = pref * w
            pref = pref / pref.sum(axis=1, keepdims=True)
        cat = (rng.random(len(sess))[:, None] > np.cumsum(pref, axis=1)).sum(axis=1)
        cat = np.minimum(cat, len(CATEGORIES) - 1)
        item = self._zipf_items(rng, cat)
        # Carts follow some views, purchases some carts.
        carted = rng.random(len(sess)) < CART_P
        bought = carted & (rng.random(len(sess)) < BUY_P)
        cts = vts + rng.exponential(20 * US, len(sess)).astype(np.int64)
        bts = cts + rng.exponential(60 * US, len(sess)).astype(np.int64)
        kinds = np.concatenate(
            [
                np.zeros(len(sess), np.int8),
                np.ones(carted.sum(), np.int8),
                np.full(bought.sum(), 2, np.int8),
            ]
        )
        rows = np.concatenate(
            [np.arange(len(sess)), np.flatnonzero(carted), np.flatnonzero(bought)]
        )
        ets = np.concatenate([vts, cts[carted], bts[bought]])
        price = np.round(self.item_price[item] * s.price_scale, 2)
        device = np.where(mobile[sess], self.mobile_device[vuser], self.web_device[vuser])
        order = np.argsort(ets, kind="stable")
        r = rows[order]
        events = pa.table(
            {
                "ts": _ts(ets[order]),
                "event_id": 1 + self._next_ids(len(order)),
                "user_id": vuser[r] + 1,
                "session_id": session_id[sess[r]],
                "item_id": item[r] + 1,
                "event_type": np.array(["view", "cart", "purchase"])[kinds[order]],
                "category": np.array([c.name for c in CATEGORIES])[cat[r]],
                "price": price[r],
                "device_id": device[r],
            },
            schema=EVENTS.schema,
        )
        b = np.flatnonzero(bought)
        quantity = 1 + rng.geometric(0.7, len(b)) - 1
        legit = {
            "ts": bts[b],
            "user": vuser[b],
            "amount": np.round(price[b] * quantity, 2),
            "country": self.user_country[vuser[b]],
            "device": device[b],
            "category": cat[b],
            "new_device": rng.random(len(b)) < 0.02,
            "fraud": np.zeros(len(b), dtype=bool),
        }
        fraud = self._fraud(rng, lo, hi, len(b))
        pay = {k: np.concatenate([legit[k], fraud[k]]) for k in legit}
        return {EVENTS.name: events, **self._payments(rng, lo, pay)}

    def _session_starts(
        self, rng: np.random.Generator, lo: int, hi: int, n: int, daily_cycle: bool
    ) -> np.ndarray:
        if not daily_cycle:
            return rng.integers(lo, hi, n)
        # Draw a day, then an hour by the daily cycle (mixed with the night knob), then a time.
        hourly = (
            1 - self.shift_.night_share
        ) * HOURLY / HOURLY.sum() + self.shift_.night_share * NIGHT / NIGHT.sum()
        first_day = lo // DAY
        days = int(-(-(hi - first_day * DAY) // DAY))
        day = first_day + rng.integers(0, days, n)
        hour = rng.choice(24, n, p=hourly / hourly.sum())
        ts = day * DAY + hour * 3600 * US + rng.integers(0, 3600 * US, n)
        inside = (ts >= lo) & (ts < hi)
        missing = n - inside.sum()
        ts = ts[inside]
        if missing:  # redraw what fell outside a partial first or last day
            ts = np.concatenate([ts, self._session_starts(rng, lo, hi, missing, True)])
        return ts

    def _zipf_items(self, rng: np.random.Generator, cat: np.ndarray) -> np.ndarray:
        item = np.empty(len(cat), dtype=np.int64)
        for c, ranked in enumerate(self.item_rank_order):
            rows = np.flatnonzero(cat == c)
            if not len(rows):
                continue
            w = 1.0 / np.arange(1, len(ranked) + 1) ** self.shift_.popularity_exponent
            pick = np.searchsorted(np.cumsum(w / w.sum()), rng.random(len(rows)))
            item[rows] = ranked[np.minimum(pick, len(ranked) - 1)]
        return item

    def _fraud(self, rng: np.random.Generator, lo: int, hi: int, n_legit: int) -> dict:
        """Bursts on compromised cards: several payments within minutes, unusual amounts,
        new devices in foreign countries, mostly at night."""
        s = self.shift_
        target = rng.poisson(s.fraud_rate * n_legit / (1 - s.fraud_rate)) if n_legit else 0
        sizes = []
        while sum(sizes) < target:
            sizes.append(int(rng.integers(3, 9)))
        if sizes:
            sizes[-1] -= sum(sizes) - target
            sizes = [x for x in sizes if x > 0]
        k = len(sizes)
        size = np.array(sizes, dtype=np.int64)
        victim = rng.integers(0, self.n_users, k)
        night = rng.random(k) < 0.6
        day0 = lo // DAY + rng.integers(0, max(1, -(-(hi - lo) // DAY)), k)
        hour = np.where(night, rng.integers(0, 6, k), rng.integers(0, 24, k))
        begin = np.clip(day0 * DAY + hour * 3600 * US + rng.integers(0, 3600 * US, k), lo, hi - 1)
        burst = np.repeat(np.arange(k), size)
        gaps = rng.exponential(90 * US, len(burst)).astype(np.int64)
        first = np.r_[0, np.cumsum(size)[:-1]].astype(np.int64)
        if len(burst):
            gaps[first] = 0
        cum = np.cumsum(gaps)
        ts = np.minimum(begin[burst] + cum - (cum[first][burst] if len(burst) else 0), hi - 1)
        m = len(burst)
        round_amount = rng.random(m) < 0.4
        amount = (
            np.where(
                round_amount,
                rng.choice([100.0, 200.0, 250.0, 500.0, 1000.0], m),
                np.round(rng.lognormal(np.log(350), 0.6, m), 2),
            )
            * s.fraud_amount_scale
        )
        risky = [
            i
            for i, c in enumerate(CATEGORIES)
            if c.name in ("electronics", "games", "beauty", "fashion")
        ]
        return {
            "ts": ts,
            "user": victim[burst],
            "amount": np.round(amount, 2),
            "country": np.array(FOREIGN)[rng.integers(0, len(FOREIGN), m)],
            "device": np.array([f"x-{v:08x}" for v in rng.integers(0, 2**32, k)])[burst]
            if m
            else np.zeros(0, dtype=str),
            "category": np.array(risky)[rng.integers(0, len(risky), m)],
            "new_device": np.ones(m, dtype=bool),
            "fraud": np.ones(m, dtype=bool),
        }

    def _payments(self, rng: np.random.Generator, lo: int, pay: dict) -> dict[str, pa.Table]:
        order = np.argsort(pay["ts"], kind="stable")
        pay = {k: v[order] for k, v in pay.items()}
        m = len(order)
        payment_id = 1 + self._next_ids(m)
        payments = pa.table(
            {
                "ts": _ts(pay["ts"]),
                "payment_id": payment_id,
                "user_id": pay["user"] + 1,
                "card_id": (pay["user"] + 1) * 10 + 1,
                "amount": pay["amount"].astype(np.float64),
                "country": pay["country"].astype(str),
                "device_id": pay["device"].astype(str),
                "merchant_category": np.array([c.name for c in CATEGORIES])[
                    pay["category"].astype(np.int64)
                ]
                if m
                else np.zeros(0, dtype=str),
                "new_device": pay["new_device"].astype(bool),
            },
            schema=PAYMENTS.schema,
        )
        # Chargebacks come within hours; legitimate payments are confirmed after a day or two.
        delay = np.where(
            pay["fraud"],
            3600 * US + rng.exponential(DAY / 4, m),
            DAY + rng.exponential(DAY / 2, m),
        ).astype(np.int64)
        lorder = np.argsort(pay["ts"] + delay, kind="stable")
        labels = pa.table(
            {
                "ts": _ts((pay["ts"] + delay)[lorder]),
                "payment_id": payment_id[lorder],
                "user_id": pay["user"][lorder] + 1,
                "is_fraud": pay["fraud"][lorder].astype(bool),
            },
            schema=LABELS.schema,
        )
        return {PAYMENTS.name: payments, LABELS.name: labels}

    def _next_ids(self, n: int) -> np.ndarray:
        ids = self._ids + np.arange(n, dtype=np.int64)
        self._ids += n
        return ids


def _us(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp()) * US + t.microsecond


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64), pa.int64()).cast(
        pa.timestamp("us", tz="UTC")
    )


def _before(table: pa.Table, hi: int) -> pa.ChunkedArray:
    return pa.compute.less(table.column("ts").cast(pa.int64()), hi)
