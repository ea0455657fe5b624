"""Demo steps over data: features online and offline, a point-in-time training set."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from keel.demo.result import DemoResult
from keel.features import FeatureStore
from keel.features.definitions import format_duration
from keel.project import Project
from keel.shop import EVENTS, PAYMENTS, Shift, Shop

BATCH = 10_000


def demo_shop(*, seed: int, users: int, items: int, days: float, now: datetime) -> Shop:
    """The demo's shop, whose history ends ``now``. Some fraud rings browse and buy in the
    victim's account first, so an active account alone does not tell a real shopper, and some
    fraud poses as the victim. A high-risk shop (5% of payments fraud): a small shop's few
    days still hold enough fraud for the model, its two-day holdout, and the monitor's loss
    estimator to learn from and be judged on."""
    return Shop(
        seed=seed,
        n_users=users,
        n_items=items,
        start=now - timedelta(days=days),
        shift=Shift(fraud_browse_share=0.3, fraud_rate=0.05),
    )


def append_history(
    log: Any,
    shop: Shop,
    *,
    days: float,
    now: datetime,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Append ``shop``'s catalogue, then its ``days`` of history up to ``now`` in time order
    (labels not known by ``now`` stay unknown); returns the records appended per topic.
    ``progress(done, total)`` is told the history records landed so far as each chunk lands."""
    appended: dict[str, int] = {}
    for name, table in shop.catalog().items():
        log.append(name, table)
        appended[name] = table.num_rows
    history = {
        name: table.filter(
            pc.less_equal(table.column("ts"), pa.scalar(now, table.schema.field("ts").type))
        )
        for name, table in shop.history(days=days).items()
    }
    total, done = sum(t.num_rows for t in history.values()), 0
    for chunk in time_ordered_chunks(history):
        for name, table in chunk.items():
            log.append(name, table)
            appended[name] = appended.get(name, 0) + table.num_rows
            done += table.num_rows
            if progress is not None:
                progress(done, total)
    return appended


