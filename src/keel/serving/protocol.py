"""Open Inference Protocol v2 (KServe / Triton) tensors over REST, JSON and binary.

Triton's binary tensor extension: the body starts with a JSON header whose length is given by
the ``Inference-Header-Content-Length`` header; each binary tensor's bytes follow, in order,
with ``parameters.binary_data_size`` giving its size. BYTES elements are a 4-byte
little-endian length followed by the bytes. Responses are binary for the outputs the client
asked for with ``binary_data`` (what ``tritonclient`` does by default).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from keel.errors import ValidationError
from keel.runtimes.base import DATATYPES

__all__ = ["HEADER", "InferRequest", "decode_request", "encode_response"]

HEADER = "inference-header-content-length"
_DTYPE_NAMES = {np.dtype(v).name: k for k, v in DATATYPES.items() if k != "BYTES"}
_json = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output
    binary_outputs: set[str]
    binary_default: bool


class _Parameters(msgspec.Struct):
    """The request parameters Keel reads (others are allowed and ignored, as in KServe)."""

    binary_data_size: Annotated[int, msgspec.Meta(ge=0)] | None = None
    binary_data: bool = False
    binary_data_output: bool = False


class _Input(msgspec.Struct):
    name: str
    datatype: str
    shape: list[Annotated[int, msgspec.Meta(ge=0)]]
    data: Any = msgspec.UNSET
    parameters: _Parameters | None = None


class _Output(msgspec.Struct):
    name: str
    parameters: _Parameters | None = None


class _Request(msgspec.Struct):
    inputs: Annotated[list[_Input], msgspec.Meta(min_length=1)]
    id: str | None = None
    outputs: list[_Output] | None = None
    parameters: _Parameters | None = None


_request = msgspec.json.Decoder(_Request)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header + binary tensors); ``header_length``
    is the raw value of the ``Inference-Header-Content-Length`` header, if any."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ValidationError(
                f"{HEADER} is {header_length!r}, but the body has {len(body)} bytes"
            )
        head, blob = body[: int(header_length)], body[int(header_length) :]
    else:
        head, blob = body, b""
    # msgspec checks the request's shape and names the field that is wrong.
    try:
        doc = _request.decode(head)
    except msgspec.ValidationError as exc:
        raise ValidationError(
            "an infer request needs a non-empty 'inputs' list, each with a 'name', 'datatype', "
            f"'shape' and 'data': {exc}"
        ) from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"request body is not JSON: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(doc.inputs):
        name, datatype, shape = spec.name, spec.datatype, spec.shape
        if datatype not in DATATYPES:
            raise ValidationError(
                f"inputs[{i}] ({name!r}): datatype {datatype!r} is not one of "
                f"{', '.join(DATATYPES)}"
            )
        size = spec.parameters.binary_data_size if spec.parameters else None
        if size is not None:
            if offset + size > len(blob):
                raise ValidationError(
                    f"input {name!r}: binary data shorter than binary_data_size={size}"
                )
            raw = blob[offset : offset + size]
            offset += size
            arrays[name] = _from_binary(name, raw, datatype, shape)
        else:
            if spec.data is msgspec.UNSET:
                raise ValidationError(f"input {name!r} has no 'data'")
            arrays[name] = _from_json(name, spec.data, datatype, shape)
    outputs = None if doc.outputs is None else [o.name for o in doc.outputs]
    binary = {o.name for o in doc.outputs or () if o.parameters and o.parameters.binary_data}
    binary_default = bool(doc.parameters and doc.parameters.binary_data_output)
    return InferRequest(doc.id, arrays, outputs, binary, binary_default)


def _from_json(name: str, data: Any, datatype: str, shape: list[int]) -> np.ndarray:
    count = math.prod(shape)
    try:
        flat = np.asarray(data, dtype=object if datatype == "BYTES" else DATATYPES[datatype])
    except (ValueError, TypeError, OverflowError):
        raise ValidationError(f"input {name!r}: data is not {datatype}") from None
    if datatype != "BYTES" and flat.dtype.kind == "O":
        raise ValidationError(f"input {name!r}: data is not {datatype}")
    flat = flat.reshape(-1)
    if flat.size != count:
        raise ValidationError(
            f"input {name!r}: {flat.size} values do not fill shape {shape} ({count} values)"
        )
    return flat.reshape(shape)


def _from_binary(name: str, raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ValidationError(f"input {name!r}: truncated BYTES element")
            (length,) = struct.unpack_from("<I", raw, pos)
            items.append(raw[pos + 4 : pos + 4 + length])
            pos += 4 + length
        if len(items) != count:
            raise ValidationError(f"input {name!r}: {len(items)} elements for shape {shape}")
        return np.array(items, dtype=object).reshape(shape)
    dtype = np.dtype(DATATYPES[datatype])
    if len(raw) != count * dtype.itemsize:
        raise ValidationError(
            f"input {name!r}: {len(raw)} bytes do not hold shape {shape} of {datatype}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def encode_response(
    model: str,
    version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    req: InferRequest,
) -> tuple[bytes, dict[str, str]]:
    """The infer response body and extra headers (binary outputs when asked for)."""
    names = req.outputs if req.outputs is not None else list(outputs)
    docs, blobs = [], []
    for name in names:
        if name not in outputs:
            raise ValidationError(
                f"model {model!r} has no output {name!r}; outputs: {', '.join(outputs)}"
            )
        arr = np.asarray(outputs[name])
        datatype = "BYTES" if arr.dtype.kind in "OSU" else _DTYPE_NAMES.get(arr.dtype.name)
        if datatype is None:
            arr = arr.astype(np.float32)
            datatype = "FP32"
        doc: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if name in req.binary_outputs or req.binary_default:
            raw = _to_binary(arr, datatype)
            doc["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            doc["data"] = (
                [x.decode() if isinstance(x, bytes) else str(x) for x in arr.ravel()]
                if datatype == "BYTES"
                else arr.ravel().tolist()
            )
        docs.append(doc)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": docs}
    if request_id is not None:
        body["id"] = request_id
    head = _encoder.encode(body)
    if not blobs:
        return head, {}
    return head + b"".join(blobs), {HEADER: str(len(head))}


def _to_binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(arr).tobytes()
    parts = []
    for x in arr.ravel():
        b = x if isinstance(x, bytes) else str(x).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)
