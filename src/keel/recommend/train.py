"""Training the recommender in full, and fine-tuning only its embedding tables.

Both run the same loop over mini-batches of interactions, each with ``negatives`` items drawn
uniformly from the rows that hold an item: a weighted logistic loss pushes an interaction's
score up and the sampled items' down. The tables learn by **row-wise Adagrad** on the rows a
batch touches (the gradient is taken with respect to the gathered rows, never the whole
table); the full training also moves the dense part with Adam. A fine-tune freezes every dense
parameter (``requires_grad`` off, no optimizer holds them), so only table rows change, and it
checks afterwards that every dense tensor is byte-identical to its parent's.

Row-wise Adagrad is written here rather than taken from ``torch.optim``: torch's optimizers
keep state shaped like the whole parameter and fixed at creation, while these tables grow and
free rows between runs; TorchRec's fused row-wise Adagrad is the same rule (one accumulator per
row, the mean squared gradient) but needs TorchRec's sharded tables.

Randomness is a pure function of (seed, epoch, step): each epoch's order and each step's
negatives come from generators seeded by them, so a checkpoint's position *is* its RNG state,
and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from keel.recommend.data import UNKNOWN_CATEGORY, Interactions
from keel.recommend.model import BOOKKEEPING, SPARSE, TwoTower
from keel.training.checkpoint import Preempted
from keel.training.trainers import RunContext

__all__ = [
    "LoopReport",
    "RowAdagrad",
    "dense_digest",
    "evaluate",
    "init_model",
    "run_loop",
]

Progress = Callable[[int, int], None]


class RowAdagrad:
    """Row-wise Adagrad over the embedding tables only: ``state`` maps each table's name to
    its per-row accumulator (kept in the model beside the table, so it survives the run)."""

    def __init__(self, model: TwoTower, lr: float, eps: float = 1e-8) -> None:
        self.model, self.lr, self.eps = model, lr, eps

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return {"user_table": self.model.user_acc, "item_table": self.model.item_acc}

    def step(self, name: str, rows: torch.Tensor, grad: torch.Tensor) -> int:
        """Apply one batch's gradient (one per gathered row, rows may repeat); return how
        many distinct rows moved."""
        uniq, inverse = torch.unique(rows, return_inverse=True)
        g = torch.zeros(len(uniq), grad.shape[1], dtype=grad.dtype).index_add_(0, inverse, grad)
        acc = self.state[name]
        acc[uniq] += g.pow(2).mean(1)
        table = getattr(self.model, name)
        with torch.no_grad():
            table[uniq] -= self.lr * g / (acc[uniq].sqrt() + self.eps)[:, None]
        return len(uniq)


@dataclass
class LoopReport:
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    touched_users: set[int] = field(default_factory=set)
    touched_items: set[int] = field(default_factory=set)
    final_loss: float = float("nan")


def categories_of(data: Interactions, given: list[str] | None) -> list[str]:
    """The category table's rows: the unknown category first, then the declared or seen ones."""
    names = given if given is not None else sorted(set(data.category.tolist()))
    return [UNKNOWN_CATEGORY, *[c for c in names if c != UNKNOWN_CATEGORY]]


def category_index(model: TwoTower, names: np.ndarray) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(model.categories)}
    return np.array([lookup.get(c, 0) for c in names], dtype=np.int64)


