"""Kernel SHAP (Lundberg & Lee 2017) for any model, with a fixed evaluation budget.

The value of a coalition ``S`` of features for a row ``x`` is the model's expected output when
the features in ``S`` take ``x``'s values and the others a background row's (the
interventional value function): ``v(S) = Σ_b w_b f(x_S, background_b)``. Shapley values are the
solution of a weighted least-squares fit of ``v`` over coalitions under the Shapley kernel, with
``v(∅) = E[f(background)]`` and efficiency (``Σ φ = f(x) - v(∅)``) imposed exactly by
eliminating one variable, as the ``shap`` package does.

When every coalition fits the budget (``2**m - 2 <= samples``) they are all enumerated and the
result is the exact Shapley values. Otherwise the coalition sizes whose subsets all fit the
budget are enumerated (smallest and largest first, where the kernel weight is highest), and
the rest sampled by the kernel, each sample paired with its complement to reduce variance.
Unlike ``shap``, a feature whose value equals every background row's is not dropped from the
regression: its value is then exactly 0 when enumerating, and close to 0 when sampling.

Why not ``shap.KernelExplainer``: it evaluates the model row by row, one call per explained
row. Here the coalitions are drawn once and shared by all rows, so a request's evaluations for
all its rows × coalitions × background rows go to the model in one batched call (or in chunks
of at most ``max_batch`` rows, built one at a time), and the least-squares system is solved
once for all rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from keel.errors import ValidationError
from keel.explain.base import OUTPUTS, Explainer, Explanation, check_rows

__all__ = ["KernelExplainer", "coalitions"]

#: Most float64 values one evaluation chunk may hold (256 MiB), whatever ``max_batch`` says.
_CHUNK_VALUES = 2**25


def coalitions(m: int, samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Coalition masks ``(c, m)`` (True: the feature takes the explained row's value) and
    their least-squares weights ``(c,)``, excluding the empty and the full coalition.

    Every one of the ``2**m - 2`` coalitions when they fit in ``samples``; otherwise at most
    ``samples`` of them, chosen as described in the module docstring.

    Example
    -------
    >>> mask, weight = coalitions(3, 100)
    >>> mask.shape, bool(np.allclose(weight[mask.sum(1) == 1], weight[0]))
    ((6, 3), True)
    """
    if m < 2:
        return np.zeros((0, m), dtype=bool), np.zeros(0)
    if 2**m - 2 <= samples:
        codes = np.arange(1, 2**m - 1, dtype=np.int64)
        mask = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
        size = mask.sum(axis=1)
        comb = np.array([math.comb(m, int(s)) for s in size], dtype=np.float64)
        return mask, (m - 1) / (comb * size * (m - size))
    return _sampled(m, samples, np.random.default_rng(seed))


