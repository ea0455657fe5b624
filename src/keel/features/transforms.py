"""Reusable source transforms.

:class:`TextEmbeddingLookup` attaches to each event the embedding of a text found in another
topic — for example each viewed item's description — so a view can aggregate a user's mean
item embedding over 7 days. It is a plain function of the event batch (row by row), so the
offline and the online paths attach exactly the same vectors.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from keel.errors import ValidationError
from keel.log import Log

__all__ = ["TextEmbeddingLookup"]


class TextEmbeddingLookup:
    """Attach ``into`` = embed(text of the ``key`` in ``topic``) to each event.

    Parameters
    ----------
    topic, key, text
        Where the texts live: the latest ``text`` per ``key`` in ``topic``.
    embed
        A function from a list of texts to an (n, dim) array, e.g. :class:`keel.embeddings.MiniLM`.
    dim
        The embedding size (the transform declares ``vector[float32, dim]``).
    into
        The column to add; ``on`` is the event column holding the key (default ``key``).
    """

    def __init__(
        self,
        *,
        topic: str,
        key: str,
        text: str,
        embed: Callable[[Sequence[str]], np.ndarray],
        dim: int,
        into: str,
        on: str | None = None,
        model: str = "",
    ) -> None:
        self.topic, self.key, self.text, self.into = topic, key, text, into
        self.on = on or key
        self.embed = embed
        self.dim = dim
        self.model = model
        self._log: Log | None = None
        self._keys = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.__name__ = f"embed {topic}.{text} by {key}"

    @property
    def fields(self) -> dict[str, str]:
        return {self.into: f"vector[float32, {self.dim}]"}

    def fingerprint_text(self) -> str:
        """What the view fingerprint records for this transform."""
        return (
            f"TextEmbeddingLookup(topic={self.topic}, key={self.key}, text={self.text}, "
            f"on={self.on}, into={self.into}, dim={self.dim}, model={self.model})"
        )

    def bind(self, log: Log) -> None:
        """Read texts from ``log`` (called by the feature store)."""
        self._log = log

    def refresh(self) -> None:
        """Load the latest text per key from the topic and embed the ones not seen yet."""
        if self._log is None:
            raise ValidationError(
                f"transform {self.__name__!r} is not bound to a log (use it in a FeatureStore)"
            )
        tables = [
            t
            for t in (
                self._log.read(self.topic, p, 0, 10**9)
                for p in range(self._log.topic(self.topic).partitions)
            )
            if t.num_rows
        ]
        if not tables:
            return
        table = pa.concat_tables(tables).sort_by(
            [("_partition", "ascending"), ("_offset", "ascending")]
        )
        keys = table.column(self.key).to_numpy(zero_copy_only=False)
        texts = table.column(self.text).to_pylist()
        latest: dict[Any, str] = dict(zip(keys.tolist(), texts, strict=True))
        fresh = sorted({t for t in latest.values() if t is not None and _h(t) not in self._cache})
        if fresh:
            vectors = np.asarray(self.embed(fresh), dtype=np.float32)
            if vectors.shape != (len(fresh), self.dim):
                raise ValidationError(
                    f"transform {self.__name__!r}: embed returned shape {vectors.shape}, "
                    f"expected ({len(fresh)}, {self.dim})"
                )
            for t, v in zip(fresh, vectors, strict=True):
                self._cache[_h(t)] = v
        order = sorted(latest)
        self._keys = np.array(order)
        zero = np.zeros(self.dim, dtype=np.float32)
        self._vectors = (
            np.stack([self._cache[_h(latest[k])] if latest[k] is not None else zero for k in order])
            if order
            else self._vectors
        )

    def __call__(self, events: pa.Table) -> pa.Table:
        ids = events.column(self.on).to_numpy(zero_copy_only=False)
        with self._lock:
            pos, found = self._find(ids)
            if not found.all():
                self.refresh()
                pos, found = self._find(ids)
            vectors = (
                self._vectors[pos]
                if len(self._vectors)
                else np.zeros((len(ids), self.dim), np.float32)
            )
        flat = pa.array(vectors.astype(np.float32).ravel())
        column = pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=pa.array(~found))
        return events.append_column(self.into, column)

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(self._keys) == 0:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        pos = np.clip(np.searchsorted(self._keys, ids), 0, len(self._keys) - 1)
        return pos, self._keys[pos] == ids


def _h(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()
