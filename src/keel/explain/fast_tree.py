"""Exact TreeSHAP for LightGBM with per-leaf tables built once per model (Fast TreeSHAP v2).

LightGBM's own ``pred_contrib`` runs the TreeSHAP recursion (Lundberg et al. 2020) for every
row: O(leaves × depth²) per tree, about four times a prediction's cost. Yang (2021, "Fast
TreeSHAP") observed that in the path-dependent value function a leaf's contribution depends on
the row only through *which* of the unique features on the leaf's path the row agrees with — a
bitmask of at most ``depth`` bits — so everything else can be computed once per model. Here,
for a leaf of value ``w`` whose path splits on the unique features ``F`` (``d`` of them), with
``z_j`` the share of the training rows that follow the path's splits on feature ``j`` and
``O`` the features the row agrees with:

    φ_i = w · (1[i ∈ O] − z_i) · Π_{j ∉ O ∪ {i}} z_j · G(O \\ {i})
    G(A) = Σ_{S ⊆ A} |S|! (d − |S| − 1)! / d! · Π_{j ∈ A \\ S} z_j

Both products (``P``) and ``G`` are tabulated over all ``2^d`` masks of each leaf at load. A
row then costs one pass over the trees' splits (its mask, path by path) and ``d`` table reads
per leaf: O(leaves × depth), as cheap as a handful of predictions. The values are the same
Shapley values LightGBM computes (tested to 1e-9 against ``pred_contrib``, including missing
values, zero-as-missing splits and features split on twice on a path).

Written with numba rather than numpy because the work is a per-row walk over a few thousand
nodes: vectorized numpy costs more in call overhead than the walk itself. Models this does not
cover — categorical or linear trees, random-forest mode, tables over the memory budget — keep
LightGBM's native contributions (:func:`compile_forest` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from math import factorial
from typing import Any

import numpy as np

__all__ = ["FastForest", "compile_forest"]

# LightGBM's kZeroThreshold (a float 1e-35) as the double it compares against.
_ZERO = float(np.float32(1e-35))
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
# Each leaf's tables hold 2 × 2^d doubles; past this many in all (64 MiB) the native call
# is used instead of tables that would crowd the server's memory.
TABLE_BUDGET = 8 << 20
MAX_PATH_FEATURES = 20


@dataclass(frozen=True)
class FastForest:
    """The trees of one class flattened into arrays, with each leaf's tables."""

    node_feature: np.ndarray  # int64[N], internal nodes, parents before children
    node_threshold: np.ndarray  # float64[N]
    node_missing: np.ndarray  # int64[N]: 0 none, 1 zero, 2 NaN
    node_default_left: np.ndarray  # bool[N]
    node_slot: np.ndarray  # int64[N]: the bit its feature takes on paths through it
    node_left: np.ndarray  # int64[N]: >= 0 an internal node, < 0 a leaf (~leaf)
    node_right: np.ndarray
    tree_start: np.ndarray  # int64[T]: each tree's internal nodes, [start, end)
    tree_end: np.ndarray
    leaf_depth: np.ndarray  # int64[L]: unique features on its path
    leaf_offset: np.ndarray  # int64[L]: into leaf_feature / leaf_z
    leaf_feature: np.ndarray  # int64[sum d]
    leaf_z: np.ndarray  # float64[sum d]
    table_offset: np.ndarray  # int64[L]: into table
    table: np.ndarray  # float64: per leaf, per mask, the d values φ_i
    base_value: float
    width: int

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        """Per-row Shapley values, with the base value as the last column (``pred_contrib``'s
        layout)."""
        out = np.zeros((len(rows), self.width + 1))
        _kernels()[1](
            np.ascontiguousarray(rows, dtype=np.float64),
            out,
            self.node_feature,
            self.node_threshold,
            self.node_missing,
            self.node_default_left,
            self.node_slot,
            self.node_left,
            self.node_right,
            self.tree_start,
            self.tree_end,
            self.leaf_depth,
            self.leaf_offset,
            self.leaf_feature,
            self.table_offset,
            self.table,
        )
        out[:, -1] = self.base_value
        return out