def _sampled(m: int, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    sizes = math.ceil((m - 1) / 2)  # sizes s and m - s are handled together
    paired = (m - 1) // 2  # sizes whose complement has another size
    weight_of_size = np.array([(m - 1) / (s * (m - s)) for s in range(1, sizes + 1)])
    weight_of_size[:paired] *= 2
    weight_of_size /= weight_of_size.sum()

    masks: list[np.ndarray] = []
    weights: list[float] = []
    left = samples
    remaining = weight_of_size.copy()
    full = 0
    for s in range(1, sizes + 1):
        count = math.comb(m, s) * (2 if s <= paired else 1)
        if left * remaining[s - 1] / count < 1 - 1e-8:
            break
        full += 1
        left -= count
        if remaining[s - 1] < 1:
            remaining /= 1 - remaining[s - 1]
        w = weight_of_size[s - 1] / math.comb(m, s) / (2 if s <= paired else 1)
        for chosen in itertools.combinations(range(m), s):
            mask = np.zeros(m, dtype=bool)
            mask[list(chosen)] = True
            masks.append(mask)
            weights.append(w)
            if s <= paired:
                masks.append(~mask)
                weights.append(w)

    fixed = len(masks)
    if full < sizes and left > 0:
        p = weight_of_size.copy()
        p[:paired] /= 2  # a paired draw brings two coalitions
        p = p[full:] / p[full:].sum()
        seen: dict[bytes, int] = {}
        drawn, most = 0, 4 * samples + 64
        while left > 0 and drawn < most:
            block = max(left, 16)
            size = rng.choice(len(p), size=block, p=p) + full + 1
            ranks = np.argsort(rng.random((block, m)), axis=1).argsort(axis=1)
            drawn += block
            for mask in ranks < size[:, None]:
                for candidate in (mask, ~mask) if mask.sum() <= paired else (mask,):
                    if left == 0:
                        break
                    key = candidate.tobytes()
                    if key in seen:
                        weights[seen[key]] += 1.0
                        continue
                    seen[key] = len(masks)
                    masks.append(candidate)
                    weights.append(1.0)
                    left -= 1
                if left == 0:
                    break
        sampled = np.asarray(weights[fixed:])
        weights[fixed:] = (sampled * weight_of_size[full:].sum() / sampled.sum()).tolist()
    return np.array(masks, dtype=bool).reshape(-1, m), np.asarray(weights, dtype=np.float64)


class KernelExplainer(Explainer):
    """Kernel SHAP of any ``predict: (k, m) float64 -> (k,)`` against a background sample.

    Parameters
    ----------
    predict
        The model, on a batch of rows.
    background
        ``(b, m)`` rows standing for "feature unknown" (e.g. :func:`kmeans_background`).
    features
        The ``m`` column names.
    weights
        One weight per background row (e.g. k-means cluster sizes); normalised here.
    samples
        Coalitions per explained row; each costs one evaluation per background row. Keep it
        well above ``2 * m``: fewer coalitions may not tell the features apart.
    seed
        Seeds the coalition sample (unused when every coalition is enumerated).
    output
        The output space ``predict`` returns, ``"score"`` or ``"raw"``.
    max_batch
        Most rows in one call of ``predict`` (fewer for wide rows: one call's rows hold at
        most 2**25 values, 256 MiB).

    Example
    -------
    >>> import numpy as np
    >>> ex = KernelExplainer(lambda x: x[:, 0] * x[:, 1], np.zeros((1, 2)), ["a", "b"])
    >>> ex.explain(np.array([[2.0, 3.0]])).contributions.round(12).tolist()
    [[3.0, 3.0]]
    """

    method = "kernel"

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        background: np.ndarray,
        features: list[str],
        *,
        weights: np.ndarray | None = None,
        samples: int = 2048,
        seed: int = 0,
        output: str = "score",
        max_batch: int = 1_000_000,
    ) -> None:
        self.predict = predict
        self.features = list(features)
        if not self.features:
            raise ValidationError("a kernel explainer needs at least one feature")
        self.background = check_background(background, self.features)
        self.weights = background_weights(weights, len(self.background))
        for name, value in (("samples", samples), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"{name} must be a positive integer, got {value!r}")
        if output not in OUTPUTS:
            raise ValidationError(f"unknown output space {output!r}; expected one of {OUTPUTS}")
        self.samples = samples
        self.seed = seed
        self.output = output
        self.max_batch = max_batch
        self.mask_, self.kernel_weights_ = coalitions(len(self.features), samples, seed)
        self._expected: float | None = None

    @property
    def coalitions(self) -> int:
        """Coalitions evaluated per explained row."""
        return len(self.mask_)

    @property
    def exact(self) -> bool:
        """Whether every coalition is enumerated, making the values exact Shapley values."""
        return self.coalitions == 2 ** len(self.features) - 2

    def cost(self, n_rows: int) -> int:
        return n_rows * self.coalitions * len(self.background)

    def explain(self, x: np.ndarray) -> Explanation:
        rows = check_rows(x, self.features)
        fx, values, evaluations = self._evaluate(rows)
        base = self._expected
        assert base is not None  # the first _evaluate measures it
        phi = self._solve(values - base, fx - base)
        return Explanation(
            self.method, self.output, list(self.features), base, phi, fx, evaluations
        )

    def _solve(self, values: np.ndarray, gap: np.ndarray) -> np.ndarray:
        """Shapley values ``(n, m)`` from coalition values ``(c, n)`` less the base value and
        each row's ``f(x) - base``; the last feature takes what efficiency leaves."""
        if len(self.features) == 1:
            return gap[:, None].copy()
        z = self.mask_.astype(np.float64)
        y = values - z[:, -1:] * gap[None, :]
        design = z[:, :-1] - z[:, -1:]
        root = np.sqrt(self.kernel_weights_)[:, None]
        head = np.linalg.lstsq(root * design, root * y, rcond=None)[0]  # (m - 1, n)
        return np.column_stack([head.T, gap - head.sum(axis=0)])

    def _evaluate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """``f(rows)``, the coalition values ``(c, n)`` and the evaluations spent; sets the
        base value on first use. Every model call holds as many rows as the limit allows."""
        n, c, b = len(rows), self.coalitions, len(self.background)
        first = self._expected is None
        head = np.concatenate([rows, self.background]) if first else rows
        limit = max(1, min(self.max_batch, _CHUNK_VALUES // len(self.features)))
        pairs = n * c  # (row, coalition) pairs, pair p = row p // c, coalition p % c
        values = np.empty(pairs)
        head_out: np.ndarray | None = None if len(head) else head[:, 0]
        done, evaluations = 0, 0
        while head_out is None or done < pairs:
            parts = [head] if head_out is None else []
            room = limit - (len(head) if parts else 0)
            take = min(pairs - done, max(room, 0) // b)
            if not parts and take == 0:
                take = 1  # one pair's background rows exceed the limit: send them anyway
            if take:
                parts.append(self._block(rows, done, done + take))
            batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
            out = self._call(batch)
            evaluations += len(batch)
            if head_out is None:
                head_out, out = out[: len(head)], out[len(head) :]
            values[done : done + take] = out.reshape(take, b) @ self.weights
            done += take
        if first:
            self._expected = float(head_out[n:] @ self.weights)
        return head_out[:n], values.reshape(n, c).T, evaluations

    def _block(self, rows: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The evaluation rows of pairs ``start:stop``: each pair's row with the features
        outside its coalition taken from each background row."""
        pair = np.arange(start, stop)
        c = self.coalitions
        block = np.where(
            self.mask_[pair % c][:, None, :],
            rows[pair // c][:, None, :],
            self.background[None, :, :],
        )
        return block.reshape(-1, len(self.features))

    def _call(self, batch: np.ndarray) -> np.ndarray:
        out = np.asarray(self.predict(np.ascontiguousarray(batch)), dtype=np.float64)
        if out.size != len(batch):
            raise ValidationError(
                f"the model returned {out.size} values for {len(batch)} rows; a kernel "
                "explainer needs one number per row"
            )
        return out.reshape(-1)


def check_background(background: np.ndarray, features: list[str]) -> np.ndarray:
    """``background`` as a float64 matrix of at least one row, one column per feature."""
    try:
        bg = np.asarray(background, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("the background must be a numeric matrix") from None
    if bg.ndim != 2 or bg.shape[1] != len(features) or len(bg) == 0:
        raise ValidationError(
            f"the background has shape {list(bg.shape)}, expected at least one row of "
            f"{len(features)} columns (one per feature)"
        )
    return bg


def background_weights(weights: np.ndarray | None, b: int) -> np.ndarray:
    """One weight per background row (equal when None), normalised to sum to 1."""
    if weights is None:
        return np.full(b, 1.0 / b)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (b,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValidationError(
            f"background weights must be {b} non-negative numbers (one per background row) "
            "with a positive sum"
        )
    return w / w.sum()
