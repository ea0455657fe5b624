"""``keel log``: look into the event log."""

from __future__ import annotations

import time
from datetime import datetime

import pyarrow as pa
import typer
from rich.table import Table

from keel.cli._common import console, friendly, human_bytes, project, short_time
from keel.log import OFFSET, PARTITION, Log, TopicStats
from keel.log.base import from_micros

app = typer.Typer(help="Inspect the event log: topics, schemas, recent records, statistics.")


@app.command("topics")
@friendly
def topics(ctx: typer.Context) -> None:
    """List the topics with their partitions, keys and sizes."""
    log = project(ctx).log
    table = Table(title=f"topics in {log.url}")
    for col in ("topic", "partitions", "key", "event time", "records", "size"):
        table.add_column(
            col, justify="right" if col in ("partitions", "records", "size") else "left"
        )
    for t in log.topics():
        s = log.stats(t.name)
        table.add_row(
            t.name,
            str(t.partitions),
            t.key or "—",
            t.event_time,
            f"{s.records:,}",
            human_bytes(s.bytes),
        )
    console.print(table)


@app.command("describe")
@friendly
def describe(ctx: typer.Context, topic: str = typer.Argument(..., help="topic name")) -> None:
    """Show a topic's schema, partitions, retention and consumer groups."""
    log = project(ctx).log
    s = log.stats(topic)
    t = s.topic
    fields = Table(title=f"topic {t.name}", show_header=True)
    fields.add_column("field")
    fields.add_column("type")
    fields.add_column("role")
    for name, spec in t.fields.items():
        role = ", ".join(r for r, f in (("event time", t.event_time), ("key", t.key)) if f == name)
        fields.add_row(name, spec, role)
    console.print(fields)
    retention = []
    if t.retention_ms:
        retention.append(f"{t.retention_ms / 3_600_000:g} h")
    if t.retention_bytes:
        retention.append(human_bytes(t.retention_bytes))
    console.print(f"retention: {' or '.join(retention) or 'keep everything'}")
    parts = Table(title="partitions")
    for col in ("partition", "start", "end", "records", "segments", "size", "oldest", "newest"):
        parts.add_column(col, justify="right")
    for p in s.partitions:
        parts.add_row(
            str(p.partition),
            f"{p.start:,}",
            f"{p.end:,}",
            f"{p.records:,}",
            str(p.segments),
            human_bytes(p.bytes),
            short_time(_ts(p.min_ts)),
            short_time(_ts(p.max_ts)),
        )
    console.print(parts)
    _print_groups(log, s)


def _print_groups(log: Log, s: TopicStats) -> None:
    if not s.lag:
        console.print("consumer groups: none")
        return
    groups = Table(title="consumer groups")
    groups.add_column("group")
    groups.add_column("committed", justify="right")
    groups.add_column("lag", justify="right")
    for g, lag in sorted(s.lag.items()):
        done = log.committed(g, s.topic.name)
        groups.add_row(g, ", ".join(f"{p}:{o:,}" for p, o in sorted(done.items())), f"{lag:,}")
    console.print(groups)


def _ts(us: int | None) -> datetime | None:
    return None if us is None else from_micros(us)


@app.command("tail")
@friendly
def tail(
    ctx: typer.Context,
    topic: str = typer.Argument(..., help="topic name"),
    n: int = typer.Option(10, "-n", "--lines", min=1, help="records to show"),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep printing new records"),
    seconds: float = typer.Option(0.0, help="with --follow: stop after this long (0 = never)"),
) -> None:
    """Print the newest records of a topic (across partitions, by event time)."""
    log = project(ctx).log
    t = log.topic(topic)
    ends = log.end_offsets(topic)
    pieces = [log.read(topic, p, max(end - n, 0), n) for p, end in enumerate(ends)]
    recent = pa.concat_tables(pieces).sort_by([(t.event_time, "ascending")])
    _print_records(recent.slice(max(recent.num_rows - n, 0)), t.event_time)
    if not follow:
        return
    consumer = log.consumer(f"keel-tail-{time.time_ns()}", topic, reset="latest")
    stop = time.monotonic() + seconds if seconds else None
    while stop is None or time.monotonic() < stop:
        batch = consumer.poll(1000)
        if batch.num_rows:
            _print_records(batch.sort_by([(t.event_time, "ascending")]), t.event_time, header=False)
        else:
            time.sleep(0.2)


def _print_records(records: pa.Table, event_time: str, header: bool = True) -> None:
    table = Table(show_header=header)
    cols = [c for c in records.column_names if c not in (PARTITION, OFFSET)]
    table.add_column("p/offset", style="dim")
    for c in cols:
        table.add_column(c, style="cyan" if c == event_time else None, overflow="fold")
    for row in records.to_pylist():
        cells = [f"{row[PARTITION]}/{row[OFFSET]}"]
        for c in cols:
            v = row[c]
            if isinstance(v, datetime):
                v = v.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            elif isinstance(v, float):
                v = f"{v:.4g}"
            elif isinstance(v, list):
                v = f"[{len(v)} values]"
            cells.append(str(v))
        table.add_row(*cells)
    console.print(table)


@app.command("stats")
@friendly
def stats(ctx: typer.Context) -> None:
    """Records, size, time range and consumer lag of every topic."""
    log = project(ctx).log
    console.print(stats_table(log))


def stats_table(log: Log) -> Table:
    table = Table(title=f"log {log.url}")
    for col in ("topic", "records", "segments", "size", "oldest", "newest", "max lag"):
        table.add_column(col, justify="left" if col == "topic" else "right")
    total_records = total_bytes = 0
    for t in log.topics():
        s = log.stats(t.name)
        total_records += s.records
        total_bytes += s.bytes
        lo, hi = s.time_range or (None, None)
        lag = f"{max(s.lag.values()):,} of {len(s.lag)}" if s.lag else "—"
        table.add_row(
            t.name,
            f"{s.records:,}",
            f"{s.segments:,}",
            human_bytes(s.bytes),
            short_time(lo),
            short_time(hi),
            lag,
        )
    table.add_section()
    table.add_row("total", f"{total_records:,}", "", human_bytes(total_bytes), "", "", "")
    return table