def time_ordered_chunks(history: dict[str, pa.Table]) -> list[dict[str, pa.Table]]:
    """Cut every topic's table at the same event-time boundaries, about BATCH events apart,
    so the topics are appended interleaved, as a live shop would produce them."""
    events = history[EVENTS.name]
    ts = events.column(EVENTS.event_time).cast(pa.int64()).to_numpy()
    cuts = ts[BATCH::BATCH] if len(ts) else np.zeros(0, np.int64)
    bounds = np.concatenate([[np.iinfo(np.int64).min], cuts, [np.iinfo(np.int64).max]])
    chunks: list[dict[str, pa.Table]] = [{} for _ in range(len(bounds) - 1)]
    for name, table in history.items():
        if table.num_rows == 0:
            continue
        t = pc.cast(table.column("ts"), pa.int64()).to_numpy()
        idx = np.searchsorted(t, bounds)
        for i in range(len(bounds) - 1):
            if idx[i + 1] > idx[i]:
                chunks[i][name] = table.slice(idx[i], idx[i + 1] - idx[i])
    return [c for c in chunks if c]


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("   [progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def show_features(console: Console, project: Project, result: DemoResult) -> FeatureStore:
    console.print("[bold]3. Features[/]: defined once in definitions.py, served online and offline")
    features = project.features
    for kind, name, _status in project.apply():
        if kind == "feature view":
            view = features.view(name)
            console.print(
                f"   {name:14s} {len(view.features)} features over "
                f"{view.source.topic}, tile {format_duration(view.tile)}, "
                f"fingerprint {view.fingerprint[:12]}"
            )
    start = time.perf_counter()
    with console.status(
        "   landing history as Parquet, embedding item texts with all-MiniLM-L6-v2, materializing…"
    ):
        landed = features.land()
        stats = features.backfill()
    result.backfill_seconds = time.perf_counter() - start
    console.print(f"   landed {sum(landed.values()):,} records in {features.offline.root}")
    for name, st in stats.items():
        rate = st.events / st.seconds if st.seconds else 0
        console.print(
            f"   {name:14s} {st.events:,} events ({st.late:,} late) → "
            f"{features.online.url} at {rate:,.0f} events/s"
        )
    return features


def show_lookups(console: Console, features: FeatureStore, result: DemoResult) -> None:
    console.print("[bold]6. Online lookups[/] rolled forward to now, with staleness")
    log = features.log
    recent = log.read(EVENTS.name, 0, max(log.end_offsets(EVENTS.name)[0] - 2_000, 0), 2_000)
    users = [u for u, _ in Counter(recent.column("user_id").to_pylist()).most_common(3)]
    start = time.perf_counter()
    got = features.get_online(["user_activity", "user_taste"], users)
    result.lookup_ms = (time.perf_counter() - start) * 1000
    table = Table(title=f"users: user_activity, user_taste ({result.lookup_ms:.1f} ms lookup)")
    table.add_column("feature")
    for u in users:
        table.add_column(f"user {u}", overflow="fold")
    lookup = features.view("user_taste").source.transform
    for name in got.values:
        cells = []
        for i in range(len(users)):
            value = got.values[name][i]
            if name.endswith("taste_7d"):
                value = _nearest_item(lookup, value, features)
            elif isinstance(value, float | np.floating):
                value = "—" if np.isnan(value) else f"{value:,.2f}"
            stale = got.staleness_s[name][i]
            age = "" if np.isnan(stale) else f" [dim]({_age(stale)})[/]"
            cells.append("missing" if got.missing[name][i] else f"{value}{age}")
        table.add_row(name.split("__", 1)[1], *cells)
    console.print(table)
    pays = log.read(PAYMENTS.name, 0, max(log.end_offsets(PAYMENTS.name)[0] - 300, 0), 300)
    cards = list(dict.fromkeys(pays.column("card_id").to_pylist()[::-1]))[:3]
    got = features.get_online(["card_payments"], cards)
    table = Table(title="cards: card_payments")
    table.add_column("feature")
    for c in cards:
        table.add_column(f"card {c}")
    for name in got.values:
        row = []
        for i in range(len(cards)):
            v = got.values[name][i]
            v = (
                "—"
                if isinstance(v, float) and np.isnan(v)
                else (f"{v:,.2f}" if isinstance(v, float) else v)
            )
            stale = got.staleness_s[name][i]
            row.append(f"{v}" + ("" if np.isnan(stale) else f" [dim]({_age(stale)})[/]"))
        table.add_row(name.split("__", 1)[1], *row)
    console.print(table)


def _nearest_item(lookup: Any, vector: np.ndarray, features: FeatureStore) -> str:
    if vector is None or np.isnan(vector).all() or not len(getattr(lookup, "_vectors", [])):
        return "—"
    sims = lookup._vectors @ (vector / max(np.linalg.norm(vector), 1e-9))
    best = int(np.argmax(sims))
    item = int(lookup._keys[best])
    items = features.log.read("shop.items", 0, 0, 10**6)
    title = items.filter(pc.equal(items["item_id"], item))["title"][0].as_py()
    return f"≈ {title!r} (cos {sims[best]:.2f})"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s old"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m old"
    return f"{seconds / 3600:.1f}h old"


def show_consistency(
    console: Console, features: FeatureStore, train: pa.Table, result: DemoResult
) -> None:
    """Same definitions, same numbers: online now equals offline "as of now"."""
    cards = train["card_id"].to_pylist()[-50:]
    at = datetime.now(UTC)
    online = features.get_online(["card_payments"], cards, at=at)
    offline = features.training_set(
        pa.table(
            {"card_id": cards, "ts": pa.array([at] * len(cards), pa.timestamp("us", tz="UTC"))}
        ),
        ["card_payments"],
        land=True,
    )
    same = sum(
        all(_same(online.values[name][i], offline[name][i].as_py()) for name in online.values)
        for i in range(len(cards))
    )
    result.consistent = (same, len(cards))
    colour = "green" if same == len(cards) else "red"
    console.print(
        f"   online == offline for [{colour}]{same}/{len(cards)}[/] cards at the same instant"
    )


def training_rows_table(train: pa.Table) -> Table:
    """A few fraudulent rows of a training set, as the model saw them."""
    show = [
        "ts",
        "amount",
        "is_fraud",
        "card_payments__payments_1h",
        "card_payments__max_amount_1d",
        "card_payments__new_devices_1d",
        "user_activity__events_1d",
    ]
    fraud = train.filter(train["is_fraud"])
    sample = fraud.slice(0, 3) if fraud.num_rows else train.slice(0, 3)
    table = Table(title="a few training rows")
    for col in show:
        table.add_column(col.split("__")[-1])
    for r in sample.select(show).to_pylist():
        table.add_row(
            *[
                f"{v:%m-%d %H:%M}"
                if hasattr(v, "strftime")
                else f"{v:,.2f}"
                if isinstance(v, float)
                else str(v)
                for v in r.values()
            ]
        )
    return table


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | np.floating) and np.isnan(a):
        return b is None
    if isinstance(a, float | np.floating):
        return b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return a == b
