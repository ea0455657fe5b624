"""Vector index: recall@10 against exact search, build time, and single-query p50/p99.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_index.py [--sizes 10000,100000,
1000000] [--dims 64,384] [--compare]``. Items are clustered unit vectors (as item embeddings
are); 200 queries drawn the same way; exact top-10 by NumPy. ``--compare`` also measures
LanceDB (IVF-HNSW-SQ) and faiss (HNSW) beside usearch when they are installed
(``pip install lancedb faiss-cpu``): the figures behind choosing usearch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np

from keel.index import VectorIndex, exact_search

QUERIES = 200


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(max(n // 500, 20), dim))
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def truth(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.concatenate([exact_search(x, q[i : i + 25], 10).keys for i in range(0, len(q), 25)])


def measure(
    name: str,
    build_s: float,
    search: Callable[[np.ndarray], np.ndarray],
    q: np.ndarray,
    exact: np.ndarray,
) -> None:
    found = [search(q[i : i + 1]) for i in range(len(q))]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, exact, strict=True)])
    lat = []
    for _ in range(3):
        for i in range(len(q)):
            start = time.perf_counter()
            search(q[i : i + 1])
            lat.append(time.perf_counter() - start)
    print(
        f"  {name:8s} build {build_s:7.2f} s  recall@10 {recall:.3f}  "
        f"p50 {np.median(lat) * 1e3:6.3f} ms  p99 {np.percentile(lat, 99) * 1e3:6.3f} ms"
    )


def run(n: int, dim: int, compare: bool) -> None:
    x = clustered(n, dim, seed=0)
    q = clustered(QUERIES, dim, seed=1)
    exact = truth(x, q)
    print(f"{n:,} items × {dim}:")
    start = time.perf_counter()
    index = VectorIndex.build(np.arange(n), x, threads=2)
    measure("usearch", time.perf_counter() - start, lambda v: index.search(v, 10).keys[0], q, exact)
    measure("exact", 0.0, lambda v: exact_search(x, v, 10).keys[0], q, exact)
    if not compare:
        return
    try:
        import faiss
    except ImportError:
        print("  faiss    not installed")
    else:
        faiss.omp_set_num_threads(2)
        start = time.perf_counter()
        f = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        f.hnsw.efConstruction = 128
        f.add(x)
        f.hnsw.efSearch = 128
        built = time.perf_counter() - start
        faiss.omp_set_num_threads(1)
        measure("faiss", built, lambda v: f.search(v, 10)[1][0], q, exact)
    try:
        import lancedb
        import pyarrow as pa
    except ImportError:
        print("  lancedb  not installed")
        return
    db = lancedb.connect(tempfile.mkdtemp())
    start = time.perf_counter()
    table = db.create_table(
        "items",
        pa.table(
            {
                "id": np.arange(n),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
            }
        ),
    )
    table.create_index(metric="dot", index_type="IVF_HNSW_SQ", num_partitions=max(1, n // 20_000))
    built = time.perf_counter() - start

    def lance(v: np.ndarray) -> np.ndarray:
        found = table.search(v[0]).metric("dot").limit(10).select(["id"]).to_arrow()
        return found["id"].to_numpy()

    measure("lancedb", built, lance, q, exact)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dims", default="64,384")
    parser.add_argument(
        "--max-cells",
        type=float,
        default=1e8,
        help="skip sizes whose items × dim exceed this (1M × 384 builds for minutes)",
    )
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    for dim in [int(d) for d in args.dims.split(",")]:
        for n in [int(s) for s in args.sizes.split(",")]:
            if n * dim > args.max_cells:
                print(f"{n:,} items × {dim}: skipped (over --max-cells)")
                continue
            run(n, dim, args.compare)


if __name__ == "__main__":
    main()
