from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from keel.errors import ValidationError
from keel.shop import EVENTS, ITEMS, Shift, Shop
from keel.shop.catalog import CATEGORIES

START = datetime(2026, 11, 1, tzinfo=UTC)
N_ITEMS = 200


def small_shop(seed: int = 3, shift: Shift | None = None) -> Shop:
    return Shop(seed=seed, n_users=500, n_items=N_ITEMS, start=START, shift=shift)


def micros(column: pa.ChunkedArray) -> np.ndarray:
    return column.cast(pa.int64()).to_numpy()


def at(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000


def launched(events: pa.Table, first_id: int = N_ITEMS + 1) -> pa.Table:
    return events.filter(pc.greater_equal(events["item_id"], first_id))


def views_of(events: pa.Table, category: str) -> pa.Table:
    kind, cat = events["event_type"], events["category"]
    return events.filter(pc.and_(pc.equal(kind, "view"), pc.equal(cat, category)))


def zipf_share(n_new: int, n_in_category: int, place: str, exponent: float = 1.1) -> float:
    weights = 1.0 / np.arange(1, n_in_category + 1) ** exponent
    new = weights[:n_new] if place == "top" else weights[-n_new:]
    return float(new.sum() / weights.sum())


def test_new_items_continue_the_ids_and_join_the_catalog() -> None:
    shop = small_shop()
    before = shop.catalog()[ITEMS.name]
    shop.history(days=1)
    new = shop.launch(4, "books")[ITEMS.name]
    assert new.schema == ITEMS.schema
    assert new["item_id"].to_pylist() == [201, 202, 203, 204]
    assert set(new["category"].to_pylist()) == {"books"}
    assert set(micros(new["ts"])) == {at(shop.now)}
    books = next(c for c in CATEGORIES if c.name == "books")
    assert all(t.split()[0] in books.brands for t in new["title"].to_pylist())
    assert all(any(n in d for n in books.nouns) for d in new["description"].to_pylist())
    prices = new["price"].to_numpy()
    assert (prices > 0).all() and np.allclose(np.round(prices % 1, 2), 0.99)
    assert shop.n_items == N_ITEMS + 4
    after = shop.catalog()[ITEMS.name]
    assert after.slice(0, N_ITEMS).equals(before)
    assert after.slice(N_ITEMS).equals(new)
    more = shop.launch(2, "pets", popularity="bottom")[ITEMS.name]
    assert more["item_id"].to_pylist() == [205, 206]
    assert shop.catalog()[ITEMS.name].num_rows == N_ITEMS + 6


def test_new_items_appear_in_later_events_and_not_before() -> None:
    shop = small_shop()
    before = shop.history(days=1)[EVENTS.name]
    launch_us = at(shop.now)
    new = shop.launch(5, "games")[ITEMS.name]
    after = shop.history(days=1)[EVENTS.name]
    assert launched(before).num_rows == 0
    seen = launched(after)
    assert seen.num_rows > 0
    assert (micros(seen["ts"]) >= launch_us).all()
    assert set(seen["category"].to_pylist()) == {"games"}
    assert set(seen["event_type"].to_pylist()) >= {"view", "cart"}
    # Their events carry their list prices (the shop's price_scale is 1).
    priced = seen.join(new.select(["item_id", "price"]), "item_id", right_suffix="_listed")
    assert priced["price"].equals(priced["price_listed"])
    # Streams draw from the new catalogue too.
    ticks = list(shop.stream(rate=5.0, tick_s=60.0, duration_s=3_600))
    streamed = pa.concat_tables(tick[EVENTS.name] for tick in ticks)
    assert launched(streamed).num_rows > 0


def test_sessions_under_way_keep_what_they_drew() -> None:
    shops = [small_shop(), small_shop()]
    days = [s.history(days=1)[EVENTS.name] for s in shops]
    assert days[0].equals(days[1])
    shops[0].launch(20, "electronics")
    # Sessions that started before the launch and run on past it are the same in both.
    running = pc.unique(days[0]["session_id"])
    after = [s.history(days=1)[EVENTS.name] for s in shops]
    spill = [a.filter(pc.is_in(a["session_id"], running)).drop(["event_id"]) for a in after]
    assert spill[0].num_rows > 0
    assert spill[0].equals(spill[1])
    assert launched(spill[0]).num_rows == 0


@pytest.mark.parametrize(
    ("place", "low", "high"),
    [pytest.param("top", 0.5, 1.0, id="top"), pytest.param("bottom", 0.0, 0.15, id="bottom")],
)
def test_popularity_places_the_new_items_in_their_category(
    place: str, low: float, high: float
) -> None:
    shop = small_shop()
    shop.history(days=1)
    shop.launch(5, "games", popularity=place)
    events = shop.history(days=1)[EVENTS.name]
    games = views_of(events, "games")
    share = launched(games).num_rows / games.num_rows
    assert games.num_rows > 100
    assert low < share < high
    in_category = pc.sum(pc.equal(shop.catalog()[ITEMS.name]["category"], "games")).as_py()
    assert share == pytest.approx(zipf_share(5, in_category, place), abs=0.1)
    # The launch shifts views within the category, not towards it.
    books = views_of(events, "books")
    assert launched(books).num_rows == 0


def test_same_seed_and_calls_same_tables() -> None:
    def run() -> list[dict[str, pa.Table]]:
        shop = small_shop(seed=11)
        out = [shop.history(days=1), shop.launch(3, "fashion")]
        out += list(shop.stream(rate=500, tick_s=10.0, duration_s=60))
        out += [shop.launch(2, "fashion", popularity="bottom"), shop.history(days=0.5)]
        return out

    one, two = run(), run()
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        assert all(a[name].equals(b[name]) for name in a)


def test_two_launches_at_one_clock_draw_different_items() -> None:
    shop = small_shop()
    first = shop.launch(5, "home")[ITEMS.name]
    second = shop.launch(5, "home")[ITEMS.name]
    assert first["title"].to_pylist() != second["title"].to_pylist()
    assert first["price"].to_pylist() != second["price"].to_pylist()


def test_forks_made_before_keep_the_old_catalogue() -> None:
    base = small_shop()
    base.history(days=1)
    earlier = base.shift(fraud_rate=0.05)
    catalogue = earlier.catalog()[ITEMS.name]
    base.launch(10, "games")
    assert earlier.n_items == N_ITEMS
    assert earlier.catalog()[ITEMS.name].equals(catalogue)
    assert launched(earlier.history(days=1)[EVENTS.name]).num_rows == 0
    # A fork made after the launch has the new items, and its launches stay its own.
    trending = base.shift(category_weights={"games": 4.0})
    assert trending.n_items == N_ITEMS + 10
    assert launched(trending.history(days=1)[EVENTS.name]).num_rows > 0
    trending.launch(3, "books")
    assert base.n_items == N_ITEMS + 10
    assert base.catalog()[ITEMS.name].num_rows == N_ITEMS + 10
    assert launched(base.history(days=1)[EVENTS.name], N_ITEMS + 11).num_rows == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        pytest.param((0, "games"), {}, "launch n must be an integer >= 1", id="zero"),
        pytest.param((2.5, "games"), {}, "launch n", id="float"),
        pytest.param((True, "games"), {}, "launch n", id="bool"),
        pytest.param((2, "game"), {}, "unknown category 'game' — did you mean 'games'", id="typo"),
        pytest.param((2, "cars"), {}, r"unknown category 'cars' \(categories: ", id="unknown"),
        pytest.param((2, 3), {}, "unknown category 3", id="not-a-name"),
        pytest.param(
            (2, "games"), {"popularity": "topp"}, "got 'topp' — did you mean 'top'", id="place"
        ),
        pytest.param((2, "games"), {"popularity": "middle"}, "'top' or 'bottom'", id="middle"),
    ],
)
def test_bad_launches_are_refused_and_change_nothing(args: tuple, kwargs: dict, match: str) -> None:
    shop = small_shop()
    with pytest.raises(ValidationError, match=match):
        shop.launch(*args, **kwargs)
    assert shop.n_items == N_ITEMS
    assert shop.catalog()[ITEMS.name].num_rows == N_ITEMS
