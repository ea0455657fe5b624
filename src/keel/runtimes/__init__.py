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

__all__ = [
    "DATATYPES",
    "LightGBMRuntime",
    "OnnxRuntime",
    "Runtime",
    "SklearnRuntime",
    "TensorSpec",
    "TextEmbeddingRuntime",
    "TorchRuntime",
    "XGBoostRuntime",
    "runtime_for",
]

BUILTIN_TEXT = "all-MiniLM-L6-v2"


def runtime_for(model: Any, fmt: str, *, device: str = "cpu", **options: Any) -> Runtime:
    """The runtime for a loaded model object of registry format ``fmt``."""
    if fmt == "lightgbm":
        return LightGBMRuntime(model)
    if fmt == "xgboost":
        return XGBoostRuntime(model)
    if fmt == "sklearn":
        return SklearnRuntime(model)
    if fmt == "onnx":
        return OnnxRuntime(model, device=device)
    if fmt == "torch":
        return TorchRuntime(model, device=device, width=options.get("width"))
    raise ValidationError(f"no runtime serves models stored as {fmt!r}")
