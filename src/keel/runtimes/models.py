"""Runtimes for the model formats Keel stores: text embeddings, torch, ONNX Runtime,
LightGBM, XGBoost and scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np

from keel.errors import ValidationError
from keel.runtimes.base import Runtime, TensorSpec

__all__ = [
    "LightGBMRuntime",
    "OnnxRuntime",
    "SklearnRuntime",
    "TextEmbeddingRuntime",
    "TorchRuntime",
    "XGBoostRuntime",
]


class TextEmbeddingRuntime(Runtime):
    """Sentence embeddings with the packaged all-MiniLM-L6-v2 (``text`` → ``embedding``)."""

    platform = "pytorch_transformers"

    def __init__(
        self, *, device: str = "cpu", threads: int | None = None, backend: str = "torch"
    ) -> None:
        from keel.embeddings import MiniLM

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.model = MiniLM(device=device, batch_size=256, backend=backend, threads=threads)
        if backend != "torch":
            self.platform = "onnxruntime_onnx"
        self.inputs = [TensorSpec("text", "BYTES", (-1,))]
        self.outputs = [TensorSpec("embedding", "FP32", (-1, self.model.dim))]
        self.feature_names = []

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in inputs["text"]]
        return {"embedding": self.model(texts)}


class TorchRuntime(Runtime):
    """A torch module on ``device``; one input tensor ``input`` of its declared width.

    A module that names its ``feature_names`` (as Keel's trainer records them) is served
    like the tabular runtimes: a ``features`` row of those columns in, a ``score`` out (its
    ``score`` method when it has one, such as a probability from a classifier's logits).
    """

    platform = "pytorch"

    def __init__(self, module: Any, *, device: str = "cpu", width: int | None = None) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.module = module.to(device).eval()
        width = width or getattr(module, "in_features", None)
        if width is None:
            raise ValidationError("a torch route needs the input width (in_features)")
        self.feature_names = list(getattr(module, "feature_names", None) or [])
        if self.feature_names:
            self.inputs = [TensorSpec("features", "FP64", (-1, len(self.feature_names)))]
            self.outputs = [TensorSpec("score", "FP64", (-1,))]
            return
        out = self.module(torch.zeros(1, width, device=device)).shape[-1]
        self.inputs = [TensorSpec("input", "FP32", (-1, int(width)))]
        self.outputs = [TensorSpec("output", "FP32", (-1, int(out)))]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            if self.feature_names:
                x = torch.as_tensor(inputs["features"], dtype=torch.float32, device=self.device)
                score = getattr(self.module, "score", self.module)(x).reshape(-1)
                return {"score": score.double().cpu().numpy()}
            x = torch.as_tensor(inputs["input"], dtype=torch.float32, device=self.device)
            return {"output": self.module(x).float().cpu().numpy()}


_ONNX_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


class OnnxRuntime(Runtime):
    """An ONNX model on ONNX Runtime (CPU, or CUDA when asked and available)."""

    platform = "onnxruntime_onnx"

    def __init__(self, model: Any, *, device: str = "cpu") -> None:
        import onnxruntime

        data = model if isinstance(model, bytes) else model.SerializeToString()
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device == "cuda"
            else ["CPUExecutionProvider"]
        )
        self.session = onnxruntime.InferenceSession(data, providers=providers)
        self.inputs = [self._spec(i) for i in self.session.get_inputs()]
        self.outputs = [self._spec(o) for o in self.session.get_outputs()]
        self.feature_names = []

    def _spec(self, arg: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorSpec(arg.name, _ONNX_TYPES.get(arg.type, "FP32"), shape)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, inputs), strict=True))


class _Tabular(Runtime):
    """A model over one row of numeric features per example."""

    def _setup(self, names: list[str]) -> None:
        self.feature_names = names
        self.inputs = [TensorSpec("features", "FP64", (-1, len(names)))]
        self.outputs = [TensorSpec("score", "FP64", (-1,))]


class LightGBMRuntime(_Tabular):
    platform = "lightgbm"

    def __init__(self, booster: Any) -> None:
        self.booster = getattr(booster, "booster_", booster)
        self._setup(list(self.booster.feature_name()))

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = np.asarray(self.booster.predict(inputs["features"], num_threads=1))
        return {"score": out if out.ndim == 1 else out[:, -1]}


class XGBoostRuntime(_Tabular):
    platform = "xgboost"

    def __init__(self, booster: Any) -> None:
        import xgboost

        self.xgboost = xgboost
        self.booster = booster.get_booster() if hasattr(booster, "get_booster") else booster
        names = self.booster.feature_names or [f"f{i}" for i in range(self.booster.num_features())]
        self._setup(list(names))

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dm = self.xgboost.DMatrix(inputs["features"], feature_names=self.feature_names)
        return {"score": np.asarray(self.booster.predict(dm), dtype=np.float64)}


class SklearnRuntime(_Tabular):
    platform = "sklearn"

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        names = getattr(estimator, "feature_names_in_", None)
        width = getattr(estimator, "n_features_in_", None)
        if names is not None:
            self._setup([str(n) for n in names])
        elif width is not None:
            self._setup([f"x{i}" for i in range(width)])
        else:
            raise ValidationError("a scikit-learn route needs a fitted estimator")

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["features"]
        if hasattr(self.estimator, "predict_proba"):
            return {"score": np.asarray(self.estimator.predict_proba(x))[:, -1].astype(float)}
        return {"score": np.asarray(self.estimator.predict(x), dtype=np.float64)}
