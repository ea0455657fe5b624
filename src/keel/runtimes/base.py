"""A runtime runs one loaded model on batches of named tensors.

Every runtime declares its input and output tensors (name, Open Inference Protocol datatype,
shape with -1 for "any"; the first dimension is the batch), which the server uses to validate
requests and to answer model-metadata calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from keel.errors import ValidationError

__all__ = ["DATATYPES", "Runtime", "TensorSpec", "to_numpy_dtype"]

#: Open Inference Protocol datatypes and their NumPy equivalents.
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


def to_numpy_dtype(datatype: str) -> Any:
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise ValidationError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size; shape[0] is the batch

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check(self, array: np.ndarray, where: str) -> np.ndarray:
        """Validate one request's tensor (with its batch dimension) and cast it."""
        if array.ndim != len(self.shape):
            raise ValidationError(
                f"{where}: input {self.name!r} has shape {list(array.shape)}, expected "
                f"{len(self.shape)} dimensions like {list(self.shape)}"
            )
        for i, (got, want) in enumerate(zip(array.shape, self.shape, strict=True)):
            if want != -1 and got != want:
                raise ValidationError(
                    f"{where}: input {self.name!r} has shape {list(array.shape)}, expected "
                    f"{list(self.shape)} (dimension {i} must be {want})"
                )
        if self.datatype == "BYTES":
            if array.dtype.kind not in "OSU":
                raise ValidationError(
                    f"{where}: input {self.name!r} must be BYTES (strings), got {array.dtype}"
                )
            return array.astype(object)
        dtype = to_numpy_dtype(self.datatype)
        if array.dtype.kind in "OSU":
            raise ValidationError(
                f"{where}: input {self.name!r} must be {self.datatype} numbers, got strings"
            )
        if array.dtype.kind == "f" and np.dtype(dtype).kind in "iub":
            raise ValidationError(
                f"{where}: input {self.name!r} must be {self.datatype}, got floats"
            )
        return array.astype(dtype, copy=False)


class Runtime(ABC):
    """A loaded model: ``predict`` maps a batch of input tensors to output tensors."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: The feature columns a row of ``features`` holds, in order (what a route joins by
    #: name); empty for a model fed its tensors as they are.
    feature_names: list[str]
    platform: str = "python"

    @abstractmethod
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch (first dimension) and return every output, row-aligned."""

    def warmup(self) -> dict[str, np.ndarray]:
        """Run a small batch of the right shapes so the first request is not slow; return
        its outputs."""
        sample = {}
        for spec in self.inputs:
            shape = [2 if d == -1 else d for d in spec.shape]
            if spec.datatype == "BYTES":
                sample[spec.name] = np.full(shape, "warm up", dtype=object)
            else:
                sample[spec.name] = np.zeros(shape, dtype=to_numpy_dtype(spec.datatype))
        out = self.predict(sample)
        missing = [o.name for o in self.outputs if o.name not in out]
        if missing:
            raise ValidationError(f"warm-up produced no output {missing[0]!r}")
        return out
