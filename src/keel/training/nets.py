"""Small torch modules for tabular models, importable by path so the registry can rebuild
them (``keel.training.nets:MLP``)."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """A multilayer perceptron over standardized features, missing values as the mean.

    The standardization lives in buffers, so it travels with the weights: the served model
    sees raw features, as the route's feature join gives them.
    """

    # Buffers, registered in __init__: nn.Module's __getattr__ alone would type them loosely.
    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        in_features: int,
        hidden: list[int] | None = None,
        dropout: float = 0.1,
        feature_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        #: The columns it reads, in order: a route joins them by name.
        self.feature_names = list(feature_names or [])
        sizes = [in_features, *(hidden or [32, 16])]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(sizes[-1], 1))
        self.body = nn.Sequential(*layers)
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))

    def fit_normalization(self, x: torch.Tensor) -> None:
        """Set the standardization from the training rows (NaN-aware)."""
        mean = torch.nanmean(x, dim=0)
        centred = torch.where(torch.isnan(x), torch.zeros_like(x), x - mean)
        std = centred.pow(2).mean(dim=0).sqrt()
        self.mean.copy_(torch.nan_to_num(mean))
        self.scale.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.nan_to_num((x - self.mean) / self.scale, nan=0.0)
        return self.body(z).squeeze(-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The probability of the positive class."""
        return torch.sigmoid(self(x))

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        return nn.functional.binary_cross_entropy_with_logits(self(x), y)
