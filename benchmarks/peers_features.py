"""The ``features`` section of ``make bench-peers``: Keel's feature store beside Feast.

Both sides get the same payments events (``ts, user_id, amount, country``), written by
``bench_features.fill_log`` into a Keel log and exported from it, and the same windows over
15-minute tiles (``bench_features.view``): counts and sums over 1 h / 1 d / 7 d, the 7 d mean,
the 1 d max, min and last amount, and the last country.

What each side computes
    Keel computes the windows itself: ``materialize`` folds the log's events into per-tile
    states in its online store, a lookup combines an entity's tiles at read time, and
    ``training_set`` runs its point-in-time join over the events landed as Parquet.
    Feast has no window aggregation of its own, so the harness precomputes, with DuckDB, a
    table of the exact values Keel returns: one row per user at every instant a value
    changes, i.e. at every event and at every tile boundary where an event leaves a window
    (a window W read at t covers the events with ``floor(ts/tile) > floor(t/tile) - W/tile``
    and ``ts <= t``). Feast's offline stores serve that Parquet file; its feature view's
    TTL is 7 days, the longest window. Every value is checked against Keel's (the notes say
    how many differ).

What is timed
    Online lookups: ``FeatureStore.get_online(["u"], keys)`` against Feast's
    ``get_online_features(10 refs, {"user_id": keys})`` (columnar entity rows, the response
    not converted further), the same key batches on both, 1 key and 100 keys, with SQLite
    online stores on both sides and then Redis online stores on both sides; p50 and p99.
    Materialization: Keel's ``materialize`` of all events into a fresh online store against
    Feast's ``materialize`` of the precomputed table over the same time range; the DuckDB
    precompute is not in Feast's figure and is reported beside it (a row of its own adds it).
    Training set: Keel's ``training_set(land=False)`` against Feast's
    ``get_historical_features(...).to_df()`` over the same labels, once with Feast's file
    offline store (Dask; the comparison the goal is about) and once with its DuckDB offline
    store (through ibis, Feast's fastest on one machine). Landing the log (Keel) and the
    precompute (Feast) are outside those figures and added in rows of their own. Each Feast
    run is a process of its own under a resident-memory cap and a time limit; when it cannot
    finish the full label count it is retried with half the labels (five tries at most), the
    note says what failed, and Keel is timed again at the size Feast finished. The notes count
    the label rows Feast dropped or left without features and the values that differ.
    Each figure is one run (lookups: thousands of calls) on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench_features import fill_log, view
from keel.features import Aggregate, FeatureStore
from keel.features.definitions import Feature
from keel.log import open_log
from peers_common import Row, peer_python, run_peer, version

PINS = ["feast[redis,duckdb]==0.67.0"]
# Feast's local offline stores: the file store (Dask) the comparison is about, and its DuckDB
# store (through ibis), its fastest on one machine.
OFFLINE = {"file": "file/Dask", "duckdb": "DuckDB offline store"}
SECTION = "features"
H, D = timedelta(hours=1), timedelta(days=1)
# The five windowed features of bench_features.bench_training.
TRAINING_FEATURES = [
    Aggregate(None, "count", H),
    Aggregate("amount", "sum", D),
    Aggregate("amount", "mean", 7 * D),
    Aggregate("amount", "max", D),
    Aggregate(None, "count", 7 * D),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The section's options (``--features-…``)."""
    g = parser.add_argument_group("features (Keel's feature store beside Feast)")
    g.add_argument("--features-events", type=int, default=10_000_000, help="training events")
    g.add_argument("--features-labels", type=int, default=1_000_000, help="training labels")
    g.add_argument(
        "--features-online-events",
        type=int,
        default=1_000_000,
        help="events materialized and looked up online",
    )
    g.add_argument("--features-users", type=int, default=100_000, help="users (entities)")
    g.add_argument("--features-redis", default="redis://127.0.0.1:6379/0", help="Redis on loopback")
    g.add_argument(
        "--features-peer-timeout",
        type=float,
        default=1200,
        help="seconds Feast may take for one training set before it is tried smaller",
    )
    g.add_argument(
        "--features-peer-mem-gib",
        type=float,
        default=14,
        help="resident-memory cap on Feast's training-set process",
    )
    g.add_argument(
        "--features-parts",
        default="online,training",
        help="which parts to run, comma-separated (online, training)",
    )


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    """Data sizes and lookup repetitions; ``--quick`` makes them 10-20 times smaller."""
    div = 20 if args.quick else 1
    return {
        "events": max(args.features_events // div, 10_000),
        "labels": max(args.features_labels // div, 1_000),
        "online_events": max(args.features_online_events // div, 10_000),
        "users": max(args.features_users // (10 if args.quick else 1), 1_000),
        "reps1": 500 if args.quick else 5_000,
        "reps100": 100 if args.quick else 1_000,
    }


# -- the window table that Feast serves ---------------------------------------------------


def window_table(
    events: pa.Table,
    feats: Sequence[Feature],
    tile_us: int,
    until_us: int,
    out: Path,
    spill: Path,
) -> int:
    """Write to Parquet file ``out`` every feature's value for each user at each instant it
    changes, up to ``until_us``; return the number of rows.

    Values change at every event and at every tile boundary where an event leaves a window,
    so a Feast point-in-time lookup (the latest row at or before t) returns exactly what
    Keel computes at t. Columns: ``user_id``, ``event_timestamp`` and one per feature.
    DuckDB spills to ``spill`` past a few GiB, leaving memory to the rest of the run.
    The events must be in time order with distinct timestamps (``fill_log`` writes them so):
    then Keel drops no event as late, and "latest event" has one answer.
    """
    r = tile_us
    spans = sorted({f.window_us // r for f in feats if f.window_us is not None})
    cols = sorted({f.column for f in feats if f.column is not None})
    nums = sorted(
        {f.column for f in feats if f.column is not None and f.fn in ("sum", "mean", "min", "max")}
    )
    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{spill}'")
    con.execute("SET memory_limit = '6GB'")
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", events)
    extra = "".join(f', "{c}"' for c in cols)
    con.execute(
        "CREATE TEMP TABLE ev AS SELECT user_id, epoch_us(ts) AS t, "
        f"epoch_us(ts) // {r} AS k{extra} FROM events"
    )
    # Running aggregates within each (user, tile), in time order: the current tile's part.
    run_aggs = ["count(*) OVER w AS pn"]
    for c in nums:
        run_aggs += [
            f'count("{c}") OVER w AS "pn_{c}"',
            f'sum("{c}") OVER w AS "ps_{c}"',
            f'max("{c}") OVER w AS "pmx_{c}"',
            f'min("{c}") OVER w AS "pmn_{c}"',
        ]
    con.execute(
        f"CREATE TEMP TABLE run AS SELECT user_id, t, k{extra}, {', '.join(run_aggs)} FROM ev "
        "WINDOW w AS (PARTITION BY user_id, k ORDER BY t "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )
    # Change points: each event, and each boundary where an event leaves a window.
    leaves = "".join(f" UNION ALL SELECT user_id, (k + {m}) * {r} FROM ev" for m in spans)
    con.execute(
        "CREATE TEMP TABLE cp AS SELECT DISTINCT user_id, t FROM "
        f"(SELECT user_id, t FROM ev{leaves}) WHERE t <= {until_us}"
    )
    # Whole tiles per (user, tile), plus an empty row at each tile a change point falls in,
    # so one window pass over tile indices gives the whole tiles before every change point.
    tile_aggs, empty, sums = ["count(*) AS n"], ["0"], ["sum(n) AS n"]
    for c in nums:
        tile_aggs += [
            f'count("{c}") AS "n_{c}"',
            f'sum("{c}") AS "s_{c}"',
            f'max("{c}") AS "mx_{c}"',
            f'min("{c}") AS "mn_{c}"',
        ]
        empty += ["0", "0.0", "NULL::DOUBLE", "NULL::DOUBLE"]
        sums += [f'sum("n_{c}") AS "n_{c}"', f'sum("s_{c}") AS "s_{c}"']
        sums += [f'max("mx_{c}") AS "mx_{c}"', f'min("mn_{c}") AS "mn_{c}"']
    con.execute(
        f"CREATE TEMP TABLE tiles AS SELECT user_id, k, {', '.join(sums)}, bool_or(q) AS q "
        f"FROM (SELECT user_id, k, {', '.join(tile_aggs)}, false AS q FROM ev GROUP BY ALL "
        f"UNION ALL SELECT DISTINCT user_id, t // {r}, {', '.join(empty)}, true FROM cp) "
        "GROUP BY ALL"
    )
    win_aggs, frames = [], []
    for m in spans:
        frames.append(
            f"w{m} AS (PARTITION BY user_id ORDER BY k "
            f"RANGE BETWEEN {m - 1} PRECEDING AND 1 PRECEDING)"
        )
        win_aggs.append(f"sum(n) OVER w{m} AS n_{m}")
        for c in nums:
            win_aggs += [
                f'sum("n_{c}") OVER w{m} AS "n_{c}_{m}"',
                f'sum("s_{c}") OVER w{m} AS "s_{c}_{m}"',
                f'max("mx_{c}") OVER w{m} AS "mx_{c}_{m}"',
                f'min("mn_{c}") OVER w{m} AS "mn_{c}_{m}"',
            ]
    con.execute(
        f"CREATE TEMP TABLE win AS SELECT * FROM (SELECT user_id, k, q, {', '.join(win_aggs)} "
        f"FROM tiles WINDOW {', '.join(frames)}) WHERE q"
    )
    selects = []
    for f in feats:
        selects.append(f'{_value_sql(f, r)} AS "{f.name}"')
    con.execute(
        "COPY (SELECT cp.user_id, make_timestamp(cp.t)::TIMESTAMPTZ AS event_timestamp, "
        f"{', '.join(selects)} FROM cp "
        "ASOF JOIN run ON cp.user_id = run.user_id AND cp.t >= run.t "
        f"JOIN win ON win.user_id = cp.user_id AND win.k = cp.t // {r}) "
        f"TO '{out}' (FORMAT parquet)"
    ).fetchall()
    con.close()
    return pq.read_metadata(out).num_rows


def _value_sql(f: Feature, r: int) -> str:
    """The SQL for ``f``'s value at a change point (``cp``), from the whole tiles before it
    (``win``) and the latest event at or before it (``run``, the current tile's part when
    that event is in the change point's tile)."""
    same = f"run.k = cp.t // {r}"
    if f.window_us is None:  # Last(column): the latest value ever seen
        return f'run."{f.column}"'
    m = f.window_us // r
    c = f.column
    if f.fn == "last":
        return f'CASE WHEN run.t >= (cp.t // {r} - {m - 1}) * {r} THEN run."{c}" END'
    if f.fn == "count":
        whole, part = (f"n_{m}", "pn") if c is None else (f"n_{c}_{m}", f"pn_{c}")
        part_sql = f'CASE WHEN {same} THEN run."{part}" ELSE 0 END'
        return f'(coalesce(win."{whole}", 0) + {part_sql})::BIGINT'
    total = f'(coalesce(win."s_{c}_{m}", 0) + CASE WHEN {same} THEN run."ps_{c}" ELSE 0 END)'
    if f.fn == "sum":
        return f"{total}::DOUBLE"
    if f.fn == "mean":
        n = f'(coalesce(win."n_{c}_{m}", 0) + CASE WHEN {same} THEN run."pn_{c}" ELSE 0 END)'
        return f"{total} / nullif({n}, 0)"
    pick = "greatest" if f.fn == "max" else "least"
    key = "mx" if f.fn == "max" else "mn"
    return f'{pick}(win."{key}_{c}_{m}", CASE WHEN {same} THEN run."p{key}_{c}" END)'


# -- helpers ----------------------------------------------------------------------------------


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def _redis(url: str) -> Iterator[tuple[str, int]]:
    """(host, port) of a Redis on loopback: the one at ``url`` if it answers, else a private
    ``redis-server`` on a free port, stopped afterwards."""
    parts = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = parts.partition(":")
    if _answers(host or "127.0.0.1", int(port or 6379)):
        yield host or "127.0.0.1", int(port or 6379)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(f"no Redis answers at {url} and no redis-server is installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="keel-peers-redis-")
    # No snapshots, no append-only file: a throwaway server for this run.
    argv = [binary, "--port", str(free), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", workdir]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers("127.0.0.1", free):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"started {binary} on port {free} but it never answered")
            time.sleep(0.05)
        yield "127.0.0.1", free
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _drop_keys(host: str, port: int, pattern: str) -> int:
    """Delete the keys matching ``pattern`` (this run's own) and say how many there were."""
    import redis

    client = redis.Redis(host=host, port=port)
    keys = list(client.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()
    return len(keys)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _events(store: FeatureStore) -> pa.Table:
    """The log's events as Keel landed them (the export Feast's side starts from)."""
    store.land()
    return store.offline.read("pay").select(["ts", "user_id", "amount", "country"])


def _differ(a: Any, b: Any) -> bool:
    """Whether two feature values differ (nulls alike; floats to a relative 1e-9)."""
    a_none = a is None or (isinstance(a, float) and np.isnan(a))
    b_none = b is None or (isinstance(b, float) and np.isnan(b))
    if a_none or b_none:
        return a_none != b_none
    if isinstance(a, str) or isinstance(b, str):
        return a != b
    return not np.isclose(float(a), float(b), rtol=1e-9, atol=1e-9)


# -- online: materialization and lookups ------------------------------------------------------


def _online(args: argparse.Namespace, tmp: Path, python: Path, peer: str) -> list[Row]:
    n = _sizes(args)
    users = n["users"]
    now = datetime.now(UTC)
    url = f"sqlite:///{tmp / 'online-log.db'}"
    print(f"  online: {n['online_events']:,} events of {users:,} users over 7 days", flush=True)
    fill_log(url, n["online_events"], users, 7, now)
    log = open_log(url)
    until_us = int(now.timestamp() * 1e6)
    scratch = FeatureStore(log, views=[view()], offline=tmp / "online-off")
    events = _events(scratch)
    v = view()
    t = time.perf_counter()
    feast_rows = window_table(
        events, list(v.features), v.tile_us, until_us, tmp / "online-features.parquet", tmp
    )
    precompute_s = time.perf_counter() - t
    del events
    gc.collect()
    print(f"    DuckDB precompute for Feast: {feast_rows:,} rows in {precompute_s:.1f} s")

    rng = np.random.default_rng(1)
    batches = [(1, n["reps1"]), (100, n["reps100"])]
    keys = {f"k{k}": rng.integers(0, users, k * reps) for k, reps in batches}
    longest = max(len(v) for v in keys.values())
    pq.write_table(
        pa.table({k: np.resize(v, longest) for k, v in keys.items()}), tmp / "keys.parquet"
    )
    sample = rng.choice(users, 200, replace=False).tolist()

    rows: list[Row] = []
    with _redis(args.features_redis) as (host, port):
        for backend in ("sqlite", "redis"):
            tag = uuid.uuid4().hex[:8]
            if backend == "sqlite":
                online = f"sqlite:///{tmp / f'keel-online-{tag}.db'}"
            else:
                online = f"redis://{host}:{port}/0?prefix=keelpeers-{tag}"
            store = FeatureStore(log, views=[view()], online=online, offline=tmp / "online-off")
            try:
                t = time.perf_counter()
                stats = store.materialize()["u"]
                keel_mat = time.perf_counter() - t
                keel_lat = {}
                for k, reps in batches:
                    ks = keys[f"k{k}"].reshape(reps, k).tolist()
                    for batch in ks[:50]:  # warm up, as Feast's side does
                        store.get_online(["u"], batch)
                    lat = []
                    for batch in ks:
                        t0 = time.perf_counter_ns()
                        store.get_online(["u"], batch)
                        lat.append((time.perf_counter_ns() - t0) / 1e3)
                    keel_lat[k] = (_pct(lat, 50), _pct(lat, 99))
                keel_sample = store.get_online(["u"], sample, at=now).to_pylist()
            finally:
                if backend == "redis":
                    store.online.clear("u")
                store.online.close()
            project = f"keelpeers_{tag}"
            cfg = {
                "repo": str(tmp / f"feast-{backend}"),
                "project": project,
                "view": "u",
                "online": backend,
                "redis": f"{host}:{port},db=0",
                "table": str(tmp / "online-features.parquet"),
                "ttl_s": 7 * 86400,
                "start_us": until_us - 8 * 86400 * 10**6,
                "end_us": until_us + 10**6,
                "keys": str(tmp / "keys.parquet"),
                "batches": [{"keys": k, "reps": reps} for k, reps in batches],
                "sample": sample,
            }
            (tmp / f"feast-{backend}.json").write_text(json.dumps(cfg))
            try:
                res = run_peer(
                    python, "feast_bench.py", "online", str(tmp / f"feast-{backend}.json")
                )
            finally:
                if backend == "redis":
                    # Whatever Feast's teardown left behind under this run's project name.
                    _drop_keys(host, port, f"*{project}")
            bad = _compare_sample(keel_sample, res["sample"], list(v.features))
            label = f"{peer} ({backend})"
            check = f"values agree on {len(sample) - bad}/{len(sample)} sampled users"
            for k, _ in batches:
                kname = "1 key" if k == 1 else f"{k} keys"
                p50, p99 = keel_lat[k]
                fl = res["lookups"][str(k)]
                rows.append(
                    Row(
                        SECTION,
                        f"online lookup p99, {kname}, {backend}",
                        "µs",
                        p99,
                        label,
                        fl["p99_us"],
                        goal=5.0,
                        note=check,
                    )
                )
                rows.append(
                    Row(
                        SECTION,
                        f"online lookup p50, {kname}, {backend}",
                        "µs",
                        p50,
                        label,
                        fl["p50_us"],
                        note=check,
                    )
                )
            rows.append(
                Row(
                    SECTION,
                    f"materialize {stats.events:,} events of {users:,} users, {backend}",
                    "s",
                    keel_mat,
                    label,
                    res["materialize_s"],
                    note=(
                        f"Feast loads the latest of {feast_rows:,} precomputed rows per user; "
                        f"the DuckDB precompute ({precompute_s:.1f} s) is not in its figure"
                    ),
                )
            )
            if backend == "sqlite":
                rows.append(
                    Row(
                        SECTION,
                        f"events → online store incl. Feast's precompute, {backend}",
                        "s",
                        keel_mat,
                        label,
                        precompute_s + res["materialize_s"],
                        note="Feast: DuckDB window precompute + materialize",
                    )
                )
            print(
                f"    {backend}: Keel materialize {keel_mat:.1f} s, "
                f"Feast {res['materialize_s']:.1f} s; {check}",
                flush=True,
            )
    log.close()
    return rows


def _compare_sample(
    keel: list[dict[str, Any]], feast: dict[str, list[Any]], feats: list[Feature]
) -> int:
    """How many sampled users have any feature value that differs between the two."""
    bad = 0
    for i, row in enumerate(keel):
        if any(_differ(row[f"u__{f.name}"], feast[f.name][i]) for f in feats):
            bad += 1
    return bad


# -- training sets ------------------------------------------------------------------------------


def _training(args: argparse.Namespace, tmp: Path, python: Path, peer: str) -> list[Row]:
    n = _sizes(args)
    users, n_events, n_labels = n["users"], n["events"], n["labels"]
    now = datetime.now(UTC)
    url = f"sqlite:///{tmp / 'train-log.db'}"
    print(f"  training: {n_events:,} events of {users:,} users over 30 days", flush=True)
    fill_log(url, n_events, users, 30, now)
    v = view(TRAINING_FEATURES)
    store = FeatureStore(open_log(url), views=[v], offline=tmp / "train-off")
    t = time.perf_counter()
    store.land()
    land_s = time.perf_counter() - t
    events = store.offline.read("pay").select(["ts", "user_id", "amount", "country"])
    t_end = int(now.timestamp() * 1e6)
    t = time.perf_counter()
    feast_rows = window_table(
        events, TRAINING_FEATURES, v.tile_us, t_end, tmp / "train-features.parquet", tmp
    )
    precompute_s = time.perf_counter() - t
    del events
    gc.collect()
    print(
        f"    landing {land_s:.1f} s; DuckDB precompute {feast_rows:,} rows in "
        f"{precompute_s:.1f} s",
        flush=True,
    )

    # The labels of bench_features.bench_training, with a row id to match the outputs.
    rng = np.random.default_rng(2)
    labels = pa.table(
        {
            "user_id": rng.integers(0, users, n_labels),
            "ts": pa.array(
                t_end - rng.integers(0, 23 * 86400 * 10**6, n_labels),
                pa.timestamp("us", tz="UTC"),
            ),
            "row_id": np.arange(n_labels, dtype=np.int64),
        }
    )
    pq.write_table(labels, tmp / "labels.parquet")

    # Feast first, while this process holds little memory; then Keel at the same sizes.
    feast = {kind: _feast_training(args, tmp, python, n_labels, kind) for kind in OFFLINE}
    keel_s: dict[int, float] = {}
    keel_out = pa.table({})
    for size in sorted({n_labels} | {d for d, _, _ in feast.values() if d}, reverse=True):
        t = time.perf_counter()
        out = store.training_set(labels.slice(0, size), ["u"], land=False)
        keel_s[size] = time.perf_counter() - t
        if size == n_labels:
            keel_out = out
        print(f"    Keel training set, {size:,} labels: {keel_s[size]:.1f} s", flush=True)
    rows = []
    for kind, (done, res, failures) in feast.items():
        label = f"{peer} ({OFFLINE[kind]})"
        size = done or n_labels
        what = f"training set, {size:,} labels over {n_events:,} events"
        tried = f"; Feast did not finish {'; '.join(failures)}" if failures else ""
        if done is None:
            note = f"Keel returned all {n_labels:,} label rows{tried}"
            rows.append(
                Row(SECTION, what, "s", keel_s[n_labels], label, float("nan"), goal=3.0, note=note)
            )
            continue
        counts = _compare_training(
            keel_out, pq.read_table(tmp / f"feast-training-{kind}.parquet"), TRAINING_FEATURES
        )
        note = (
            f"Keel returned {size:,}/{size:,} label rows; Feast returned "
            f"{counts['rows']:,} ({size - counts['matched']:,} dropped, {counts['null']:,} "
            f"with null features where Keel has values, {counts['differ']:,} with other "
            f"values){tried}"
        )
        if size != n_labels:
            note += f"; Keel did all {n_labels:,} labels in {keel_s[n_labels]:.1f} s"
        rows.append(
            Row(SECTION, what, "s", keel_s[size], label, res["seconds"], goal=3.0, note=note)
        )
        rows.append(
            Row(
                SECTION,
                f"{what}, incl. landing (Keel) / precompute (Feast)",
                "s",
                land_s + keel_s[size],
                label,
                precompute_s + res["seconds"],
                note=f"Keel lands the log as Parquet ({land_s:.1f} s); Feast's side precomputes "
                f"{feast_rows:,} window rows with DuckDB ({precompute_s:.1f} s)",
            )
        )
    return rows


def _feast_training(
    args: argparse.Namespace, tmp: Path, python: Path, n_labels: int, offline: str
) -> tuple[int | None, dict[str, Any], list[str]]:
    """Feast's training set with the ``offline`` store at ``n_labels``, else at half of it,
    and so on (five tries): the size it finished (None if none), its result, and why the
    bigger ones failed."""
    failures: list[str] = []
    size = n_labels
    for _ in range(5):
        cfg = {
            "repo": str(tmp / f"feast-training-{offline}-{size}"),
            "project": f"keelpeers_{uuid.uuid4().hex[:8]}",
            "view": "u",
            "online": "sqlite",
            "offline": offline,
            "table": str(tmp / "train-features.parquet"),
            "ttl_s": 7 * 86400,
            "labels": str(tmp / "labels.parquet"),
            "n_labels": size,
            "out": str(tmp / f"feast-training-{offline}.parquet"),
            "mem_gib": args.features_peer_mem_gib,
        }
        path = tmp / f"feast-training-{offline}-{size}.json"
        path.write_text(json.dumps(cfg))
        t = time.perf_counter()
        try:
            res = run_peer(
                python, "feast_bench.py", "training", str(path), timeout=args.features_peer_timeout
            )
        except subprocess.TimeoutExpired:
            why = f"{size:,} labels within {args.features_peer_timeout:.0f} s"
        except RuntimeError as exc:
            why = f"{size:,} labels ({exc}, after {time.perf_counter() - t:.0f} s)"
        else:
            if "error" not in res:
                print(
                    f"    Feast ({offline}) training set, {size:,} labels: {res['seconds']:.1f} s",
                    flush=True,
                )
                return size, res, failures
            why = f"{size:,} labels ({res['error']}, after {time.perf_counter() - t:.0f} s)"
        print(f"    Feast ({offline}) did not finish {why}", flush=True)
        failures.append(why)
        size //= 2
        gc.collect()
    return None, {}, failures


def _compare_training(keel: pa.Table, feast: pa.Table, feats: list[Feature]) -> dict[str, int]:
    """Feast's rows, those matching a label row, those with null features where Keel has
    values, and those whose values differ otherwise (floats to a relative 1e-9)."""
    con = duckdb.connect()
    con.register("k", keel.replace_schema_metadata(None))
    con.register("f", feast)
    null = " AND ".join(f'f."{f.name}" IS NULL' for f in feats)
    has = " OR ".join(f'k."u__{f.name}" IS NOT NULL' for f in feats)
    differ = " OR ".join(
        f'(k."u__{f.name}" IS NULL) != (f."{f.name}" IS NULL) OR '
        f'abs(k."u__{f.name}"::DOUBLE - f."{f.name}"::DOUBLE) > '
        f'1e-9 * greatest(1, abs(k."u__{f.name}"::DOUBLE))'
        for f in feats
    )
    matched, null_rows, differ_rows = con.execute(
        f"SELECT count(DISTINCT row_id), count(*) FILTER (WHERE ({null}) AND ({has})), "
        f"count(*) FILTER (WHERE NOT (({null}) AND ({has})) AND ({differ})) "
        "FROM f JOIN k USING (row_id)"
    ).fetchall()[0]
    total = con.execute("SELECT count(*) FROM f").fetchall()[0][0]
    con.close()
    return {
        "rows": int(total),
        "matched": int(matched),
        "null": int(null_rows),
        "differ": int(differ_rows),
    }


def run(args: argparse.Namespace) -> list[Row]:
    """Build the data, run Keel here and Feast in its venv, and return the rows."""
    parts = {p.strip() for p in args.features_parts.split(",") if p.strip()}
    python = peer_python("feast", PINS)
    peer = f"Feast {version(python, 'feast')}"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="keel-peers-features-") as d:
        tmp = Path(d)
        if "online" in parts:
            rows += _online(args, tmp, python, peer)
        if "training" in parts:
            rows += _training(args, tmp, python, peer)
    # The shared table has no room for notes; they matter here (rows dropped, values checked).
    print("  notes:")
    for r in rows:
        if r.note:
            print(f"    {r.measure} vs {r.peer}: {r.note}")
    return rows