def compile_forest(booster: Any) -> FastForest | None:
    """The tables for a LightGBM booster's last class, or None when it needs the native path."""
    dump = booster.dump_model()
    if dump.get("average_output"):
        return None
    classes = int(dump.get("num_tree_per_iteration", 1))
    trees = [t for t in dump["tree_info"] if int(t["tree_index"]) % classes == classes - 1]
    if any(int(t.get("num_cat", 0)) or t.get("is_linear") for t in trees):
        return None
    b = _Builder()
    for tree in trees:
        if not b.add(tree["tree_structure"]):
            return None
    if sum((1 << d) * d for d in b.leaf_depth) > TABLE_BUDGET:
        return None
    forest = b.finish(int(dump["max_feature_idx"]) + 1)
    forest.contributions(np.zeros((1, forest.width)))  # compiled (or loaded) now, not mid-request
    return forest


class _Builder:
    """Walks the dumped trees once: numbers internal nodes parents-first, gives each unique
    feature on a path its bit, and records each leaf's features and path shares."""

    def __init__(self) -> None:
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.missing: list[int] = []
        self.default_left: list[bool] = []
        self.slot: list[int] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.leaf_value: list[float] = []
        self.leaf_depth: list[int] = []
        self.leaf_feature: list[list[int]] = []
        self.leaf_z: list[list[float]] = []

    def add(self, root: dict[str, Any]) -> bool:
        # Iterative, parents before children: each stacked item is (node, path features,
        # path shares, where to write its index).
        self.starts.append(len(self.feature))
        stack: list[tuple[dict[str, Any], list[int], list[float], tuple[str, int]]] = [
            (root, [], [], ("root", 0))
        ]
        while stack:
            node, feats, zs, (side, parent) = stack.pop()
            if "split_feature" not in node:
                index = ~len(self.leaf_value)
                self.leaf_value.append(float(node["leaf_value"]))
                self.leaf_depth.append(len(feats))
                self.leaf_feature.append(feats)
                self.leaf_z.append(zs)
            else:
                if node.get("decision_type", "<=") != "<=":
                    return False
                count = float(node["internal_count"])
                feature = int(node["split_feature"])
                if count <= 0:
                    return False
                slot = feats.index(feature) if feature in feats else len(feats)
                if slot >= MAX_PATH_FEATURES:
                    return False
                index = len(self.feature)
                self.feature.append(feature)
                self.threshold.append(float(node["threshold"]))
                self.missing.append(_MISSING[node.get("missing_type", "None")])
                self.default_left.append(bool(node.get("default_left", True)))
                self.slot.append(slot)
                self.left.append(0)
                self.right.append(0)
                for child_side in ("right_child", "left_child"):
                    child = node[child_side]
                    share = float(child.get("internal_count", child.get("leaf_count", 0))) / count
                    f2, z2 = list(feats), list(zs)
                    if slot == len(f2):
                        f2.append(feature)
                        z2.append(share)
                    else:
                        z2[slot] *= share
                    stack.append((child, f2, z2, (child_side, index)))
            if side == "left_child":
                self.left[parent] = index
            elif side == "right_child":
                self.right[parent] = index
        self.ends.append(len(self.feature))
        return True

    def finish(self, width: int) -> FastForest:
        depth = np.asarray(self.leaf_depth, dtype=np.int64)
        leaf_offset = np.concatenate([[0], np.cumsum(depth)[:-1]]).astype(np.int64)
        sizes = np.left_shift(1, depth) * depth
        table_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        leaf_feature = np.asarray([f for fs in self.leaf_feature for f in fs], dtype=np.int64)
        leaf_z = np.asarray([z for zs in self.leaf_z for z in zs], dtype=np.float64)
        values = np.asarray(self.leaf_value, dtype=np.float64)
        total = int(sizes.sum())
        table = np.empty(total)
        top = int(depth.max(initial=0))
        weights = np.zeros((top + 1, top + 1))  # weights[d, k] = k! (d-k-1)! / d!
        for d in range(1, top + 1):
            for k in range(d):
                weights[d, k] = factorial(k) * factorial(d - k - 1) / factorial(d)
        _kernels()[0](depth, leaf_offset, leaf_z, values, table_offset, weights, table)
        # The expected value: each leaf's value times its share of the training rows.
        base = float(sum(v * np.prod(z) for v, z in zip(values, self.leaf_z, strict=True)))
        return FastForest(
            node_feature=np.asarray(self.feature, dtype=np.int64),
            node_threshold=np.asarray(self.threshold, dtype=np.float64),
            node_missing=np.asarray(self.missing, dtype=np.int64),
            node_default_left=np.asarray(self.default_left, dtype=np.bool_),
            node_slot=np.asarray(self.slot, dtype=np.int64),
            node_left=np.asarray(self.left, dtype=np.int64),
            node_right=np.asarray(self.right, dtype=np.int64),
            tree_start=np.asarray(self.starts, dtype=np.int64),
            tree_end=np.asarray(self.ends, dtype=np.int64),
            leaf_depth=depth,
            leaf_offset=leaf_offset,
            leaf_feature=leaf_feature,
            leaf_z=leaf_z,
            table_offset=table_offset,
            table=table,
            base_value=base,
            width=width,
        )


