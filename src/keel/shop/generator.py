"""A seeded, reproducible web shop: sessions of views, carts and purchases, payments with
bursts of card fraud, and fraud labels that arrive later.

Everything is drawn with NumPy over whole arrays (see :mod:`keel.shop.behaviour`), so a
million events take about a second. Rows that fall after the window asked for (a session still
running, a label not yet known) wait in a :class:`~keel.shop.timeline.Timeline` for the next
call, so consecutive calls join without a seam.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.errors import ValidationError, did_you_mean
from keel.shop.behaviour import (
    EVENT_COLUMNS,
    EVENTS_PER_SESSION,
    FRESH,
    HOUR,
    LABEL_COLUMNS,
    PAYMENT_COLUMNS,
    Behaviour,
    Shift,
    check_int,
    check_number,
    empty,
)
from keel.shop.catalog import (
    CATEGORIES,
    COUNTRIES,
    FOREIGN,
    Items,
    build_items,
    build_users,
    concat_items,
    fresh_device_names,
    launch_items,
)
from keel.shop.timeline import Frame, Timeline
from keel.shop.topics import EVENTS, ITEMS, LABELS, PAYMENTS, USERS

__all__ = ["DEFAULT_START", "Shift", "Shop"]

DEFAULT_START = datetime(2026, 11, 1, tzinfo=UTC)
US = 1_000_000
DAY = 24 * HOUR
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KINDS = pa.array(["view", "cart", "purchase"])
_CATEGORY_NAMES = pa.array([c.name for c in CATEGORIES])
_COUNTRY_NAMES = pa.array([c for c, _ in COUNTRIES] + list(FOREIGN))
_PLACES = ("top", "bottom")  # where launched items enter their category's popularity ranking


class Shop:
    """A reproducible shop of ``n_users`` users and ``n_items`` items whose time starts at
    ``start``; the same seed and arguments give the same tables.

    Each call to :meth:`history` or :meth:`stream` continues where the last one ended;
    :meth:`launch` adds items to the catalogue on the way.

    Parameters
    ----------
    seed
        Seeds the catalogue, the users and every draw after.
    n_users, n_items
        How many users (at least 1) and items (at least one per category, 12).
    start
        When the shop's history begins (naive datetimes are UTC).
    sessions_per_user_day
        Mean browsing sessions per user and day in :meth:`history`.
    shift
        The distribution knobs (see :class:`Shift`); kept as :attr:`knobs`.

    Example
    -------
    >>> shop = Shop(seed=1, n_users=100, n_items=50)
    >>> sorted(shop.catalog())
    ['shop.items', 'shop.users']
    >>> day = shop.history(days=1)
    >>> sorted(day)
    ['shop.events', 'shop.fraud_labels', 'shop.payments']
    >>> day["shop.events"].equals(Shop(seed=1, n_users=100, n_items=50).history(1)["shop.events"])
    True
    """

    def __init__(
        self,
        *,
        seed: int = 7,
        n_users: int = 5_000,
        n_items: int = 2_000,
        start: datetime = DEFAULT_START,
        sessions_per_user_day: float = 1.0,
        shift: Shift | None = None,
    ) -> None:
        check_int("seed", seed, 0)
        check_int("n_users", n_users, 1)
        check_int("n_items", n_items, len(CATEGORIES), "one item per category")
        check_number("sessions_per_user_day", sessions_per_user_day, low=0.0, low_open=True)
        if shift is not None and not isinstance(shift, Shift):
            raise ValidationError(
                f"shift must be a Shift, e.g. Shift(fraud_rate=0.05), not {type(shift).__name__}"
            )
        self.seed = seed
        self.n_users = n_users
        self.n_items = n_items
        self.start = start
        self.sessions_per_user_day = sessions_per_user_day
        self.knobs = shift if shift is not None else Shift()
        start_us = _micros(start, "start")
        self._items = build_items(_rng(seed, 1), int(n_items), start_us)
        self._users = build_users(_rng(seed, 2), int(n_users), start_us)
        self._device_names = pa.array(self._users.devices)
        # Items by category, then by a random popularity rank within it.
        rank = _rng(seed, 3).permutation(int(n_items))
        self._popularity = np.lexsort((rank, self._items.category))
        self._behaviour = Behaviour(self._items, self._users, self._popularity, self.knobs)
        self._clock = start_us  # where the next history() or stream() begins by default
        # The end, pace and kind of the last window drawn: a window that continues it needs
        # no warm-up, the sessions under way are pending already.
        self._drawn_to: tuple[int, float, bool] | None = None
        self._next = {"event": 1, "session": 1, "payment": 1}
        self._pending: dict[str, Timeline] = {}
        self.drop_pending()

    def __repr__(self) -> str:
        return (
            f"Shop(seed={self.seed}, n_users={self.n_users}, n_items={self.n_items}, "
            f"start={self.start!r}, shift={self.knobs!r})"
        )

    # -- the world ----------------------------------------------------------------------
    def catalog(self) -> dict[str, pa.Table]:
        """The items, with texts and list prices, and the users, each stamped at creation.

        Example
        -------
        >>> items = Shop(seed=1, n_users=10, n_items=20).catalog()["shop.items"]
        >>> items.num_rows, items.column_names[:3]
        (20, ['ts', 'item_id', 'category'])
        """
        us = self._users
        users = pa.Table.from_arrays(
            [
                _ts(us.signup),
                pa.array(np.arange(1, self.n_users + 1, dtype=np.int64)),
                pc.take(_COUNTRY_NAMES, us.country),
                self._device_names.slice(0, self.n_users),
            ],
            schema=USERS.schema,
        )
        return {ITEMS.name: _items_table(self._items, first_id=1), USERS.name: users}

    def launch(self, n: int, category: str, *, popularity: str = "top") -> dict[str, pa.Table]:
        """Add ``n`` new items of ``category`` to the catalogue, listed at :attr:`now`, with
        ids after the last item's; what the shop draws from then on includes them.

        With ``popularity="top"`` they lead their category's popularity ranking, so users
        browsing it see them most; with ``"bottom"`` they trail it. Sessions already under way
        keep what they drew. Forks made before the launch keep the old catalogue.

        Returns the new items alone, as ``{"shop.items": table}``, to append to the log.

        Example
        -------
        >>> shop = Shop(seed=1, n_users=100, n_items=50)
        >>> _ = shop.history(days=1)
        >>> new = shop.launch(3, "games")["shop.items"]
        >>> new["item_id"].to_pylist(), set(new["category"].to_pylist())
        ([51, 52, 53], {'games'})
        >>> new["ts"][0].as_py() == shop.now, shop.catalog()["shop.items"].num_rows
        (True, 53)
        >>> shop.launch(2, "game")
        Traceback (most recent call last):
        ...
        keel.errors.ValidationError: launch: unknown category 'game' — did you mean 'games'?...
        """
        check_int("launch n", n, 1)
        known = [c.name for c in CATEGORIES]
        if not isinstance(category, str) or category not in known:
            hint = did_you_mean(category, known) if isinstance(category, str) else ""
            raise ValidationError(
                f"launch: unknown category {category!r}{hint} (categories: {', '.join(known)})"
            )
        if not isinstance(popularity, str) or popularity not in _PLACES:
            hint = did_you_mean(popularity, _PLACES) if isinstance(popularity, str) else ""
            raise ValidationError(
                f"launch: popularity must be 'top' or 'bottom', got {popularity!r}{hint}"
            )
        cat = known.index(category)
        # Seeded by the catalogue's size too, so two launches at one clock draw apart.
        rng = _rng(self.seed, 7, self._clock, self.n_items)
        new = launch_items(rng, int(n), cat, self._clock)
        first = self.n_items + 1
        # New arrays throughout: forks made earlier share the old ones and keep using them.
        ranked = self._items.category[self._popularity]
        at = np.searchsorted(ranked, cat, side="left" if popularity == "top" else "right")
        ids = np.arange(self.n_items, self.n_items + int(n), dtype=self._popularity.dtype)
        self._popularity = np.insert(self._popularity, at, ids)
        self._items = concat_items(self._items, new)
        self.n_items += int(n)
        self._behaviour = Behaviour(self._items, self._users, self._popularity, self.knobs)
        return {ITEMS.name: _items_table(new, first_id=first)}

    def skip_to(self, when: datetime) -> None:
        """Move the clock forward to ``when`` without drawing what happens before it, as
        after a gap in the data: what was pending is dropped (see :meth:`drop_pending`).

        Example
        -------
        >>> shop = Shop(seed=1, n_users=10, n_items=20)
        >>> shop.skip_to(shop.now + timedelta(days=2))
        >>> str(shop.now.date())
        '2026-11-03'
        """
        to = _micros(when, "when")
        if to < self._clock:
            raise ValidationError(
                f"skip_to: {when.isoformat()} is before the shop's clock ({self.now.isoformat()})"
            )
        self._clock = to
        self.drop_pending()

    def drop_pending(self) -> None:
        """Forget what was drawn but not handed out yet (sessions and fraud bursts under way,
        labels not known yet), keeping the catalogue, the users, the clock and the id
        counters: the next call starts cold at its own pace, as after a gap in the data.

        A burst at a much faster pace leaves its sessions under way; this keeps them from
        pouring into a slower stream that follows.

        Example
        -------
        >>> shop = Shop(seed=1, n_users=100, n_items=50)
        >>> _ = shop.history(days=1)
        >>> shop.drop_pending()
        >>> list(shop.stream(rate=0.05, tick_s=1.0, duration_s=1))[0]["shop.fraud_labels"].num_rows
        0
        """
        self._drawn_to = None
        self._pending = {
            "events": Timeline(empty(EVENT_COLUMNS)),
            "payments": Timeline(empty(PAYMENT_COLUMNS)),
            "labels": Timeline(empty(LABEL_COLUMNS)),
        }

    @property
    def now(self) -> datetime:
        """Where the shop's clock stands: the end of the last history or stream."""
        return EPOCH + timedelta(microseconds=self._clock)

    def shift(self, **changes: Any) -> Shop:
        """A fork of this shop with some knobs of :class:`Shift` changed.

        The fork keeps the catalogue, the users, the clock and the id counters, so what it
        generates next continues this shop's timeline under the new distributions.

        Example
        -------
        >>> shop = Shop(seed=1, n_users=10, n_items=20)
        >>> shop.shift(price_scale=1.5).knobs.price_scale
        1.5
        >>> shop.shift(fraud_rat=0.1)
        Traceback (most recent call last):
        ...
        keel.errors.ValidationError: unknown shift knob 'fraud_rat' — did you mean 'fraud_rate'?...
        """
        known = [f.name for f in dataclasses.fields(Shift)]
        for name in changes:
            if name not in known:
                raise ValidationError(
                    f"unknown shift knob {name!r}{did_you_mean(name, known)} "
                    f"(knobs: {', '.join(known)})"
                )
        fork = copy.copy(self)
        fork.knobs = dataclasses.replace(self.knobs, **changes)
        fork._next = dict(self._next)
        fork._pending = {name: t.copy() for name, t in self._pending.items()}
        fork._behaviour = Behaviour(self._items, self._users, self._popularity, fork.knobs)
        return fork

    # -- time ---------------------------------------------------------------------------
    def history(self, days: float = 7.0) -> dict[str, pa.Table]:
        """``days`` of events and payments from where the shop's clock stands (``start`` at
        first), each sorted by time, with the fraud labels of those payments.

        Labels carry the time they become known, hours to days after their payment, so some
        lie after the window.

        Example
        -------
        >>> shop = Shop(seed=1, n_users=200, n_items=50)
        >>> day = shop.history(days=1)
        >>> day["shop.payments"].num_rows == day["shop.fraud_labels"].num_rows > 0
        True
        >>> str(day["shop.events"]["ts"][0].as_py().date())
        '2026-11-01'
        """
        check_number("days", days, low=0.0, low_open=True)
        lo = self._clock
        hi = lo + max(round(days * DAY), 1)
        rate = self.n_users * self.sessions_per_user_day / DAY
        return self._advance(lo, hi, rate, history=True)

    def stream(
        self,
        rate: float = 2_000.0,
        *,
        start: datetime | None = None,
        realtime: bool = False,
        tick_s: float = 1.0,
        duration_s: float | None = None,
    ) -> Iterator[dict[str, pa.Table]]:
        """Yield one dict of tables per tick of ``tick_s`` seconds, with about
        ``rate * tick_s`` shop events each and the payments and labels that fall due.

        Time runs on from ``start``, by default the end of the last :meth:`history` or stream
        (``start`` of the shop at first), or, with ``realtime``, now. With ``realtime`` each
        tick is held back until the wall clock has passed it. Ends after ``duration_s``
        seconds of shop time; ``None`` runs forever.

        Example
        -------
        >>> shop = Shop(seed=1, n_users=100, n_items=50)
        >>> ticks = list(shop.stream(rate=500, tick_s=1.0, duration_s=3))
        >>> len(ticks), 300 < ticks[-1]["shop.events"].num_rows < 700
        (3, True)
        """
        check_number("rate", rate, low=0.0, low_open=True)
        check_number("tick_s", tick_s, low=1e-6)
        if duration_s is not None:
            check_number("duration_s", duration_s, low=0.0, low_open=True)
        if start is not None:
            begin = _micros(start, "start")
        elif realtime:
            begin = _micros(datetime.now(UTC), "now")
        else:
            begin = self._clock
        ticks = None if duration_s is None else max(round(duration_s / tick_s), 1)
        return self._ticks(begin, rate / EVENTS_PER_SESSION / US, tick_s, ticks, realtime)

    def _ticks(
        self, begin: int, session_rate: float, tick_s: float, ticks: int | None, realtime: bool
    ) -> Iterator[dict[str, pa.Table]]:
        step = round(tick_s * US)
        wall = time.monotonic()
        i = 0
        while ticks is None or i < ticks:
            lo = begin + i * step
            out = self._advance(lo, lo + step, session_rate, history=False)
            i += 1
            if realtime:
                time.sleep(max(0.0, wall + i * tick_s - time.monotonic()))
            yield out

    def _advance(
        self, lo: int, hi: int, session_rate: float, *, history: bool
    ) -> dict[str, pa.Table]:
        """Draw the sessions and fraud bursts starting in [lo, hi), then hand out what is due:
        events and payments before ``hi``; labels before ``hi`` in a stream, and in a history
        those of every payment handed out, known or not yet."""
        behaviour = self._behaviour
        if self._drawn_to != (lo, session_rate, history):
            # A cold start, or a change of pace: add the sessions already under way at lo.
            self._add(behaviour.under_way(_rng(self.seed, 4, lo), lo, session_rate, history))
        rng = _rng(self.seed, 5 + history, lo, hi)
        self._add(behaviour.draw(rng, lo, hi, session_rate, history))
        self._drawn_to = (hi, session_rate, history)
        self._clock = hi
        pending = self._pending
        if history:
            labels = pending["labels"].pop_where(lambda f: f["paid"] < hi)
        else:
            labels = pending["labels"].pop_before(hi)
        return {
            EVENTS.name: self._events_table(pending["events"].pop_before(hi)),
            PAYMENTS.name: self._payments_table(pending["payments"].pop_before(hi)),
            LABELS.name: _labels_table(labels),
        }

    def _add(self, drawn: tuple[Frame, Frame, Frame, int]) -> None:
        """Number the sessions and payments drawn on from earlier draws and keep them pending."""
        events, payments, labels, n = drawn
        events["session"] += self._next["session"]
        self._next["session"] += n
        payments["payment"] += self._next["payment"]
        labels["payment"] += self._next["payment"]
        self._next["payment"] += len(payments["ts"])
        self._pending["events"].add(events)
        self._pending["payments"].add(payments)
        self._pending["labels"].add(labels)

    def _take(self, counter: str, n: int) -> np.ndarray:
        ids = self._next[counter] + np.arange(n, dtype=np.int64)
        self._next[counter] += n
        return ids

    # -- tables -------------------------------------------------------------------------
    def _events_table(self, f: Frame) -> pa.Table:
        return pa.Table.from_arrays(
            [
                _ts(f["ts"]),
                pa.array(self._take("event", len(f["ts"]))),
                pa.array(f["user"] + 1),
                pa.array(f["session"]),
                pa.array(f["item"] + 1),
                pc.take(_KINDS, f["kind"]),
                pc.take(_CATEGORY_NAMES, f["category"]),
                pa.array(f["price"]),
                pc.take(self._device_names, f["device"]),
            ],
            schema=EVENTS.schema,
        )

    def _payments_table(self, f: Frame) -> pa.Table:
        code = f["device"]
        fresh = code >= FRESH
        serial = (code - FRESH) & 0xFFFFFFFF
        names = np.where(
            fresh,
            fresh_device_names(np.where(fresh, (code - FRESH) >> 32, 0), serial),
            self._users.devices[np.where(fresh, 0, code)],
        )
        return pa.Table.from_arrays(
            [
                _ts(f["ts"]),
                pa.array(f["payment"]),
                pa.array(f["user"] + 1),
                pa.array(f["card"]),
                pa.array(f["amount"]),
                pc.take(_COUNTRY_NAMES, f["country"]),
                pa.array(names, pa.string()),
                pc.take(_CATEGORY_NAMES, f["category"]),
                pa.array(f["new_device"]),
            ],
            schema=PAYMENTS.schema,
        )


def _items_table(items: Items, *, first_id: int) -> pa.Table:
    return pa.Table.from_arrays(
        [
            _ts(items.listed),
            pa.array(first_id + np.arange(len(items.listed), dtype=np.int64)),
            pc.take(_CATEGORY_NAMES, items.category),
            pa.array(items.title),
            pa.array(items.description),
            pa.array(items.price),
        ],
        schema=ITEMS.schema,
    )


def _labels_table(f: Frame) -> pa.Table:
    return pa.Table.from_arrays(
        [_ts(f["ts"]), pa.array(f["payment"]), pa.array(f["user"] + 1), pa.array(f["fraud"])],
        schema=LABELS.schema,
    )


def _rng(seed: int, purpose: int, *at: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, *(t % 2**64 for t in at)])


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def _micros(when: Any, name: str) -> int:
    if not isinstance(when, datetime):
        raise ValidationError(f"{name} must be a datetime, got {type(when).__name__}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - EPOCH) // timedelta(microseconds=1)
