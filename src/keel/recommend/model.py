"""The shop's recommender: a two-tower model over collisionless ID embedding tables.

* **User tower**: the user's embedding row, beside the user's feature-store features
  (normalized), through a small MLP to a ``dim``-vector ``q``.
* **Item tower**: the item's embedding row and its category's embedding through one linear
  layer to ``v``; the row's last column is the item's bias (its popularity).
* **Score**: ``q · v + bias``. Retrieval asks a vector index for the largest inner products of
  ``[q, 1]`` with ``[v, bias]``.

The embedding tables (``user_table``, ``item_table``) are the *sparse* part that the
fine-tune refreshes; the category table, both towers and the normalization are the *dense*
part, frozen after the first full training. Each table row's optimizer state (row-wise
Adagrad) is kept beside it (``user_acc``, ``item_acc``), so a fine-tune continues the
optimization where the last one left it.

Tables grow and shrink with the IDs seen, so :meth:`TwoTower.load_state_dict` resizes them to
the saved shapes: a registered version loads whatever its tables held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from keel.recommend.tables import IdRows

__all__ = ["DENSE", "SPARSE", "TwoTower"]

#: The parameters a fine-tune updates (row by row); every other parameter is dense.
SPARSE = ("user_table", "item_table")
#: The buffers that are the tables' bookkeeping and optimizer state, not weights.
BOOKKEEPING = (
    "user_ids",
    "user_seen",
    "user_pending",
    "user_acc",
    "item_ids",
    "item_seen",
    "item_pending",
    "item_acc",
    "item_category",
)
DENSE = ("category_table", "user_mlp", "item_proj", "feature_mean", "feature_std")


class TwoTower(nn.Module):
    """A two-tower recommender with one embedding row per known user and item.

    Parameters
    ----------
    categories
        The item categories, in the order of the category table.
    feature_names
        The user's feature-store columns (``view__feature``) the user tower reads.
    dim, hidden, category_dim
        Embedding width, the user MLP's hidden width, the category embedding width.
    users, items
        Rows to allocate (row 0 of each is the cold-start row); tables grow as IDs come.
    """

    # Buffers, registered in __init__: nn.Module's __getattr__ alone would type them loosely.
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    user_acc: torch.Tensor
    item_acc: torch.Tensor
    item_category: torch.Tensor
    user_ids: torch.Tensor
    user_seen: torch.Tensor
    user_pending: torch.Tensor
    item_ids: torch.Tensor
    item_seen: torch.Tensor
    item_pending: torch.Tensor

    def __init__(
        self,
        categories: list[str],
        feature_names: list[str] | None = None,
        *,
        dim: int = 32,
        hidden: int = 64,
        category_dim: int = 8,
        users: int = 1,
        items: int = 1,
    ) -> None:
        super().__init__()
        self.categories = list(categories)
        self.feature_names = list(feature_names or [])
        self.dim, self.hidden, self.category_dim = dim, hidden, category_dim
        nf = len(self.feature_names)
        self.user_table = nn.Parameter(torch.zeros(users, dim))
        self.item_table = nn.Parameter(torch.zeros(items, dim + 1))
        self.category_table = nn.Parameter(torch.randn(len(self.categories), category_dim) * 0.1)
        self.user_mlp = nn.Sequential(
            nn.Linear(dim + nf, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )
        self.item_proj = nn.Linear(dim + category_dim, dim)
        self.register_buffer("feature_mean", torch.zeros(nf))
        self.register_buffer("feature_std", torch.ones(nf))
        self.register_buffer("user_acc", torch.zeros(users))
        self.register_buffer("item_acc", torch.zeros(items))
        self.register_buffer("item_category", torch.zeros(items, dtype=torch.int64))
        for side, n in (("user", users), ("item", items)):
            rows = (
                IdRows.empty()
                if n == 1
                else IdRows(np.r_[-2, np.full(n - 1, -1)], np.zeros(n), np.zeros((0, 4)))
            )
            self.register_buffer(f"{side}_ids", torch.from_numpy(rows.ids))
            self.register_buffer(f"{side}_seen", torch.from_numpy(rows.seen))
            self.register_buffer(f"{side}_pending", torch.zeros((0, 4), dtype=torch.int64))
        self._sync_in()

    # -- bookkeeping ------------------------------------------------------------------
    def _sync_in(self) -> None:
        """Rebuild the ID maps from the buffers (after a load)."""
        self.users = IdRows(
            self.user_ids.numpy(), self.user_seen.numpy(), self.user_pending.numpy()
        )
        self.items = IdRows(
            self.item_ids.numpy(), self.item_seen.numpy(), self.item_pending.numpy()
        )

    def sync_out(self) -> None:
        """Write the ID maps back into the buffers (before a save)."""
        for side, rows in (("user", self.users), ("item", self.items)):
            setattr(self, f"{side}_ids", torch.from_numpy(rows.ids.copy()))
            setattr(self, f"{side}_seen", torch.from_numpy(rows.seen.copy()))
            setattr(self, f"{side}_pending", torch.from_numpy(rows.pending.copy()))

    def grow(self, users: int, items: int, generator: torch.Generator | None = None) -> None:
        """Make the tables at least ``users`` and ``items`` rows long. New user rows start
        as the cold-start row (what the model knows of an unknown user); new item rows start
        small and random, with the cold-start item row's bias."""
        with torch.no_grad():
            extra_u = users - self.user_table.shape[0]
            if extra_u > 0:
                fill = self.user_table[:1].expand(extra_u, -1)
                self.user_table = nn.Parameter(torch.cat([self.user_table.data, fill]))
                self.user_acc = torch.cat([self.user_acc, torch.zeros(extra_u)])
            extra_i = items - self.item_table.shape[0]
            if extra_i > 0:
                fill = torch.randn(extra_i, self.dim + 1, generator=generator) * 0.05
                fill[:, -1] = self.item_table[0, -1]
                self.item_table = nn.Parameter(torch.cat([self.item_table.data, fill]))
                self.item_acc = torch.cat([self.item_acc, torch.zeros(extra_i)])
                pad = torch.zeros(extra_i, dtype=torch.int64)
                self.item_category = torch.cat([self.item_category, pad])

    def reset_rows(
        self, side: str, rows: np.ndarray, generator: torch.Generator | None = None
    ) -> None:
        """Start reused rows afresh (new IDs in freed rows), as :meth:`grow` starts new ones."""
        if not len(rows):
            return
        idx = torch.as_tensor(rows, dtype=torch.int64)
        with torch.no_grad():
            if side == "user":
                self.user_table[idx] = self.user_table[0].clone()
                self.user_acc[idx] = 0.0
            else:
                fill = torch.randn(len(rows), self.dim + 1, generator=generator) * 0.05
                fill[:, -1] = self.item_table[0, -1]
                self.item_table[idx] = fill
                self.item_acc[idx] = 0.0

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        # Tables and their bookkeeping are as long as the IDs they held when saved.
        with torch.no_grad():
            for name in (*SPARSE, *BOOKKEEPING):
                if name not in state_dict:
                    continue
                want = tuple(state_dict[name].shape)
                have = getattr(self, name)
                if tuple(have.shape) == want:
                    continue
                fresh = torch.zeros(want, dtype=state_dict[name].dtype)
                if name in SPARSE:
                    setattr(self, name, nn.Parameter(fresh))
                else:
                    setattr(self, name, fresh)
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._sync_in()
        return out

    def init_kwargs(self) -> dict[str, Any]:
        """What rebuilds this module's shape (the tables resize on load)."""
        return {
            "categories": self.categories,
            "feature_names": self.feature_names,
            "dim": self.dim,
            "hidden": self.hidden,
            "category_dim": self.category_dim,
        }

    def dense_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.named_parameters() if n not in SPARSE}

    def fit_normalization(self, features: torch.Tensor) -> None:
        if features.shape[1] == 0:
            return
        finite = torch.nan_to_num(features, nan=0.0)
        self.feature_mean = finite.mean(0)
        self.feature_std = finite.std(0).clamp_min(1e-6)

    # -- the towers -------------------------------------------------------------------
    def user_vectors(self, user_emb: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``[q, 1]`` per user, from embedding rows and raw feature values (NaN: missing)."""
        parts = [user_emb]
        if self.feature_names:
            z = (features.to(user_emb.dtype) - self.feature_mean) / self.feature_std
            parts.append(torch.nan_to_num(z, nan=0.0))
        q = self.user_mlp(torch.cat(parts, dim=1))
        return torch.cat([q, torch.ones_like(q[:, :1])], dim=1)

    def item_vectors(self, item_emb: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """``[v, bias]`` per item, from embedding rows (with their bias column)."""
        v = self.item_proj(torch.cat([item_emb[:, :-1], self.category_table[category]], dim=1))
        return torch.cat([v, item_emb[:, -1:]], dim=1)

    def user_rows_vectors(self, rows: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(self.user_table[rows], features)

    def item_rows_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        return self.item_vectors(self.item_table[rows], self.item_category[rows])

    def catalogue(self) -> tuple[np.ndarray, torch.Tensor]:
        """Every item with a row: its ID and its vector (what the index holds)."""
        live = self.items.live
        with torch.inference_mode():
            vectors = self.item_rows_vectors(torch.as_tensor(live))
        return self.items.ids[live], vectors

    def score_ids(
        self, user_ids: np.ndarray, item_ids: np.ndarray, features: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of user–item pairs (unknown IDs use the cold-start rows)."""
        ur = torch.as_tensor(self.users.rows(user_ids))
        ir = torch.as_tensor(self.items.rows(item_ids))
        feats = _features(features, len(ur), len(self.feature_names))
        with torch.inference_mode():
            q = self.user_rows_vectors(ur, feats)
            v = self.item_rows_vectors(ir)
            return (q * v).sum(1).double().numpy()

    def query(self, user_ids: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """The retrieval query ``[q, 1]`` of each user (float32)."""
        ur = torch.as_tensor(self.users.rows(user_ids))
        feats = _features(features, len(ur), len(self.feature_names))
        with torch.inference_mode():
            return self.user_rows_vectors(ur, feats).float().numpy()

    def forward(
        self, user_rows: torch.Tensor, item_rows: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        q = self.user_rows_vectors(user_rows, features)
        return (q * self.item_rows_vectors(item_rows)).sum(1)


def _features(features: np.ndarray | None, n: int, width: int) -> torch.Tensor:
    if features is None:
        return torch.full((n, width), float("nan"))
    return torch.as_tensor(np.asarray(features, dtype=np.float32).reshape(n, width))