def init_model(
    data: Interactions,
    *,
    dim: int,
    hidden: int,
    seed: int,
    min_count: int,
    categories: list[str] | None = None,
) -> TwoTower:
    """A fresh model whose tables hold every user and item of ``data`` seen ``min_count``
    times, rows drawn small and random from ``seed``."""
    torch.manual_seed(seed)
    model = TwoTower(categories_of(data, categories), data.feature_names, dim=dim, hidden=hidden)
    admit(model, data, min_count=min_count, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        model.user_table.copy_(torch.randn(model.user_table.shape, generator=g) * 0.05)
        model.item_table.copy_(torch.randn(model.item_table.shape, generator=g) * 0.05)
        model.item_table[:, -1] = 0.0
    if data.features.shape[1]:
        model.fit_normalization(torch.as_tensor(data.features))
    return model


def admit(
    model: TwoTower, data: Interactions, *, min_count: int, generator: torch.Generator
) -> dict[str, int]:
    """Count ``data``'s users and items; give rows to those now seen ``min_count`` times."""
    cats = category_index(model, data.category)
    got_u = model.users.observe(data.users, data.ts, min_count=min_count)
    got_i = model.items.observe(data.items, data.ts, min_count=min_count, attrs=cats)
    model.grow(len(model.users), len(model.items), generator)
    model.reset_rows("user", got_u.rows, generator)
    model.reset_rows("item", got_i.rows, generator)
    with torch.no_grad():
        model.item_category[torch.as_tensor(got_i.rows)] = torch.as_tensor(got_i.attrs)
    model.sync_out()
    return {"users": len(got_u.ids), "items": len(got_i.ids)}


def run_loop(
    model: TwoTower,
    data: Interactions,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    negatives: int,
    seed: int,
    ctx: RunContext,
    dense_lr: float | None = None,
    checkpoint_every_steps: int | None = None,
) -> LoopReport:
    """Train on ``data`` for ``epochs``; the dense part too when ``dense_lr`` is given, the
    tables alone otherwise. Checkpoints through ``ctx`` (and on SIGTERM: :class:`Preempted`)."""
    start = time.perf_counter()
    report = LoopReport()
    dense = dense_lr is not None
    for p in model.dense_parameters().values():
        p.requires_grad_(dense)
    dense_opt = (
        torch.optim.Adam(list(model.dense_parameters().values()), lr=dense_lr)
        if dense_lr is not None
        else None
    )
    tables = RowAdagrad(model, lr)
    n = len(data)
    per_epoch = -(-n // batch_size) if n else 0
    total = per_epoch * epochs
    users = torch.as_tensor(model.users.rows(data.users))
    items = torch.as_tensor(model.items.rows(data.items))
    weight = torch.as_tensor(data.weight)
    feats = torch.as_tensor(data.features)
    # Negatives: any item with a row in a full training; in a fine-tune, the items of its own
    # interactions, so that it moves no row those interactions do not touch.
    pool = model.items.live if dense else np.unique(items.numpy()[items.numpy() > 0])
    live = torch.as_tensor(pool if len(pool) else model.items.live)
    step, epoch, row = 0, 0, 0

    cp = ctx.resume()
    if cp is not None:
        state = torch.load(io.BytesIO(cp.payload), weights_only=True)
        model.load_state_dict(state["model"])
        if dense_opt is not None:
            dense_opt.load_state_dict(state["dense_opt"])
        step, epoch, row = state["step"], state["epoch"], state["row"]
        report.touched_users = set(state["touched_users"].tolist())
        report.touched_items = set(state["touched_items"].tolist())
        tables = RowAdagrad(model, lr)
        for p in model.dense_parameters().values():
            p.requires_grad_(dense)

    def save() -> None:
        model.sync_out()
        buf = io.BytesIO()
        torch.save(
            {
                "model": model.state_dict(),
                "dense_opt": None if dense_opt is None else dense_opt.state_dict(),
                "step": step,
                "epoch": epoch,
                "row": row,
                "seed": seed,
                "touched_users": torch.as_tensor(sorted(report.touched_users), dtype=torch.int64),
                "touched_items": torch.as_tensor(sorted(report.touched_items), dtype=torch.int64),
            },
            buf,
        )
        ctx.save(step, buf.getvalue(), {"epoch": epoch, "rows": [row, n], "step": step})

    model.train()
    with ctx.preemption:
        while epoch < epochs and n:
            perm = _permutation(n, seed, epoch)
            while row < n:
                idx = perm[row : row + batch_size]
                g = torch.Generator().manual_seed(_mix(seed, epoch, step))
                neg = live[torch.randint(len(live), (len(idx), negatives), generator=g)]
                loss = _step(
                    model,
                    tables,
                    users[idx],
                    items[idx],
                    neg,
                    weight[idx],
                    feats[idx],
                    dense_opt,
                    report,
                )
                report.final_loss = loss
                step += 1
                row += len(idx)
                if ctx.first_step_s is None:
                    ctx.first_step_s = time.perf_counter() - start
                ctx.report(step, total)
                if ctx.preemption.requested:
                    save()
                    raise Preempted(step)
                if checkpoint_every_steps and step % checkpoint_every_steps == 0 and step < total:
                    save()
            epoch, row = epoch + 1, 0
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.sync_out()
    report.steps, report.epochs = step, epoch
    report.seconds = time.perf_counter() - start
    return report


def _step(
    model: TwoTower,
    tables: RowAdagrad,
    ur: torch.Tensor,
    ir: torch.Tensor,
    neg: torch.Tensor,
    w: torch.Tensor,
    feats: torch.Tensor,
    dense_opt: torch.optim.Optimizer | None,
    report: LoopReport,
) -> float:
    b, k = neg.shape
    rows = torch.cat([ir, neg.reshape(-1)])
    # Leaves over the gathered rows: the gradient is one row per use, never table-sized.
    ue = model.user_table.detach()[ur].requires_grad_(True)
    ie = model.item_table.detach()[rows].requires_grad_(True)
    q = model.user_vectors(ue, feats)
    v = model.item_vectors(ie, model.item_category[rows])
    pos = (q * v[:b]).sum(1)
    negs = torch.einsum("bd,bkd->bk", q, v[b:].reshape(b, k, -1))
    loss = (w * torch.nn.functional.softplus(-pos)).sum() / w.sum()
    loss = loss + torch.nn.functional.softplus(negs).mean() * k / 2
    if dense_opt is not None:
        dense_opt.zero_grad(set_to_none=True)
    loss.backward()
    assert ue.grad is not None and ie.grad is not None
    tables.step("user_table", ur, ue.grad)
    tables.step("item_table", rows, ie.grad)
    if dense_opt is not None:
        dense_opt.step()
    report.touched_users.update(ur.unique().tolist())
    report.touched_items.update(rows.unique().tolist())
    return float(loss.detach())


def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch, -1)))


