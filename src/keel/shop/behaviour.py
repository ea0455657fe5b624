"""How the shop's users and fraudsters behave: the distribution knobs and the vectorized draws
of sessions, views, carts, purchases, payments, fraud bursts and their labels.

Every draw works on whole arrays; nothing here loops over sessions or events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from keel.errors import ValidationError, did_you_mean
from keel.shop.catalog import CATEGORIES, COUNTRIES, FOREIGN, PLATFORMS, Items, Users
from keel.shop.timeline import Frame, concat, select

__all__ = [
    "EVENTS_PER_SESSION",
    "EVENT_COLUMNS",
    "FRESH",
    "HOUR",
    "LABEL_COLUMNS",
    "PAYMENT_COLUMNS",
    "Behaviour",
    "Shift",
    "check_int",
    "check_number",
    "empty",
]

US = 1_000_000
HOUR = 3_600 * US
DAY = 24 * HOUR

VIEWS = 6.0  # mean views per session (geometric)
VIEW_GAP = 45 * US  # mean time between views (exponential)
STAY = 0.7  # share of a session's views in its focus category
CART_P, BUY_P = 0.08, 0.4  # a view is carted, a cart is bought
EVENTS_PER_SESSION = VIEWS * (1 + CART_P + CART_P * BUY_P)
PURCHASES_PER_SESSION = VIEWS * CART_P * BUY_P
TRAVEL, NEW_DEVICE = 0.03, 0.02  # legitimate payments from abroad, from a new device
POSE_SHARE = 0.15  # fraudulent payments made posing as the victim
ABROAD = 0.5  # fraud bursts paid from abroad
FRIENDLY = 0.001  # legitimate payments disputed by their own customer
BURST = 1.8  # mean payments per fraud burst (1 + Poisson)
MODEST = 0.4  # fraud bursts that keep to amounts like an ordinary basket's
BURST_GAP = 60 * US
POSE = 1.25  # mean payments per visit of a fraudster posing as the victim (1 or 2)
ROUND_AMOUNTS = np.array([100.0, 200.0, 250.0, 300.0, 500.0, 1000.0])
LOOKBACK = 20 * 60 * US  # a carted view is bought within this long, but for 1 in 15,000
FRESH = 1 << 40  # device codes from here on are new devices: platform << 32 | serial

# Relative session starts per hour of the day (UTC): quiet at night, busiest in the evening.
# fmt: off
HOURLY = np.array([0.25, 0.15, 0.10, 0.08, 0.08, 0.12, 0.30, 0.55, 0.75, 0.85, 0.90, 0.95,
                   1.00, 0.95, 0.90, 0.90, 0.95, 1.05, 1.25, 1.45, 1.55, 1.35, 0.95, 0.55])
# fmt: on
HOURLY = HOURLY / HOURLY.mean()
NIGHT = np.where(np.arange(24) < 6, 4.0, 0.0)  # midnight to 6 am, mean 1
FRAUD_HOURLY = 0.4 * HOURLY + 0.6 * NIGHT
# Fraudsters buy what resells: electronics, games (gift cards), fashion, beauty.
_RISKY = {"electronics": 4.0, "games": 3.0, "fashion": 1.5, "beauty": 1.0}
FRAUD_CATEGORY = np.array([_RISKY.get(c.name, 0.1) for c in CATEGORIES])
FRAUD_CATEGORY = FRAUD_CATEGORY / FRAUD_CATEGORY.sum()

I64, F64, B = np.int64, np.float64, np.bool_
EVENT_COLUMNS = dict(ts=I64, user=I64, session=I64, item=I64, kind=np.int8, category=I64,
                     price=F64, device=I64)  # fmt: skip
PAYMENT_COLUMNS = dict(ts=I64, payment=I64, user=I64, card=I64, amount=F64, country=I64,
                       device=I64, category=I64, new_device=B, fraud=B)  # fmt: skip
LABEL_COLUMNS = dict(ts=I64, payment=I64, user=I64, fraud=B, paid=I64)


@dataclass(frozen=True, slots=True)
class Shift:
    """The shop's distribution knobs; the defaults are the unshifted shop.

    Parameters
    ----------
    price_scale
        Multiplies every price seen and paid (the catalogue keeps its list prices).
    category_weights
        Category name to a weight multiplying every user's taste for it (absent: 1).
    popularity_exponent
        Zipf exponent of item popularity within a category (0: all items alike).
    fraud_rate
        Share of payments that are fraud (at most 0.5).
    night_share
        Share of sessions moved to the night hours (midnight to 6 am UTC).
    mobile_share
        Share of sessions on a phone, for users who have both a phone and a browser.
    fraud_amount_scale
        Multiplies the amounts of fraudulent payments.
    travel_share
        Share of legitimate payments made from abroad.
    new_device_share
        Share of legitimate payments made from a device the user never used before.
    fraud_takeover_share
        Share of fraud bursts paid from the victim's own phone or browser (taken over),
        not from a new device.
    buy_share
        Share of carted items that are bought (each paid separately, moments apart).
    fraud_browse_share
        Share of fraud bursts whose fraudster first browses, carts and buys in the victim's
        account, so the account looks active as a real shopper's does.
    fraud_pose_share
        Share of fraudulent payments made by fraudsters posing as the victim rather than in
        bursts: in an account that is in use, from the victim's own phone or browser, at home
        and at ordinary hours, they browse like the victim and buy one or two things the
        victim might have bought, paid one by one.
    fraud_abroad_share
        Share of fraud bursts paid from abroad (a foreign country, not the victim's home).
    friendly_fraud_share
        Share of legitimate payments that their own customer later disputes: the label says
        fraud though the payment looks like any other.
    untracked_share
        Share of sessions whose views, carts and purchases never reach the event stream
        (declined tracking consent, an ad blocker, or an outage such as an app release that
        stops sending them); their payments still do.

    Example
    -------
    >>> Shift(price_scale=1.5).fraud_rate
    0.01
    >>> Shift(category_weights={"book": 2.0})
    Traceback (most recent call last):
    ...
    keel.errors.ValidationError: shift category_weights: unknown category 'book' — did you mean 'books'?...
    """  # noqa: E501

    price_scale: float = 1.0
    category_weights: dict[str, float] | None = None
    popularity_exponent: float = 1.1
    fraud_rate: float = 0.01
    night_share: float = 0.0
    mobile_share: float = 0.6
    fraud_amount_scale: float = 1.0
    travel_share: float = TRAVEL
    new_device_share: float = NEW_DEVICE
    fraud_takeover_share: float = 0.3
    buy_share: float = BUY_P
    fraud_browse_share: float = 0.0
    fraud_pose_share: float = POSE_SHARE
    fraud_abroad_share: float = ABROAD
    friendly_fraud_share: float = FRIENDLY
    untracked_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("price_scale", "fraud_amount_scale"):
            check_number(f"shift {name}", getattr(self, name), low=0.0, low_open=True)
        check_number("shift popularity_exponent", self.popularity_exponent, low=0.0)
        check_number("shift fraud_rate", self.fraud_rate, low=0.0, high=0.5)
        shares = ("night_share", "mobile_share", "travel_share", "new_device_share")
        more = ("fraud_takeover_share", "buy_share", "fraud_browse_share", "fraud_pose_share")
        rest = ("fraud_abroad_share", "friendly_fraud_share", "untracked_share")
        for name in (*shares, *more, *rest):
            check_number(f"shift {name}", getattr(self, name), low=0.0, high=1.0)
        known = [c.name for c in CATEGORIES]
        weights = dict(self.category_weights or {})
        for cat, w in weights.items():
            if cat not in known:
                raise ValidationError(
                    f"shift category_weights: unknown category {cat!r}{did_you_mean(cat, known)}"
                    f" (categories: {', '.join(known)})"
                )
            check_number(f"shift category_weights[{cat!r}]", w, low=0.0)
        if all(weights.get(c, 1.0) == 0 for c in known):
            raise ValidationError("shift category_weights: at least one category needs weight > 0")


class Behaviour:
    """The draws of one shop under one :class:`Shift`, with the lookup tables they need.

    Two cumulative tables turn every categorical draw into one ``searchsorted``: user ``u``'s
    category taste spans ``(u, u + 1]`` of one flat array, and category ``c``'s Zipf-ranked
    items span ``(c, c + 1]`` of another, so ``searchsorted(table, u + r)`` draws for all rows.
    """

    def __init__(self, items: Items, users: Users, popularity: np.ndarray, shift: Shift) -> None:
        self.items, self.users, self.shift = items, users, shift
        self.profile = (1 - shift.night_share) * HOURLY + shift.night_share * NIGHT
        self.price = np.round(items.price * shift.price_scale, 2)
        given = shift.category_weights or {}
        weights = np.array([given.get(c.name, 1.0) for c in CATEGORIES])
        taste = np.cumsum((users.preference + 1e-9) * weights, axis=1)
        self._taste = (np.arange(len(taste))[:, None] + taste / taste[:, -1:]).ravel()
        # Items sorted by category, then by their popularity rank within it.
        self._ranked = popularity
        cat = items.category[popularity]
        block = np.searchsorted(cat, np.arange(len(CATEGORIES)))
        rank = np.arange(len(cat)) - block[cat]
        w = np.cumsum(1.0 / (rank + 1.0) ** shift.popularity_exponent)
        before = np.where(block > 0, w[np.maximum(block - 1, 0)], 0.0)
        last = np.r_[block[1:], len(cat)] - 1
        self._popular = cat + (w - before[cat]) / (w[last] - before)[cat]
        activity = np.cumsum(users.activity)
        self._activity = activity / activity[-1]

    def draw(
        self, rng: np.random.Generator, lo: int, hi: int, session_rate: float, daily: bool
    ) -> tuple[Frame, Frame, Frame, int]:
        """Sessions starting in [lo, hi) at ``session_rate`` per µs (shaped by the daily cycle
        if ``daily``) and the fraud bursts alongside: their events, payments and labels, and
        the number of sessions. Sessions and payments are numbered from 0, payments by time."""
        starts = arrivals(rng, lo, hi, session_rate, self.profile if daily else None)
        bursts, poses = self._fraud_rates(session_rate)
        begins = arrivals(rng, lo, hi, bursts, FRAUD_HOURLY if daily else None)
        posing = arrivals(rng, lo, hi, poses, self.profile if daily else None)
        return self._sessions(rng, starts, begins, posing)

    def under_way(
        self, rng: np.random.Generator, at: int, session_rate: float, daily: bool
    ) -> tuple[Frame, Frame, Frame, int]:
        """What sessions and fraud bursts already under way at ``at`` do from then on, so a
        cold start begins at full pace. Gaps are memoryless: a session under way makes its next
        view an exponential gap after ``at`` and goes on like a new one (bursts, nearly so).
        Views made before ``at`` stand in as one-view sessions that were carted, for the carts
        and purchases still to come."""
        hour = (at // HOUR) % 24
        level = self.profile[hour] if daily else 1.0
        earlier = rng.poisson(session_rate * level * VIEWS * CART_P * LOOKBACK)
        carted = np.sort(at - rng.integers(1, LOOKBACK + 1, earlier))
        running = rng.poisson(session_rate * level * (VIEWS - 1) * VIEW_GAP)
        starts = np.sort(at + rng.exponential(VIEW_GAP, running).astype(np.int64))
        bursts, poses = self._fraud_rates(session_rate)
        bursts *= FRAUD_HOURLY[hour] if daily else 1.0
        nb = rng.poisson(bursts * (BURST - 1) * BURST_GAP)
        begins = np.sort(at + rng.exponential(BURST_GAP, nb).astype(np.int64))
        # A posing fraudster's visit is a session: under way as sessions are.
        nv = rng.poisson(poses * level * (VIEWS - 1) * VIEW_GAP)
        posing = np.sort(at + rng.exponential(VIEW_GAP, nv).astype(np.int64))
        events, payments, labels, n = self._sessions(
            rng, np.r_[carted, starts], begins, posing, earlier
        )
        events = select(events, events["ts"] >= at)
        later = payments["ts"] >= at
        payments, labels = select(payments, later), select(labels, later)
        payments["payment"] = labels["payment"] = np.arange(later.sum(), dtype=np.int64)
        return events, payments, labels, n

    def _fraud_rates(self, session_rate: float) -> tuple[float, float]:
        """Fraud bursts, and visits of fraudsters posing as their victim, per µs."""
        f, pose = self.shift.fraud_rate, self.shift.fraud_pose_share
        paid = f / (1 - f) * session_rate * PURCHASES_PER_SESSION
        return paid * (1 - pose) / BURST, paid * pose / POSE

    def _sessions(
        self,
        rng: np.random.Generator,
        start: np.ndarray,
        begins: np.ndarray,
        posing: np.ndarray,
        carted_views: int = 0,
    ) -> tuple[Frame, Frame, Frame, int]:
        """Sessions from ``start`` (the first ``carted_views`` of them one carted view each),
        fraud bursts from ``begins`` and posing fraudsters' visits from ``posing``."""
        views = rng.geometric(1 / VIEWS, len(start))
        views[:carted_views] = 1
        n = len(views)
        user = _search(self._activity, rng.random(n), len(self.users.activity))
        events, bought = self._visits(rng, start, user, views, carted_views=carted_views)
        nb, buyer = len(bought["ts"]), bought["user"]
        abroad = rng.random(nb) < self.shift.travel_share
        new = rng.random(nb) < self.shift.new_device_share
        n_countries = len(COUNTRIES) + len(FOREIGN)
        legit = frame(
            PAYMENT_COLUMNS,
            ts=bought["ts"],
            payment=np.zeros(nb),
            user=buyer,
            card=_card(rng, self.users, buyer),
            amount=bought["amount"],
            country=np.where(abroad, rng.integers(0, n_countries, nb), self.users.country[buyer]),
            device=np.where(new, _fresh_devices(rng, nb, [0.4, 0.4, 0.2]), bought["device"]),
            category=bought["category"],
            new_device=new,
            fraud=np.zeros(nb, bool),
        )
        fraud, browsing = self._fraud(rng, begins)
        posed, visits = self._posing(rng, posing)
        payments = concat([legit, fraud, posed])
        payments = select(payments, np.argsort(payments["ts"], kind="stable"))
        payments["payment"] = np.arange(len(payments["ts"]), dtype=np.int64)
        labels = _labels(rng, payments, self.shift.friendly_fraud_share)
        # Posing fraudsters use the victim's own app or browser, tracked as the victim is.
        visits["session"] += n
        events = concat([events, visits])
        n += len(posing)
        if self.shift.untracked_share > 0:  # drawn last: the other draws stay as they were
            lost = rng.random(n) < self.shift.untracked_share
            events = select(events, ~lost[events["session"]])
        if browsing is not None:
            browsing["session"] += n
            events = concat([events, browsing])
            n += len(np.unique(browsing["session"]))
        return events, payments, labels, n

    def _visits(
        self,
        rng: np.random.Generator,
        start: np.ndarray,
        user: np.ndarray,
        views: np.ndarray,
        *,
        carted_views: int = 0,
        buys: np.ndarray | None = None,
        focus: np.ndarray | None = None,
    ) -> tuple[Frame, Frame]:
        """Sessions of ``user`` from ``start`` with ``views`` views each: their events, and
        what they bought, one row each (``ts`` when it is paid, ``user``, ``amount``,
        ``device``, ``category``). Views are carted and carts bought at random, but for the
        first ``carted_views`` sessions, whose view is carted; with ``buys``, the last
        ``buys`` views of each session are carted and bought, and nothing else is. Each
        session keeps mostly to its ``focus`` category, by default one the user likes."""
        us = self.users
        n = len(views)
        # Views: several per session, spaced by exponential gaps.
        sess = np.repeat(np.arange(n), views)
        first = np.cumsum(views) - views
        gaps = rng.exponential(VIEW_GAP, len(sess)).astype(np.int64)
        gaps[first] = 0
        offset = np.cumsum(gaps)
        vts = start[sess] + offset - offset[first][sess]
        m = len(sess)
        want_phone = rng.random(n) < self.shift.mobile_share
        phone = (want_phone & (us.mobile[user] >= 0)) | (us.web[user] < 0)
        device = np.where(phone, us.mobile[user], us.web[user])
        # Each session has a focus category drawn from the user's taste; most views stay in it.
        vuser = user[sess]
        liked = self._category(user, rng.random(n))
        focus = (liked if focus is None else focus)[sess]
        cat = np.where(rng.random(m) < STAY, focus, self._category(vuser, rng.random(m)))
        item = self._ranked[_search(self._popular, cat + rng.random(m), len(self._ranked))]
        # Some views are carted, some carts bought; each purchase is paid a moment later.
        carted = rng.random(m) < CART_P
        carted[:carted_views] = True
        if buys is None:
            bought = carted & (rng.random(m) < self.shift.buy_share)
        else:
            bought = (first + views)[sess] - np.arange(m) <= buys[sess]
            carted |= bought
        cts = vts + 1 + rng.exponential(30 * US, m).astype(np.int64)
        bts = cts + 1 + rng.exponential(120 * US, m).astype(np.int64)
        rows = np.concatenate([np.arange(m), np.flatnonzero(carted), np.flatnonzero(bought)])
        vdevice = device[sess]
        events = frame(
            EVENT_COLUMNS,
            ts=np.concatenate([vts, cts[carted], bts[bought]]),
            user=vuser[rows],
            session=sess[rows],
            item=item[rows],
            kind=np.repeat(np.arange(3), [m, carted.sum(), bought.sum()]),
            category=cat[rows],
            price=self.price[item[rows]],
            device=vdevice[rows],
        )
        b = np.flatnonzero(bought)
        purchases = {
            "ts": bts[b] + 1 + rng.exponential(5 * US, len(b)).astype(np.int64),
            "user": vuser[b],
            "amount": np.round(self.price[item[b]] * rng.geometric(0.8, len(b)), 2),
            "device": vdevice[b],
            "category": cat[b],
        }
        return events, purchases

    def _posing(self, rng: np.random.Generator, start: np.ndarray) -> tuple[Frame, Frame]:
        """Fraudsters posing as their victims, a visit from each of ``start``: a session like
        the victim's own (their phone or browser, their categories, a few views) whose last
        one or two views are carted and bought, paid at home as the victim pays, but fraud.
        Their payments, and their events (one session each, numbered from 0)."""
        k, us = len(start), self.users
        # Accounts in use are the ones whose logins leak, and whose habits are worth copying.
        victim = _search(self._activity, rng.random(k), len(us.activity))
        buys = 1 + (rng.random(k) < POSE - 1)
        views = buys + rng.geometric(1 / VIEWS, k) - 1
        # Half of them cannot help going for what resells, in the victim's style otherwise.
        resells = rng.random(k) < 0.5
        loot = rng.choice(len(CATEGORIES), k, p=FRAUD_CATEGORY)
        focus = np.where(resells, loot, self._category(victim, rng.random(k)))
        events, bought = self._visits(rng, start, victim, views, buys=buys, focus=focus)
        m, who = len(bought["ts"]), bought["user"]
        payments = frame(
            PAYMENT_COLUMNS,
            ts=bought["ts"],
            payment=np.zeros(m),
            user=who,
            card=_card(rng, us, victim)[np.repeat(np.arange(k), buys)],
            amount=np.round(bought["amount"] * self.shift.fraud_amount_scale, 2),
            country=us.country[who],
            device=bought["device"],
            category=bought["category"],
            new_device=np.zeros(m, bool),
            fraud=np.ones(m, bool),
        )
        return payments, events

    def _category(self, user: np.ndarray, r: np.ndarray) -> np.ndarray:
        picked = _search(self._taste, user + r, len(self._taste))
        return np.clip(picked - user * len(CATEGORIES), 0, len(CATEGORIES) - 1)

    def _fraud(self, rng: np.random.Generator, begin: np.ndarray) -> tuple[Frame, Frame | None]:
        """Bursts on compromised cards: one payment or a few minutes apart, often a small
        test charge first, then round or high amounts, mostly from a new device, some from
        abroad; and the events of fraudsters who browse the victim's account first (when any
        do). Victims are drawn as shoppers are: the cards that get stolen are those in use."""
        us = self.users
        nb = len(begin)
        size = 1 + rng.poisson(BURST - 1, nb)
        burst = np.repeat(np.arange(nb), size)
        m = len(burst)
        first = np.cumsum(size) - size
        gaps = rng.exponential(BURST_GAP, m).astype(np.int64)
        gaps[first] = 0
        offset = np.cumsum(gaps)
        victim = _search(self._activity, rng.random(nb), len(us.activity))
        # Some take over the victim's own phone or browser; most pay from a device never seen.
        takeover = rng.random(nb) < self.shift.fraud_takeover_share
        device = np.where(takeover, victim, _fresh_devices(rng, nb, [0.2, 0.4, 0.4]))
        abroad = rng.random(nb) < self.shift.fraud_abroad_share
        home = us.country[victim]
        country = np.where(abroad, len(COUNTRIES) + rng.integers(0, len(FOREIGN), nb), home)
        amount = np.where(
            rng.random(m) < 0.3,
            rng.choice(ROUND_AMOUNTS, m),
            rng.lognormal(np.log(150.0), 0.9, m),
        )
        # Careful ones stay under the radar with amounts like an ordinary basket's.
        careful = (rng.random(nb) < MODEST)[burst]
        amount = np.where(careful, rng.lognormal(np.log(40.0), 0.8, m), amount)
        test = np.zeros(m, bool)
        test[first] = (size > 1) & (rng.random(nb) < 0.5)
        amount = np.where(test, rng.uniform(1.0, 5.0, m), amount)
        payments = frame(
            PAYMENT_COLUMNS,
            ts=begin[burst] + offset - offset[first][burst],
            payment=np.zeros(m),
            user=victim[burst],
            card=_card(rng, us, victim)[burst],
            amount=np.round(amount * self.shift.fraud_amount_scale, 2),
            country=country[burst],
            device=device[burst],
            category=rng.choice(len(CATEGORIES), m, p=FRAUD_CATEGORY),
            new_device=~takeover[burst],
            fraud=np.ones(m, bool),
        )
        return payments, self._browsing(rng, begin, victim)

    def _browsing(
        self, rng: np.random.Generator, begin: np.ndarray, victim: np.ndarray
    ) -> Frame | None:
        """A few views, a cart and a purchase in the victim's account, from its own
        (hijacked) session, in the minutes before the bursts that ``fraud_browse_share`` picks
        (one session each, numbered from 0)."""
        share = self.shift.fraud_browse_share
        if share <= 0 or not len(begin):
            return None  # draws nothing: the shop's other draws stay as they were
        picked = np.flatnonzero(rng.random(len(begin)) < share)
        k, us, who = len(picked), self.users, victim[picked]
        per = 5  # three views, then the last one viewed is carted and bought
        sess = np.repeat(np.arange(k), per)
        before = rng.exponential(120 * US, (k, per)).astype(np.int64)
        before = np.cumsum(before[:, ::-1], axis=1)[:, ::-1] + 1  # the purchase comes last
        cat = rng.choice(len(CATEGORIES), (k, per), p=FRAUD_CATEGORY)
        cat[:, 3:] = cat[:, 2:3]
        cat = cat.ravel()
        item = self._ranked[_search(self._popular, cat + rng.random(k * per), len(self._ranked))]
        item = item.reshape(k, per)
        item[:, 3:] = item[:, 2:3]
        item = item.ravel()
        return frame(
            EVENT_COLUMNS,
            ts=(begin[picked][:, None] - before).ravel(),
            user=who[sess],
            session=sess,
            item=item,
            kind=np.tile(np.array([0, 0, 0, 1, 2], dtype=np.int8), k),
            category=cat,
            price=self.price[item],
            device=np.where(us.mobile[who] >= 0, us.mobile[who], us.web[who])[sess],
        )


def _labels(rng: np.random.Generator, payments: Frame, friendly: float) -> Frame:
    # Chargebacks are known within hours; legitimate payments settle after a day or more.
    n, fraud = len(payments["ts"]), payments["fraud"]
    if friendly > 0:  # drawn only then: without disputes the other draws stay as they were
        fraud = fraud | (rng.random(n) < friendly)
    delay = np.where(fraud, HOUR + rng.exponential(10 * HOUR, n), DAY + rng.exponential(DAY, n))
    return frame(
        LABEL_COLUMNS,
        ts=payments["ts"] + delay.astype(np.int64),
        payment=payments["payment"],
        user=payments["user"],
        fraud=fraud,
        paid=payments["ts"],
    )


def arrivals(
    rng: np.random.Generator, lo: int, hi: int, rate: float, profile: np.ndarray | None
) -> np.ndarray:
    """Sorted times of a Poisson process of ``rate`` per µs on [lo, hi), shaped by an hourly
    ``profile`` of mean 1 (by thinning: draw at the peak rate, keep at the hour's)."""
    peak = 1.0 if profile is None else float(profile.max())
    n = rng.poisson(rate * peak * max(hi - lo, 0))
    ts = rng.integers(lo, hi, n) if n else np.zeros(0, np.int64)
    if profile is not None:
        ts = ts[rng.random(n) * peak < profile[(ts // HOUR) % 24]]
    return np.sort(ts)


def _search(cdf: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, x, side="right"), size - 1)


def _card(rng: np.random.Generator, users: Users, user: np.ndarray) -> np.ndarray:
    return users.first_card[user] + (rng.random(len(user)) * users.n_cards[user]).astype(I64)


def _fresh_devices(rng: np.random.Generator, n: int, platform_p: list[float]) -> np.ndarray:
    platform = rng.choice(len(PLATFORMS), n, p=platform_p).astype(np.int64)
    return FRESH + (platform << 32) + rng.integers(0, 2**32, n)


def frame(dtypes: dict[str, Any], **columns: Any) -> Frame:
    return {name: np.asarray(columns[name]).astype(dt, copy=False) for name, dt in dtypes.items()}


def empty(dtypes: dict[str, Any]) -> Frame:
    return {name: np.zeros(0, dt) for name, dt in dtypes.items()}


def check_number(
    name: str, value: Any, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False
) -> None:
    """Raise :class:`ValidationError` naming ``name`` unless ``value`` is a finite number in
    the range (``low`` excluded if ``low_open``)."""
    real = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    above = real and math.isfinite(value) and (value > low if low_open else value >= low)
    if above and value <= high:
        return
    if high == math.inf:
        bounds = f"{'>' if low_open else '>='} {low:g}"
    else:
        bounds = f"in [{low:g}, {high:g}]"
    raise ValidationError(f"{name} must be a finite number {bounds}, got {value!r}")


def check_int(name: str, value: Any, low: int, why: str = "") -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        reason = f" ({why})" if why else ""
        raise ValidationError(f"{name} must be an integer >= {low}{reason}, got {value!r}")
