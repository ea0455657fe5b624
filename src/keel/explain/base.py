"""What every explainer returns, and the interface they share.

An :class:`Explanation` splits each row's model output into a base value (the expected output
over background or training data) plus one additive contribution per feature. The output space
is named: ``"raw"`` is a tree model's margin (log-odds for a binary classifier), ``"score"``
the served output (a probability for a binary classifier). Contributions in one space do not
add up to outputs in the other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from keel.errors import ValidationError

__all__ = ["OUTPUTS", "Explainer", "Explanation", "check_rows"]

#: The output spaces an explanation can be in.
OUTPUTS = ("raw", "score")


@dataclass(slots=True)
class Explanation:
    """Additive per-feature contributions for a batch of rows.

    ``outputs[i] == base_value + contributions[i].sum()``: exactly (to float rounding) for the
    tree and linear methods, and by the efficiency constraint for the kernel method.

    Example
    -------
    >>> import numpy as np
    >>> e = Explanation("linear", "score", ["a", "b"], 1.0, np.array([[0.5, -2.0]]),
    ...                 np.array([-0.5]))
    >>> e.rows(top=1)
    [{'output': -0.5, 'base_value': 1.0, 'contributions': {'b': -2.0}}]
    """

    method: str
    output: str
    features: list[str]
    base_value: float
    contributions: np.ndarray
    outputs: np.ndarray
    evaluations: int = 0

    def __post_init__(self) -> None:
        n = len(self.outputs)
        if self.contributions.shape != (n, len(self.features)):
            raise ValidationError(
                f"explanation contributions have shape {list(self.contributions.shape)}, "
                f"expected [{n}, {len(self.features)}] (rows × features)"
            )

    def __len__(self) -> int:
        return len(self.outputs)

    def rows(self, top: int | None = None) -> list[dict[str, Any]]:
        """One JSON-ready dict per row: ``output``, ``base_value`` and ``contributions``.

        ``top`` keeps only the ``top`` features of largest absolute contribution, largest
        first; without it every feature is given, in feature order.
        """
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
            raise ValidationError(f"top must be a non-negative integer or None, got {top!r}")
        out = []
        for output, contrib in zip(self.outputs.tolist(), self.contributions, strict=True):
            order = range(len(self.features))
            if top is not None:
                order = np.argsort(-np.abs(contrib), kind="stable")[:top].tolist()
            out.append(
                {
                    "output": output,
                    "base_value": float(self.base_value),
                    "contributions": {self.features[j]: float(contrib[j]) for j in order},
                }
            )
        return out


def check_rows(x: Any, features: list[str]) -> np.ndarray:
    """``x`` as a float64 ``(n, len(features))`` matrix; one row may be given as 1-D.

    Raises :class:`ValidationError` naming the expected features when the width is wrong.
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError(
            f"rows to explain must be numbers, one column per feature ({_names(features)})"
        ) from None
    if arr.ndim == 1 and arr.size == len(features):
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != len(features):
        raise ValidationError(
            f"rows to explain have shape {list(arr.shape)}, expected (rows, {len(features)}) "
            f"with columns {_names(features)}"
        )
    return arr


def _names(features: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(f) for f in features[:limit])
    more = len(features) - limit
    return shown + (f" and {more} more" if more > 0 else "")


class Explainer(ABC):
    """Explains one model's outputs in one output space over named features."""

    method: str
    output: str
    features: list[str]

    @abstractmethod
    def explain(self, x: np.ndarray) -> Explanation:
        """Explain each row of ``x`` (``(n, len(features))``)."""

    def cost(self, n_rows: int) -> int:
        """Model evaluations that explaining ``n_rows`` rows would need (0: no sampling)."""
        return 0