def _mix(*parts: int) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def dense_digest(model: TwoTower) -> dict[str, str]:
    """SHA-256 of every dense tensor's bytes (parameters and normalization buffers)."""
    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name in SPARSE or name.split(".")[0] in BOOKKEEPING:
            continue
        out[name] = hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()
    return out


def top_k(
    model: TwoTower,
    user_ids: np.ndarray,
    features: np.ndarray | None,
    k: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` item IDs and scores per user, over every item with a row."""
    ids, vecs = model.catalogue()
    q = torch.as_tensor(model.query(user_ids, features))
    scores = (q.to(dtype) @ vecs.to(dtype).T).float()
    k = min(k, len(ids))
    best = torch.topk(scores, k, dim=1)
    return ids[best.indices.numpy()], best.values.numpy()


def evaluate(model: TwoTower, data: Interactions, k: int) -> dict[str, float]:
    """Hit rate and NDCG at ``k`` of ``data``'s purchases: is the bought item in the user's
    top ``k`` (exact search over the catalogue), and how high."""
    bought = data.select(data.purchase)
    if not len(bought):
        return {f"hit_rate@{k}": float("nan"), f"ndcg@{k}": float("nan"), "purchases": 0.0}
    ids, _ = top_k(model, bought.users, bought.features, k)
    match = ids == bought.items[:, None]
    hit = match.any(1)
    rank = np.argmax(match, axis=1)
    ndcg = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return {
        f"hit_rate@{k}": float(hit.mean()),
        f"ndcg@{k}": float(ndcg.mean()),
        "purchases": float(len(bought)),
    }


def as_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def precision_check(
    model: TwoTower,
    probe_users: np.ndarray,
    probe_features: np.ndarray | None,
    precision: str,
    *,
    k: int = 10,
) -> dict[str, Any]:
    """Score a probe set in float32 and in ``precision`` as the serving runtime would (towers
    and inner products in that dtype): the largest score difference over the spread of the
    float32 scores, and the mean top-``k`` overlap."""
    dtype = as_dtype(precision)
    ref_ids, ref_scores = top_k(model, probe_users, probe_features, k)
    low = _copy_in(model, dtype)
    ids, vecs = low.catalogue()
    q = torch.as_tensor(low.query(probe_users, probe_features), dtype=dtype)
    full = (q @ vecs.to(dtype).T).float()
    ref_full = torch.as_tensor(model.query(probe_users, probe_features)) @ model.catalogue()[1].T
    spread = float(ref_full.std()) or 1.0
    diff = float((full - ref_full).abs().max()) / spread
    got = ids[torch.topk(full, min(k, len(ids)), dim=1).indices.numpy()]
    overlap = float(
        np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(got, ref_ids, strict=True)])
    )
    return {
        "precision": precision,
        "max_score_diff": diff,
        "top_k_overlap": overlap,
        "probe_users": len(probe_users),
        "ref_top_score": float(ref_scores.mean()),
    }


def _copy_in(model: TwoTower, dtype: torch.dtype) -> TwoTower:
    """The model with its floating-point weights cast to ``dtype`` (a serving replica)."""
    copy = TwoTower(**model.init_kwargs())
    copy.load_state_dict(model.state_dict())
    for name, t in [*copy.named_parameters(), *copy.named_buffers()]:
        if t.is_floating_point() and name not in ("user_acc", "item_acc"):
            t.data = t.data.to(dtype)
    return copy