def _tables_py(
    depth: np.ndarray,
    leaf_offset: np.ndarray,
    leaf_z: np.ndarray,
    values: np.ndarray,
    table_offset: np.ndarray,
    weights: np.ndarray,
    table: np.ndarray,
) -> None:
    for leaf in range(len(depth)):
        d = depth[leaf]
        z = leaf_z[leaf_offset[leaf] : leaf_offset[leaf] + d]
        size = 1 << d
        # prod[m] = Π_{j ∈ m} z_j; sym[m, k] = the k-th elementary symmetric polynomial of
        # the z_j in m — each mask from the mask without its lowest bit.
        prod = np.ones(size)
        sym = np.zeros((size, d + 1))
        sym[0, 0] = 1.0
        popcount = np.zeros(size, dtype=np.int64)
        for m in range(1, size):
            low = m & -m
            j = 0
            while (1 << j) != low:
                j += 1
            rest = m ^ low
            prod[m] = prod[rest] * z[j]
            popcount[m] = popcount[rest] + 1
            sym[m, 0] = 1.0
            for k in range(1, popcount[m] + 1):
                sym[m, k] = sym[rest, k] + z[j] * sym[rest, k - 1]
        full = size - 1
        p = np.empty(size)  # w · Π_{j ∉ m} z_j
        g = np.zeros(size)  # G(m)
        for m in range(size):
            p[m] = values[leaf] * prod[full ^ m]
            a = popcount[m]
            if a < d:
                for k in range(a + 1):
                    g[m] += weights[d, k] * sym[m, a - k]
        base = table_offset[leaf]
        for m in range(size):
            for i in range(d):
                b = 1 << i
                if m & b:
                    table[base + m * d + i] = (1.0 - z[i]) * p[m] * g[m ^ b]
                else:
                    table[base + m * d + i] = -z[i] * p[m | b] * g[m]


def _explain_py(
    rows: np.ndarray,
    out: np.ndarray,
    node_feature: np.ndarray,
    node_threshold: np.ndarray,
    node_missing: np.ndarray,
    node_default_left: np.ndarray,
    node_slot: np.ndarray,
    node_left: np.ndarray,
    node_right: np.ndarray,
    tree_start: np.ndarray,
    tree_end: np.ndarray,
    leaf_depth: np.ndarray,
    leaf_offset: np.ndarray,
    leaf_feature: np.ndarray,
    table_offset: np.ndarray,
    table: np.ndarray,
) -> None:
    masks = np.empty(len(node_feature), dtype=np.int64)
    for r in range(rows.shape[0]):
        x = rows[r]
        phi = out[r]
        for t in range(len(tree_start)):
            # A tree's internal nodes are contiguous and numbered parents first, so one pass
            # in order sees every node's mask set by its parent. A single-leaf tree has none.
            if tree_start[t] < tree_end[t]:
                masks[tree_start[t]] = -1  # all bits: the row agrees until a split says not
            for n in range(tree_start[t], tree_end[t]):
                value = x[node_feature[n]]
                miss = node_missing[n]
                if value != value and miss != 2:
                    value = 0.0
                if (miss == 1 and -_ZERO <= value <= _ZERO) or (miss == 2 and value != value):
                    go_left = node_default_left[n]
                else:
                    go_left = value <= node_threshold[n]
                bit = np.int64(1) << node_slot[n]
                for side in range(2):
                    child = node_left[n] if side == 0 else node_right[n]
                    agrees = go_left if side == 0 else not go_left
                    mask = masks[n] if agrees else masks[n] & ~bit
                    if child >= 0:
                        masks[child] = mask
                        continue
                    # A leaf: its d values for the features the row agrees with, read at once.
                    leaf = ~child
                    d = leaf_depth[leaf]
                    mask &= (np.int64(1) << d) - 1
                    fo = leaf_offset[leaf]
                    at = table_offset[leaf] + mask * d
                    for i in range(d):
                        phi[leaf_feature[fo + i]] += table[at + i]


@cache
def _kernels() -> tuple[Any, Any]:
    """The two loops compiled (once per process; numba caches the machine code on disk)."""
    import numba

    jit = numba.njit(cache=True, nogil=True)
    return jit(_tables_py), jit(_explain_py)
