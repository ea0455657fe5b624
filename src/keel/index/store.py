"""One vector index per model version, on disk, published atomically.

An index is built for one version's item embeddings and never changed afterwards: a refreshed
embedding table is a new (child) version with its own index. A version's index is written
into a temporary folder beside its final place and renamed into it, so a reader finds either
no index or the whole of one — and a route that swaps versions swaps their indexes with them,
never mixing two versions' embeddings.

Example
-------
>>> import tempfile
>>> import numpy as np
>>> store = IndexStore(tempfile.mkdtemp())
>>> vectors = np.eye(4, dtype=np.float32)
>>> _ = store.publish("recommend", 1, np.array([7, 8, 9, 10]), vectors)
>>> store.open("recommend", 1).search(vectors[2], k=1).keys.tolist()
[[9]]
>>> store.versions("recommend")
[1]
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from keel.errors import ConflictError, NotFoundError
from keel.index.vector import VectorIndex

__all__ = ["IndexStore"]

INDEX_FILE = "index.usearch"
META_FILE = "meta.json"


class IndexStore:
    """Indexes under ``root/<model>/<version>/`` (an index file and its metadata)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._open: dict[tuple[str, int], VectorIndex] = {}
        self._lock = threading.Lock()

    def path(self, model: str, version: int) -> Path:
        return self.root / model / str(int(version))

    def publish(
        self, model: str, version: int, keys: Any, vectors: Any, **options: Any
    ) -> dict[str, Any]:
        """Build ``model@version``'s index and publish it whole; an existing one is a
        :class:`ConflictError` (a version's index never changes)."""
        final = self.path(model, version)
        if final.exists():
            raise ConflictError(
                f"{model}@{version} already has an index at {final}; an index belongs to one "
                "version — register a new version for new embeddings"
            )
        start = time.perf_counter()
        index = VectorIndex.build(keys, vectors, **options)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        index.save(tmp / INDEX_FILE)
        meta = {
            "model": model,
            "version": int(version),
            "items": len(index),
            "dim": index.dim,
            "metric": index.metric,
            "build_s": time.perf_counter() - start,
            "built_at": time.time(),
        }
        (tmp / META_FILE).write_text(json.dumps(meta))
        try:
            os.rename(tmp, final)  # atomic; fails if another writer published first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConflictError(f"{model}@{version}'s index was published meanwhile") from None
        return meta

    def meta(self, model: str, version: int) -> dict[str, Any]:
        path = self.path(model, version) / META_FILE
        if not path.is_file():
            raise NotFoundError(
                f"{model}@{version} has no vector index (versions with one: "
                f"{', '.join(map(str, self.versions(model))) or 'none'})"
            )
        return json.loads(path.read_text())

    def open(self, model: str, version: int) -> VectorIndex:
        """The version's index, memory-mapped read-only (opened once, then shared)."""
        key = (model, int(version))
        with self._lock:
            if key not in self._open:
                meta = self.meta(model, version)
                self._open[key] = VectorIndex.open(
                    self.path(model, version) / INDEX_FILE, metric=meta["metric"]
                )
            return self._open[key]

    def versions(self, model: str) -> list[int]:
        folder = self.root / model
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / META_FILE).is_file()
        )

    def drop(self, model: str, version: int) -> None:
        """Remove a version's index (a retired version's)."""
        with self._lock:
            self._open.pop((model, int(version)), None)
        shutil.rmtree(self.path(model, version), ignore_errors=True)
