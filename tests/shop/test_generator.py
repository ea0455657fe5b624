from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from keel.errors import ValidationError
from keel.log import open_log
from keel.shop import EVENTS, ITEMS, LABELS, PAYMENTS, TOPICS, USERS, Shift, Shop
from keel.shop.catalog import CATEGORIES

START = datetime(2026, 11, 1, tzinfo=UTC)


def micros(column: pa.ChunkedArray) -> np.ndarray:
    return column.cast(pa.int64()).to_numpy()


def at(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000


def mean(mask: pa.ChunkedArray | np.ndarray) -> float:
    return float(np.mean(np.asarray(mask, dtype=float)))


def with_truth(history: dict[str, pa.Table]) -> pa.Table:
    labels = history[LABELS.name].select(["payment_id", "is_fraud"])
    return history[PAYMENTS.name].join(labels, "payment_id").sort_by("ts")


@pytest.fixture(scope="module")
def week() -> dict[str, pa.Table]:
    return Shop(seed=3, n_users=20_000, start=START).history(days=7)


@pytest.fixture(scope="module")
def risky_week() -> dict[str, pa.Table]:
    return Shop(seed=3, n_users=20_000, start=START, shift=Shift(fraud_rate=0.05)).history(7)


def test_tables_fit_their_topics_and_append_to_a_log() -> None:
    shop = Shop(seed=3, n_users=100, n_items=40, start=START)
    log = open_log("sqlite://")
    for topic in TOPICS:
        log.create_topic(topic)
    schemas = {t.name: t.schema for t in TOPICS}
    tables = [shop.catalog(), shop.history(days=1), *shop.stream(rate=200, duration_s=3)]
    appended: dict[str, int] = {}
    for batch in tables:
        for name, table in batch.items():
            assert table.schema == schemas[name]
            assert table.column_names == list(log.topic(name).fields)
            appended[name] = appended.get(name, 0) + len(log.append(name, table))
    for name, n in appended.items():
        assert log.stats(name).records == n
    assert set(appended) == {t.name for t in TOPICS}
    assert appended[EVENTS.name] > 1_000 and appended[PAYMENTS.name] > 10


def test_same_seed_and_calls_same_tables() -> None:
    def run(seed: int) -> list[dict[str, pa.Table]]:
        shop = Shop(seed=seed, n_users=300, n_items=60, start=START)
        return [shop.catalog(), shop.history(days=1), *shop.stream(rate=300, duration_s=2)]

    a, b, c = run(5), run(5), run(6)
    assert all(x[k].equals(y[k]) for x, y in zip(a, b, strict=True) for k in x)
    assert not a[1][EVENTS.name].equals(c[1][EVENTS.name])
    assert not a[0][ITEMS.name].equals(c[0][ITEMS.name])


def test_times_sorted_and_inside_the_window(week) -> None:
    lo, hi = at(START), at(START + timedelta(days=7))
    for name in (EVENTS.name, PAYMENTS.name, LABELS.name):
        ts = micros(week[name]["ts"])
        assert len(ts) and (np.diff(ts) >= 0).all(), name
    for name in (EVENTS.name, PAYMENTS.name):
        ts = micros(week[name]["ts"])
        assert lo <= ts[0] and ts[-1] < hi
    # Labels may be known after the window, never before their payment's window.
    assert micros(week[LABELS.name]["ts"])[0] > lo


def test_consecutive_histories_join_without_a_seam() -> None:
    evening = START + timedelta(hours=18)  # busy hours either side of the joins
    one = Shop(seed=2, n_users=30_000, n_items=500, start=evening)
    first, second = one.history(days=1), one.history(days=1)
    both = Shop(seed=2, n_users=30_000, n_items=500, start=evening).history(days=2)
    edge = at(evening + timedelta(days=1))
    assert micros(second[EVENTS.name]["ts"])[0] >= edge
    split = pa.concat_tables([first[EVENTS.name], second[EVENTS.name]])
    assert 0.97 < split.num_rows / both[EVENTS.name].num_rows < 1.03
    # Ids run on across calls, never repeat, and event ids follow time.
    assert (np.diff(split["event_id"].to_numpy()) == 1).all()
    pays = pa.concat_tables([first[PAYMENTS.name], second[PAYMENTS.name]])["payment_id"]
    assert len(pc.unique(pays)) == len(pays)

    def busy(table: pa.Table, start: int, minutes: int = 10) -> int:
        ts = micros(table["ts"])
        return int(((ts >= start) & (ts < start + minutes * 60_000_000)).sum())

    # Sessions running across a join go on in the next call, and the first call starts with
    # sessions already under way: the minutes after either are as busy as those before.
    ten = 10 * 60_000_000
    assert 0.85 < busy(split, edge) / busy(split, edge - ten) < 1.15
    assert 0.85 < busy(split, at(evening)) / busy(split, at(evening) + ten) < 1.15


def test_catalog_items_and_users() -> None:
    shop = Shop(seed=4, n_users=400, n_items=600, start=START)
    catalog = shop.catalog()
    items, users = catalog[ITEMS.name], catalog[USERS.name]
    assert items.num_rows == 600 and users.num_rows == 400
    assert set(items["category"].to_pylist()) == {c.name for c in CATEGORIES}
    # Texts use their category's words, so embeddings can tell categories apart.
    for c in CATEGORIES:
        rows = items.filter(pc.equal(items["category"], c.name))
        for title, text in zip(
            rows["title"].to_pylist(), rows["description"].to_pylist(), strict=True
        ):
            assert any(noun in title for noun in c.nouns)
            assert text.endswith(".") and any(use in text for use in c.uses)
    price = {
        c: np.median(items.filter(pc.equal(items["category"], c))["price"].to_numpy())
        for c in ("electronics", "grocery")
    }
    assert price["electronics"] > 4 * price["grocery"]
    assert pc.min(items["price"]).as_py() > 0
    assert (micros(users["ts"]) < at(START)).all()
    assert len(pc.unique(users["device_id"])) == users.num_rows
    assert users["user_id"].to_pylist() == list(range(1, 401))


def test_popularity_is_zipf_like(week) -> None:
    def top_share(history: dict[str, pa.Table]) -> float:
        events = history[EVENTS.name]
        views = events.filter(pc.equal(events["event_type"], "view"))["item_id"].to_numpy()
        counts = np.sort(np.bincount(views))[::-1]
        return counts[: len(counts) // 100].sum() / counts.sum()

    flat = Shop(seed=3, start=START).shift(popularity_exponent=0.0).history(days=7)
    assert top_share(week) > 0.15  # the top 1% of 2,000 items: 15 times their fair share
    assert top_share(flat) < 0.05


def test_daily_cycle(week) -> None:
    hours = np.bincount(pc.hour(week[EVENTS.name]["ts"]).to_numpy(), minlength=24)
    assert hours[18:22].mean() > 5 * hours[3:5].mean()
    assert hours[18:22].mean() > hours[9:12].mean()


def test_fraud_rate_and_patterns(week, risky_week) -> None:
    paid = with_truth(week)
    share = mean(paid["is_fraud"])
    assert 0.007 < share < 0.013
    risky = with_truth(risky_week)
    assert 0.04 < mean(risky["is_fraud"]) < 0.06
    fraud = risky.filter(risky["is_fraud"])
    legit = risky.filter(pc.invert(risky["is_fraud"]))
    # Most fraud pays from a device never seen, but not all: some take over the victim's own,
    # and some pose as the victim.
    assert 0.9 > mean(fraud["new_device"]) > 0.4 > 0.05 > mean(legit["new_device"]) > 0
    f_amount, l_amount = fraud["amount"].to_numpy(), legit["amount"].to_numpy()
    # Fraud pays more, with a long tail of round and high amounts, though many fraudsters keep
    # to amounts like a basket's.
    assert 2.5 * np.median(l_amount) > np.median(f_amount) > 1.3 * np.median(l_amount)
    assert np.quantile(f_amount, 0.9) > 2 * np.quantile(l_amount, 0.9)
    assert np.std(f_amount) > 2 * np.std(l_amount)
    home = {"DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE"}
    abroad = mean(~np.isin(fraud["country"].to_numpy(zero_copy_only=False), list(home)))
    assert 0.3 < abroad < 0.6
    assert 0 < mean(~np.isin(legit["country"].to_numpy(zero_copy_only=False), list(home))) < 0.05
    night = pc.less(pc.hour(risky["ts"]), 6).to_numpy(zero_copy_only=False)
    is_fraud = risky["is_fraud"].to_numpy(zero_copy_only=False)
    assert night[is_fraud].mean() > 3 * night[~is_fraud].mean()

    # Bursts: most fraud payments have another on the same card within ten minutes; legitimate
    # ones do too, when a shopper buys several things at once, but less than half as often.
    def in_company(paid: pa.Table) -> float:
        by_card = paid.sort_by([("card_id", "ascending"), ("ts", "ascending")])
        card, ts = by_card["card_id"].to_numpy(), micros(by_card["ts"])
        close = (card[1:] == card[:-1]) & (np.diff(ts) < 600_000_000)
        return mean(np.r_[close, False] | np.r_[False, close])

    assert in_company(fraud) > 0.55 > 2 * in_company(legit) > 0.1


def test_posing_fraud_looks_like_the_victims_own_shopping() -> None:
    shift = Shift(fraud_rate=0.05, fraud_pose_share=1.0, friendly_fraud_share=0.0)
    shop = Shop(seed=6, n_users=5_000, n_items=500, start=START, shift=shift)
    history = shop.history(days=3)
    paid = with_truth(history)
    fraud = paid.filter(paid["is_fraud"])
    legit = paid.filter(pc.invert(paid["is_fraud"]))
    assert fraud.num_rows > 50
    # From the victim's own phone or browser, at home, at the hours shoppers keep.
    assert not pc.any(fraud["new_device"]).as_py()
    home = shop.catalog()[USERS.name].select(["user_id", "country"])
    at_home = fraud.join(home.rename_columns(["user_id", "home"]), "user_id")
    assert pc.all(pc.equal(at_home["country"], at_home["home"])).as_py()
    night = [mean(pc.less(pc.hour(t["ts"]), 6)) for t in (fraud, legit)]
    assert night[0] < 2 * night[1]
    # Amounts like a basket's, not the round or high ones of bursts.
    ratio = np.median(fraud["amount"].to_numpy()) / np.median(legit["amount"].to_numpy())
    assert 0.7 < ratio < 2.5
    # Each is bought in a session of the victim's, from the device it is paid from, moments
    # before; one or two a visit.
    events = history[EVENTS.name]
    bought = events.filter(pc.equal(events["event_type"], "purchase"))
    seen: dict[tuple[int, str], list[int]] = {}
    for user, device, ts in zip(
        bought["user_id"].to_pylist(),
        bought["device_id"].to_pylist(),
        micros(bought["ts"]).tolist(),
        strict=True,
    ):
        seen.setdefault((user, device), []).append(ts)
    for user, device, ts in zip(
        fraud["user_id"].to_pylist(),
        fraud["device_id"].to_pylist(),
        micros(fraud["ts"]).tolist(),
        strict=True,
    ):
        assert any(0 < ts - t < 600_000_000 for t in seen.get((user, device), [])), user
    assert 1.0 < fraud.num_rows / len(pc.unique(fraud["card_id"])) < 1.5


def test_fraud_bursts_from_abroad_and_browsing_first() -> None:
    def fraud(**knobs: float) -> tuple[pa.Table, pa.Table]:
        shift = Shift(fraud_rate=0.1, fraud_pose_share=0.0, friendly_fraud_share=0.0, **knobs)
        history = Shop(seed=2, n_users=4_000, n_items=200, start=START, shift=shift).history(2)
        paid = with_truth(history)
        return paid.filter(paid["is_fraud"]), history[EVENTS.name]

    home = ["DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE"]

    def abroad(paid: pa.Table) -> float:
        return mean(pc.invert(pc.is_in(paid["country"], pa.array(home))))

    at_home, events = fraud(fraud_abroad_share=0.0, fraud_browse_share=1.0)
    assert at_home.num_rows > 100 and abroad(at_home) == 0.0
    assert abroad(fraud(fraud_abroad_share=1.0)[0]) == 1.0
    # A fraudster who browses first carts what they buy, as shoppers do: the account shows a
    # cart minutes before each burst.
    carts = events.filter(pc.equal(events["event_type"], "cart"))
    last_cart: dict[int, list[int]] = {}
    for user, ts in zip(carts["user_id"].to_pylist(), micros(carts["ts"]).tolist(), strict=True):
        last_cart.setdefault(user, []).append(ts)
    first = at_home.sort_by("ts").group_by("card_id").aggregate([("ts", "min"), ("user_id", "min")])
    for user, ts in zip(
        first["user_id_min"].to_pylist(), micros(first["ts_min"]).tolist(), strict=True
    ):
        assert any(0 < ts - t < 3_600_000_000 for t in last_cart.get(user, [])), user


def test_friendly_fraud_labels_ordinary_payments_as_fraud() -> None:
    def history(friendly: float) -> dict[str, pa.Table]:
        shift = Shift(fraud_rate=0.0, friendly_fraud_share=friendly)
        return Shop(seed=4, n_users=2_000, n_items=200, start=START, shift=shift).history(2)

    honest, disputed = history(0.0), history(0.1)
    # The same shop, payment for payment: only the labels differ.
    assert disputed[PAYMENTS.name].equals(honest[PAYMENTS.name])
    assert disputed[EVENTS.name].equals(honest[EVENTS.name])
    assert not pc.any(honest[LABELS.name]["is_fraud"]).as_py()
    assert 0.07 < mean(disputed[LABELS.name]["is_fraud"]) < 0.13


def test_one_label_per_payment_known_later(risky_week) -> None:
    pay, labels = risky_week[PAYMENTS.name], risky_week[LABELS.name]
    assert labels.num_rows == pay.num_rows == len(pc.unique(labels["payment_id"]))
    joined = pay.select(["payment_id", "user_id", "ts"]).join(
        labels.rename_columns(["label_ts", "payment_id", "label_user", "is_fraud"]), "payment_id"
    )
    assert joined.num_rows == pay.num_rows
    assert pc.all(pc.equal(joined["user_id"], joined["label_user"])).as_py()
    delay = micros(joined["label_ts"]) - micros(joined["ts"])
    assert (delay > 0).all()
    fraud = joined["is_fraud"].to_numpy(zero_copy_only=False)
    assert np.median(delay[fraud]) < np.median(delay[~fraud]) / 2


def test_shift_changes_distributions_and_keeps_the_world(week) -> None:
    base = Shop(seed=3, n_users=20_000, start=START)
    pricey = base.shift(price_scale=2.0)
    assert pricey.catalog()[ITEMS.name].equals(base.catalog()[ITEMS.name])
    assert base.knobs == Shift() and pricey.knobs.price_scale == 2.0

    def purchase_median(history: dict[str, pa.Table]) -> float:
        paid = with_truth(history)
        return float(np.median(paid.filter(pc.invert(paid["is_fraud"]))["amount"].to_numpy()))

    ratio = purchase_median(pricey.history(days=7)) / purchase_median(week)
    assert 1.8 < ratio < 2.2

    def share(history: dict[str, pa.Table], column: str, value: str) -> float:
        return mean(pc.equal(history[EVENTS.name][column], value))

    books = base.shift(category_weights={"books": 5.0}).history(days=2)
    assert share(books, "category", "books") > 2 * share(week, "category", "books")
    night = base.shift(night_share=0.5).history(days=2)
    hours = pc.hour(night[EVENTS.name]["ts"]).to_numpy()
    assert (hours < 6).mean() > 0.4
    desktop = base.shift(mobile_share=0.0).history(days=1)[EVENTS.name]["device_id"]
    phone = base.shift(mobile_share=1.0).history(days=1)[EVENTS.name]["device_id"]
    web_share = [mean(pc.starts_with(d, "web-")) for d in (desktop, phone)]
    assert web_share[0] > web_share[1] + 0.2


def test_untracked_sessions_lose_their_events_but_not_their_payments() -> None:
    base = Shop(seed=5, n_users=2_000, n_items=200, start=START)
    tracked = base.history(days=1)
    outage = Shop(seed=5, n_users=2_000, n_items=200, start=START, shift=Shift(untracked_share=0.6))
    lost = outage.history(days=1)
    assert lost[PAYMENTS.name].equals(tracked[PAYMENTS.name])
    assert lost[LABELS.name].equals(tracked[LABELS.name])

    def seen(events: pa.Table) -> set[tuple]:
        cols = ("ts", "user_id", "session_id", "item_id", "event_type")
        return set(zip(*(events[c].to_pylist() for c in cols), strict=True))

    kept, every = seen(lost[EVENTS.name]), seen(tracked[EVENTS.name])
    assert kept < every and 0.3 < len(kept) / len(every) < 0.5
    # Whole sessions go: a session either keeps all its events or none.
    sessions = pc.unique(lost[EVENTS.name]["session_id"])
    all_of_them = tracked[EVENTS.name].filter(
        pc.is_in(tracked[EVENTS.name]["session_id"], sessions)
    )
    assert all_of_them.num_rows == lost[EVENTS.name].num_rows


def test_shift_forks_the_timeline() -> None:
    base = Shop(seed=8, n_users=300, n_items=50, start=START)
    day = base.history(days=1)
    fork = base.shift(fraud_rate=0.2)
    after = fork.history(days=1)
    assert micros(after[EVENTS.name]["ts"])[0] >= at(START + timedelta(days=1))
    assert after[EVENTS.name]["event_id"][0].as_py() == day[EVENTS.name]["event_id"][-1].as_py() + 1
    seen = set(day[PAYMENTS.name]["payment_id"].to_pylist())
    assert not seen & set(after[PAYMENTS.name]["payment_id"].to_pylist())


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        pytest.param({"bad_knob": 1}, "unknown shift knob 'bad_knob'", id="unknown"),
        pytest.param({"price_scal": 2}, "did you mean 'price_scale'", id="typo"),
        pytest.param({"fraud_rate": 1.5}, "fraud_rate", id="fraud-rate"),
        pytest.param({"price_scale": 0}, "price_scale", id="price-scale"),
        pytest.param({"category_weights": {"book": 2}}, "did you mean 'books'", id="category"),
        pytest.param({"mobile_share": float("nan")}, "mobile_share", id="nan"),
    ],
)
def test_bad_shifts_are_refused(changes: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Shop(n_users=10, n_items=20).shift(**changes)


def test_stream_ticks_at_the_rate_in_time_order() -> None:
    shop = Shop(seed=1, n_users=500, n_items=100, start=START)
    shop.history(days=0.5)
    ticks = list(shop.stream(rate=1_000, tick_s=1.0, duration_s=20))
    assert len(ticks) == 20
    counts = [t[EVENTS.name].num_rows for t in ticks]
    assert 800 < np.median(counts) < 1_200
    ts = np.concatenate([micros(t[EVENTS.name]["ts"]) for t in ticks])
    assert (np.diff(ts) >= 0).all()
    assert ts[0] >= at(START + timedelta(hours=12)) and ts[-1] < at(START) + 43_220_000_000
    ids = np.concatenate([t[EVENTS.name]["event_id"].to_numpy() for t in ticks])
    assert (np.diff(ids) == 1).all()
    # Purchases of sessions under way when the stream starts are paid from the first tick:
    # 150 sessions a second buy about 29 times.
    assert 400 < sum(t[PAYMENTS.name].num_rows for t in ticks) < 800
    assert ticks[0][PAYMENTS.name].num_rows > 5


def test_stream_hands_out_labels_when_they_are_known() -> None:
    shop = Shop(seed=1, n_users=300, n_items=50, start=START, shift=Shift(fraud_rate=0.3))
    paid, known = set(), []
    for tick in shop.stream(rate=20, tick_s=600, duration_s=12 * 3600):
        paid |= set(tick[PAYMENTS.name]["payment_id"].to_pylist())
        labels = tick[LABELS.name]
        if labels.num_rows:
            hi = micros(tick[EVENTS.name]["ts"])[-1]
            assert (micros(labels["ts"]) <= hi + 600_000_000).all()
            known.extend(labels["payment_id"].to_pylist())
    assert known and set(known) <= paid and len(set(known)) == len(known)
    # A history afterwards hands out the rest: every payment ends up with exactly one label.
    later = shop.history(days=3)
    paid |= set(later[PAYMENTS.name]["payment_id"].to_pylist())
    assert sorted(known + later[LABELS.name]["payment_id"].to_pylist()) == sorted(paid)


def test_realtime_stream_is_stamped_with_the_wall_clock() -> None:
    shop = Shop(seed=1, n_users=100, n_items=30, start=START)
    before = datetime.now(UTC)
    ticks = list(shop.stream(rate=2_000, realtime=True, tick_s=0.05, duration_s=0.15))
    after = datetime.now(UTC)
    assert len(ticks) == 3
    ts = np.concatenate([micros(t[EVENTS.name]["ts"]) for t in ticks])
    assert len(ts) and at(before) - 1_000_000 <= ts.min() and ts.max() <= at(after) + 1_000_000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"n_users": 0}, "n_users", id="users"),
        pytest.param({"n_items": 3}, "n_items", id="items"),
        pytest.param({"seed": -1}, "seed", id="seed"),
        pytest.param({"sessions_per_user_day": 0}, "sessions_per_user_day", id="sessions"),
        pytest.param({"start": "2026-11-01"}, "start", id="start"),
        pytest.param({"shift": {"fraud_rate": 0.1}}, "Shift", id="shift"),
    ],
)
def test_bad_shop_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Shop(**kwargs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda s: s.history(days=-1), "days", id="negative-days"),
        pytest.param(lambda s: s.history(days=float("inf")), "days", id="infinite-days"),
        pytest.param(lambda s: s.stream(rate=0), "rate", id="zero-rate"),
        pytest.param(lambda s: s.stream(rate=-5.0), "rate", id="negative-rate"),
        pytest.param(lambda s: s.stream(tick_s=0), "tick_s", id="tick"),
        pytest.param(lambda s: s.stream(duration_s=-1), "duration_s", id="duration"),
    ],
)
def test_bad_call_arguments(call, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        call(Shop(n_users=10, n_items=20))
