"""The prediction log: a sample of served requests, as the model saw them, on a log topic.

Each route with a ``monitor`` setting writes one record per predicted row to
``keel.predictions.<route>``: when it was served, a request id that outcomes join on, the
version that answered, the latency, the entity it was about, every model input exactly as
served (joined features included), the outputs, and each joined feature's staleness.

The request path only appends a reference to a bounded queue; a background thread turns the
queue into one Arrow table per flush (column-wise, no per-row Python for numbers) and appends
it, so logging never waits on storage.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import random
import threading
import uuid
from typing import Any

import numpy as np
import pyarrow as pa

from keel.clock import Clock
from keel.config import MonitorConfig
from keel.errors import TopicNotFoundError
from keel.log import Topic
from keel.prediction_log import KEY_PREFIX, OUTPUT_PREFIX, STALE_PREFIX, Columns, prediction_topic
from keel.serving.routes import Deployed, Rows, Tensors

__all__ = ["PredictionLog", "prediction_columns"]

logger = logging.getLogger(__name__)


def prediction_columns(deployed: Deployed, joined: list[str], keys: list[str]) -> Columns:
    """The columns a route's records have, from its model's declared inputs and outputs."""
    runtime = deployed.runtime
    names = list(getattr(runtime, "feature_names", []) or [])
    tensors = {} if names else {s.name: _field_type(s.datatype, s.shape) for s in runtime.inputs}
    outputs = {}
    for spec in runtime.outputs:
        sample = (deployed.sample_output or {}).get(spec.name)
        shape = spec.shape if sample is None else (-1, *np.shape(sample)[1:])
        outputs[spec.name] = _field_type(spec.datatype, shape)
    return Columns(names, tensors, outputs, [f for f in joined if f in names], list(keys))


def _field_type(datatype: str, shape: tuple[int, ...]) -> str:
    if datatype == "BYTES":
        return "string?"
    if len(shape) <= 1 or (len(shape) == 2 and shape[1] == 1):
        return "float64?"
    if len(shape) == 2 and shape[1] > 0:
        return f"vector[float32, {shape[1]}]"
    raise ValueError(f"cannot log a tensor of shape {list(shape)}")


# (request, model input, outputs, version, latency ms, staleness per feature, served at)
Item = tuple[Tensors | Rows, Tensors, dict[str, np.ndarray], str, float, Any, float]


class PredictionLog:
    """Writes a route's sampled predictions to its topic from a background thread."""

    def __init__(
        self,
        route: str,
        log_: Any,
        columns: Columns,
        config: MonitorConfig,
        *,
        clock: Clock,
        flush_s: float = 0.5,
        max_pending: int = 10_000,
    ) -> None:
        self.route = route
        self.log = log_
        self.columns = columns
        self.config = config
        self.clock = clock
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.topic = prediction_topic(route, columns)
        try:
            existing = log_.topic(self.topic.name)
        except TopicNotFoundError:
            existing = log_.create_topic(self.topic, exist_ok=True)
        if existing.fields != self.topic.fields:
            # An earlier model of this route logged other columns: keep its records under
            # their own schema and start this model's log beside them.
            self.topic = Topic(
                f"{self.topic.name}.{_short_hash(self.topic.fields)}",
                self.topic.fields,
                event_time="ts",
                retention_ms=self.topic.retention_ms,
            )
            log_.create_topic(self.topic, exist_ok=True)
        self.written = 0
        self.dropped = 0
        self.skipped = 0
        self._rng = random.Random()
        self._pending: collections.deque[Item] = collections.deque()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one flush at a time (thread and close)
        self._thread = threading.Thread(
            target=self._run, name=f"keel-predictions-{route}", daemon=True
        )
        self._thread.start()

    def offer(
        self,
        request: Tensors | Rows,
        used: Tensors,
        outputs: dict[str, np.ndarray],
        version: str,
        latency_ms: float,
        staleness: Any,
    ) -> None:
        """Queue one answered request (O(1): the thread does the rest)."""
        if self.config.sample < 1 and self._rng.random() >= self.config.sample:
            return
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        self._pending.append(
            (request, used, outputs, version, latency_ms, staleness, self.clock.now())
        )

    def flush(self) -> int:
        """Append everything queued; returns the number of records written."""
        with self._lock:
            items = [self._pending.popleft() for _ in range(len(self._pending))]
            if not items:
                return 0
            try:
                table = self._table(items)
            except (KeyError, ValueError):
                # Some request's inputs are not the ones the log was made for (a version
                # swapped in with other inputs): those are skipped, the others written.
                tables = []
                for item in items:
                    try:
                        tables.append(self._table([item]))
                    except (KeyError, ValueError) as exc:
                        self.skipped += item[1].n
                        logger.error(
                            "route %s: prediction log skipped a request: %s", self.route, exc
                        )
                if not tables:
                    return 0
                table = pa.concat_tables(tables)
            self.log.append(self.topic.name, table)
            self.written += table.num_rows
            return table.num_rows

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except Exception:
                logger.exception("route %s: writing the prediction log failed", self.route)

    def _table(self, items: list[Item]) -> pa.Table:
        cols = self.columns
        n = [used.n for _, used, *_ in items]
        total = sum(n)
        data: dict[str, Any] = {
            "ts": pa.array(
                np.repeat([int(at * 1_000_000) for *_, at in items], n).astype("datetime64[us]"),
                pa.timestamp("us", tz="UTC"),
            ),
            "request_id": self._ids(items),
            "version": np.repeat([v for _, _, _, v, *_ in items], n),
            "latency_ms": np.repeat([ms for _, _, _, _, ms, *_ in items], n),
        }
        for key in cols.keys:
            data[KEY_PREFIX + key] = self._keys(items, key)
        if cols.features:
            first = next(iter(items[0][1].arrays))
            matrix = np.concatenate([used.arrays[first] for _, used, *_ in items])
            if matrix.shape[1] != len(cols.features):
                raise ValueError(
                    f"the model takes {matrix.shape[1]} features, the log has {len(cols.features)}"
                )
            for j, name in enumerate(cols.features):
                data[name] = matrix[:, j]
        for name, kind in cols.tensors.items():
            data[name] = _column(np.concatenate([used.arrays[name] for _, used, *_ in items]), kind)
        for name, kind in cols.outputs.items():
            data[OUTPUT_PREFIX + name] = _column(
                np.concatenate([out[name] for _, _, out, *_ in items]), kind
            )
        for name in cols.stale:
            values = []
            for (_, _, _, _, _, stale, _), k in zip(items, n, strict=True):
                got = (stale or {}).get(name)
                values.append(
                    np.full(k, np.nan)
                    if got is None
                    else np.array([np.nan if s is None else s for s in got], dtype=np.float64)
                )
            data[STALE_PREFIX + name] = np.concatenate(values)
        if any(len(v) != total for v in data.values()):
            raise ValueError("inputs and outputs disagree on the number of rows")
        return pa.table(
            {k: data[k] for k in self.topic.fields},
            schema=self.topic.schema,
        )

    def _ids(self, items: list[Item]) -> list[str]:
        field = self.config.id
        ids: list[str] = []
        for request, used, *_ in items:
            if field is not None and isinstance(request, Rows):
                ids.extend(
                    str(r[field]) if r.get(field) is not None else uuid.uuid4().hex
                    for r in request.rows
                )
            else:
                ids.extend(uuid.uuid4().hex for _ in range(used.n))
        return ids

    def _keys(self, items: list[Item], key: str) -> list[str | None]:
        out: list[str | None] = []
        for request, used, *_ in items:
            if isinstance(request, Rows):
                out.extend(None if r.get(key) is None else str(r[key]) for r in request.rows)
            else:
                out.extend([None] * used.n)
        return out


def _column(values: np.ndarray, kind: str) -> Any:
    if kind.startswith("vector"):
        flat = np.ascontiguousarray(values, dtype=np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    if kind.startswith("string"):
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]
    return np.asarray(values, dtype=np.float64).reshape(len(values), -1)[:, 0]


def _short_hash(fields: dict[str, str]) -> str:
    return hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:8]
