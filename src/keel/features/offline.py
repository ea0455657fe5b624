"""The offline store: the log's history as Parquet, by topic and event date.

``land`` copies what is new in the log into files named by partition and offset range
(``<topic>/date=YYYY-MM-DD/p<partition>-<first>-<last>.parquet``) and then records, in a small
manifest written by atomic rename, the next offset of each partition. A crash between the two
leaves files past the manifest; the next ``land`` removes them before writing, so history is
never duplicated or lost. Files keep ``_partition`` and ``_offset``, which the point-in-time
join needs to apply the same lateness rule as the materializer.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from keel.errors import NotFoundError
from keel.log import Log

__all__ = ["OfflineStore"]

_FILE = re.compile(r"^p(\d+)-(\d+)-(\d+)\.parquet$")
_MANIFEST = "_landed.json"
DAY_US = 86_400 * 1_000_000


class OfflineStore:
    """Parquet history under ``root`` (a local folder)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, topic: str) -> Path:
        return self.root / topic

    def landed(self, topic: str) -> dict[int, int]:
        """The next offset not yet landed, per partition."""
        path = self._dir(topic) / _MANIFEST
        if not path.exists():
            return {}
        raw = msgspec.json.decode(path.read_bytes(), type=dict[str, int])
        return {int(p): o for p, o in raw.items()}

    def _write_manifest(self, topic: str, landed: dict[int, int]) -> None:
        path = self._dir(topic) / _MANIFEST
        tmp = path.with_name(f".{_MANIFEST}.{uuid.uuid4().hex}")
        tmp.write_bytes(msgspec.json.encode({str(p): o for p, o in sorted(landed.items())}))
        os.replace(tmp, path)

    def files(self, topic: str) -> list[Path]:
        return sorted(self._dir(topic).glob("date=*/p*.parquet"))

    def land(self, log: Log, topic: str, *, chunk: int = 500_000) -> int:
        """Copy the log's new records of ``topic`` into Parquet; return how many."""
        t = log.topic(topic)
        landed = self.landed(topic)
        self._dir(topic).mkdir(parents=True, exist_ok=True)
        # Files written after the manifest's offsets belong to an interrupted run.
        for f in self.files(topic):
            m = _FILE.match(f.name)
            if m and int(m.group(2)) >= landed.get(int(m.group(1)), 0):
                f.unlink()
        total = 0
        for p in range(t.partitions):
            offset = max(landed.get(p, 0), log.start_offsets(topic)[p])
            while True:
                batch = log.read(topic, p, offset, chunk)
                if batch.num_rows == 0:
                    break
                self._write(topic, t.event_time, p, batch)
                offset = int(batch.column("_offset")[-1].as_py()) + 1
                total += batch.num_rows
            landed[p] = offset
        self._write_manifest(topic, landed)
        return total

    def _write(self, topic: str, event_time: str, partition: int, batch: pa.Table) -> None:
        ts = batch.column(event_time).cast(pa.int64()).to_numpy()
        day = np.floor_divide(ts, DAY_US)
        for d in np.unique(day):
            rows = batch.filter(pa.array(day == d)) if len(np.unique(day)) > 1 else batch
            offsets = rows.column("_offset")
            date = np.datetime64(int(d), "D").astype(str)
            folder = self._dir(topic) / f"date={date}"
            folder.mkdir(exist_ok=True)
            name = f"p{partition}-{pc.min(offsets).as_py():012d}-{pc.max(offsets).as_py():012d}"
            tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
            pq.write_table(rows, tmp, compression="zstd")
            os.replace(tmp, folder / f"{name}.parquet")

    def glob(self, topic: str) -> str:
        """A glob of the topic's Parquet files, for DuckDB's ``read_parquet``."""
        if not self.files(topic):
            raise NotFoundError(
                f"the offline store has no history for topic {topic!r} under {self.root} "
                "(land it first: `keel features backfill` or FeatureStore.land())"
            )
        return str(self._dir(topic) / "date=*" / "p*.parquet")

    def read(self, topic: str, schema: pa.Schema | None = None) -> pa.Table:
        """The whole landed history of ``topic`` as one table (empty, in ``schema``, when
        nothing has landed yet)."""
        files = self.files(topic)
        if not files:
            if schema is None:
                raise NotFoundError(f"the offline store has no history for topic {topic!r}")
            return schema.empty_table()
        return pq.ParquetDataset(files).read()
