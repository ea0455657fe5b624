"""Feast's side of the ``features`` section of ``make bench-peers``; runs in Feast's own venv.

``feast_bench.py online CONFIG.json`` registers a feature view over a Parquet file of
precomputed window aggregates, times ``materialize`` into the online store named in the
config (SQLite or Redis), then times ``get_online_features`` for the key batches given, and
reads a few keys back so the harness can check the values against Keel's.

``feast_bench.py training CONFIG.json`` registers the same kind of view over the training
aggregates and times ``get_historical_features(...).to_df()`` with the offline store named
in the config (``file``, i.e. Dask, or ``duckdb``) over the labels given, then writes what
Feast returned for the harness to compare. A failure there (memory, mostly) is reported as
``{"error": ...}`` so that the harness can try fewer labels.

Data comes and goes as Parquet files in the harness's temporary folder; the last line of
stdout is one JSON object with the timings.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Feast reports usage over the network unless told not to; this benchmark stays on loopback.
os.environ.setdefault("FEAST_USAGE", "False")

from feast import Entity, FeatureStore, FeatureView, Field, FileSource
from feast.types import Float64, Int64, String
from feast.value_type import ValueType

TYPES = {"int64": Int64, "double": Float64, "string": String, "large_string": String}


def _yaml(cfg: dict[str, Any]) -> str:
    """feature_store.yaml for the config: a file registry cached forever (so lookups never
    re-read it), the file offline store, and the online store asked for."""
    if cfg["online"] == "redis":
        online = f'  type: redis\n  connection_string: "{cfg["redis"]}"\n'
    else:
        online = f"  type: sqlite\n  path: {cfg['repo']}/online.db\n"
    return (
        f"project: {cfg['project']}\n"
        "provider: local\n"
        "registry:\n"
        f"  path: {cfg['repo']}/registry.db\n"
        "  cache_ttl_seconds: 0\n"
        f"online_store:\n{online}"
        f"offline_store:\n  type: {cfg.get('offline', 'file')}\n"
        "entity_key_serialization_version: 3\n"
    )


def _store(cfg: dict[str, Any]) -> tuple[FeatureStore, FeatureView]:
    """A Feast repo in ``cfg['repo']`` with one entity and one view over ``cfg['table']``."""
    repo = Path(cfg["repo"])
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(_yaml(cfg))
    schema = pq.read_schema(cfg["table"])
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(path=cfg["table"], timestamp_field="event_timestamp")
    fields = [
        Field(name=f.name, dtype=TYPES[str(f.type)])
        for f in schema
        if f.name not in ("user_id", "event_timestamp")
    ]
    fv = FeatureView(
        name=cfg["view"],
        entities=[user],
        ttl=timedelta(seconds=cfg["ttl_s"]),
        schema=fields,
        source=source,
        online=True,
    )
    store = FeatureStore(repo_path=str(repo))
    store.apply([user, fv])
    return store, fv


def _pct(lat: list[float], q: float) -> float:
    return float(np.percentile(lat, q))


def online(cfg: dict[str, Any]) -> dict[str, Any]:
    store, fv = _store(cfg)
    refs = [f"{fv.name}:{f.name}" for f in fv.features]
    start = datetime.fromtimestamp(cfg["start_us"] / 1e6, UTC)
    end = datetime.fromtimestamp(cfg["end_us"] / 1e6, UTC)
    t = time.perf_counter()
    store.materialize(start_date=start, end_date=end)
    materialize_s = time.perf_counter() - t
    out: dict[str, Any] = {"materialize_s": materialize_s, "lookups": {}}
    try:
        keys = pq.read_table(cfg["keys"])
        for batch in cfg["batches"]:
            n, reps = batch["keys"], batch["reps"]
            ks = keys.column(f"k{n}").to_numpy()[: n * reps].reshape(reps, n).tolist()
            for k in ks[: min(50, reps)]:  # warm up: registry load, connections, caches
                store.get_online_features(features=refs, entity_rows={"user_id": k})
            lat = []
            for k in ks:
                t0 = time.perf_counter_ns()
                # The columnar form of entity_rows is Feast's fastest; the response holds the
                # decoded values, which is what Keel's OnlineResult holds too.
                store.get_online_features(features=refs, entity_rows={"user_id": k})
                lat.append((time.perf_counter_ns() - t0) / 1e3)
            out["lookups"][str(n)] = {"p50_us": _pct(lat, 50), "p99_us": _pct(lat, 99)}
        sample = [int(k) for k in cfg["sample"]]
        got = store.get_online_features(features=refs, entity_rows={"user_id": sample}).to_dict()
        out["sample"] = {k: [None if _nan(x) else x for x in v] for k, v in got.items()}
    finally:
        if cfg["online"] == "redis":
            # Removes this project's keys only (the key names end with the project name).
            store.teardown()
    return out


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def _watch_memory(gib: float) -> None:
    """End this process, reporting why, once its resident memory passes ``gib``: a shared
    2-core, 24 GiB machine must not reach the kernel's OOM killer. (An address-space limit
    would not do: the libraries reserve far more address space than they touch.)"""
    cap = gib * 2**30
    page = os.sysconf("SC_PAGE_SIZE")

    def watch() -> None:
        while True:
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * page
            if rss > cap:
                print(json.dumps({"error": f"resident memory passed a {gib:g} GiB cap"}))
                sys.stdout.flush()
                os._exit(0)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def training(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg.get("mem_gib"):
        _watch_memory(cfg["mem_gib"])
    if cfg.get("offline") == "duckdb" and cfg.get("mem_gib"):
        # Feast's DuckDB store runs on ibis's default DuckDB connection; left at its default
        # (80% of the machine's memory) it would fail at the cap instead of spilling to disk.
        import ibis

        con = ibis.get_backend()
        con.raw_sql(f"SET memory_limit = '{int(cfg['mem_gib'] * 0.6 * 1024)}MB'")
        con.raw_sql(f"SET temp_directory = '{cfg['repo']}/duckdb-spill'")
    store, fv = _store(cfg)
    refs = [f"{fv.name}:{f.name}" for f in fv.features]
    labels = pq.read_table(cfg["labels"]).slice(0, cfg["n_labels"]).to_pandas()
    labels = labels.rename(columns={"ts": "event_timestamp"})
    t = time.perf_counter()
    df = store.get_historical_features(entity_df=labels, features=refs).to_df()
    seconds = time.perf_counter() - t
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, cfg["out"])
    return {"seconds": seconds, "rows": len(df)}


def main() -> None:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    command, path = sys.argv[1], sys.argv[2]
    cfg = json.loads(Path(path).read_text())
    if command == "online":
        result = online(cfg)
    else:
        try:
            result = training(cfg)
        except MemoryError:
            # Say so, so that the harness can try a smaller size.
            result = {"error": "MemoryError"}
        except Exception as exc:  # e.g. DuckDB's out-of-memory error under the same cap
            result = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
