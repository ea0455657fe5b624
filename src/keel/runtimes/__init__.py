"""Runtimes: load a registered model and run batches of tensors on CPU or CUDA."""

from __future__ import annotations

from typing import Any

from keel.errors import ValidationError
from keel.runtimes.base import DATATYPES, Runtime, TensorSpec
from keel.runtimes.models import (
    LightGBMRuntime,
    OnnxRuntime,
    SklearnRuntime,
    TextEmbeddingRuntime,
    TorchRuntime,
    XGBoostRuntime,
)
from keel.runtimes.recommend import RecommendRuntime, is_recommender, is_two_tower

__all__ = [
    "DATATYPES",
    "LightGBMRuntime",
    "OnnxRuntime",
    "RecommendRuntime",
    "Runtime",
    "SklearnRuntime",
    "TensorSpec",
    "TextEmbeddingRuntime",
    "TorchRuntime",
    "XGBoostRuntime",
    "is_recommender",
    "is_two_tower",
    "runtime_for",
]

BUILTIN_TEXT = "all-MiniLM-L6-v2"


def runtime_for(model: Any, fmt: str, *, device: str = "cpu", **options: Any) -> Runtime:
    """The runtime for a loaded model object of registry format ``fmt``.

    A two-tower recommender (format ``torch``) is served with the vector index given as
    ``index`` (its version's), or one built from its catalogue."""
    if fmt == "lightgbm":
        return LightGBMRuntime(model)
    if fmt == "xgboost":
        return XGBoostRuntime(model)
    if fmt == "sklearn":
        return SklearnRuntime(model)
    if fmt == "onnx":
        return OnnxRuntime(model, device=device)
    if fmt == "torch":
        if is_two_tower(model):
            return RecommendRuntime(
                model, index=options.get("index"), device=device, threads=options.get("threads")
            )
        return TorchRuntime(model, device=device, width=options.get("width"))
    raise ValidationError(f"no runtime serves models stored as {fmt!r}")
