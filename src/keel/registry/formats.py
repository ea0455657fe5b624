"""Model formats: how a model object becomes artifact bytes and comes back.

Only formats that cannot execute code on load: torch weights as safetensors (plus the import
path of the module's factory), LightGBM text, XGBoost JSON, ONNX, scikit-learn through skops
(which refuses unknown types). Pickle is available, but only when both the registration and
the load say ``trusted=True``.
"""

from __future__ import annotations

import importlib
import io
import pickle
from dataclasses import dataclass, field
from typing import Any

from keel.errors import KeelError, ValidationError

__all__ = [
    "FORMATS",
    "Serialized",
    "deserialize",
    "detect_format",
    "import_object",
    "serialize",
]

FORMATS = ("torch", "lightgbm", "xgboost", "onnx", "sklearn", "pickle")


@dataclass
class Serialized:
    format: str
    data: bytes
    loader: dict[str, Any] = field(default_factory=dict)


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def detect_format(model: Any) -> str:
    """The format a model object is stored in, by its type."""
    root = _module_of(model)
    mro = {f"{c.__module__}.{c.__qualname__}" for c in type(model).__mro__}
    if "torch.nn.modules.module.Module" in mro:
        return "torch"
    if root == "lightgbm":
        return "lightgbm"
    if root == "xgboost":
        return "xgboost"
    if root == "onnx" or type(model).__name__ == "ModelProto":
        return "onnx"
    if any(m.startswith("sklearn.base.BaseEstimator") for m in mro):
        return "sklearn"
    raise ValidationError(
        f"cannot tell how to store a {type(model).__module__}.{type(model).__qualname__}: "
        f"pass format= one of {', '.join(FORMATS)} (pickle only with trusted=True)"
    )


def serialize(
    model: Any,
    format: str | None = None,
    *,
    factory: str | None = None,
    init_kwargs: dict[str, Any] | None = None,
    trusted: bool = False,
) -> Serialized:
    """Turn ``model`` into bytes in ``format`` (detected when omitted)."""
    fmt = format or detect_format(model)
    if fmt not in FORMATS:
        raise ValidationError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "torch":
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        target = factory or f"{type(model).__module__}:{type(model).__qualname__}"
        _resolve(target)  # fail now, not at load time, if it cannot be imported
        return Serialized(fmt, save(state), {"factory": target, "kwargs": init_kwargs or {}})
    if fmt == "lightgbm":
        booster = getattr(model, "booster_", model)
        return Serialized(fmt, booster.model_to_string().encode())
    if fmt == "xgboost":
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        return Serialized(fmt, bytes(booster.save_raw("json")))
    if fmt == "onnx":
        data = model if isinstance(model, bytes) else model.SerializeToString()
        return Serialized(fmt, data)
    if fmt == "sklearn":
        import skops.io

        return Serialized(fmt, skops.io.dumps(model))
    if not trusted:
        raise ValidationError(
            "pickle can run arbitrary code when loaded: register with trusted=True only for "
            "models from a source you trust, or use a safe format"
        )
    return Serialized(fmt, pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))


def deserialize(fmt: str, data: bytes, loader: dict[str, Any], *, trusted: bool = False) -> Any:
    """Rebuild a model from verified artifact bytes."""
    if fmt == "torch":
        from safetensors.torch import load

        module = _resolve(loader["factory"])(**loader.get("kwargs", {}))
        module.load_state_dict(load(data))
        module.eval()
        return module
    if fmt == "lightgbm":
        import lightgbm

        return lightgbm.Booster(model_str=data.decode())
    if fmt == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        return booster
    if fmt == "onnx":
        import onnx

        return onnx.load_from_string(data)
    if fmt == "sklearn":
        import skops.io

        listed = skops.io.get_untrusted_types(data=data)
        # scikit-learn's and NumPy's own types (e.g. a tree's Tree) are rebuilt by skops'
        # loaders, not by running stored code; anything else needs an explicit trust.
        foreign = [t for t in listed if not t.startswith(("sklearn.", "numpy."))]
        if foreign and not trusted:
            raise KeelError(
                f"this scikit-learn artifact holds types from outside scikit-learn: "
                f"{', '.join(foreign)}; load with trusted=True if you trust its source"
            )
        return skops.io.loads(data, trusted=listed or None)
    if fmt == "pickle":
        if not trusted:
            raise KeelError(
                "this version is a pickle, which runs code when loaded: pass trusted=True to "
                "load it, and only for a source you trust"
            )
        return pickle.load(io.BytesIO(data))
    raise ValidationError(f"unknown stored format {fmt!r}")


def import_object(target: str, what: str = "factory", hint: str = "") -> Any:
    """The object at ``"package.module:Name"`` (dotted attributes allowed)."""
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ValidationError(f"{what} {target!r} must look like 'package.module:callable'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValidationError(f"{what} {target!r} cannot be imported ({exc}){hint}") from None
    return obj


def _resolve(target: str) -> Any:
    return import_object(
        target,
        hint="; torch modules are rebuilt by calling it, so it must be importable wherever "
        "the model is loaded",
    )
