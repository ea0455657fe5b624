"""Open Inference Protocol v2 (KServe / Triton) tensors over REST, JSON and binary.

Triton's binary tensor extension: the body starts with a JSON header whose length is given by
the ``Inference-Header-Content-Length`` header; each binary tensor's bytes follow, in order,
with ``parameters.binary_data_size`` giving its size. BYTES elements are a 4-byte
little-endian length followed by the bytes. Responses are binary for the outputs the client
asked for with ``binary_data`` (what ``tritonclient`` does by default).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

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


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header + binary tensors)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise ValidationError(
                f"{HEADER} is {header_length}, but the body has {len(body)} bytes"
            )
        head, blob = body[:header_length], body[header_length:]
    else:
        head, blob = body, b""
    try:
        doc = _json.decode(head)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"request body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ValidationError("an infer request needs a non-empty 'inputs' list")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(doc["inputs"]):
        if not isinstance(spec, dict):
            raise ValidationError(f"inputs[{i}] must be an object")
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if (
            not isinstance(name, str)
            or datatype not in DATATYPES
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise ValidationError(
                f"inputs[{i}] needs 'name', a 'datatype' in {', '.join(DATATYPES)} and a "
                "'shape' of non-negative integers"
            )
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if offset + size > len(blob):
                raise ValidationError(
                    f"input {name!r}: binary data shorter than binary_data_size={size}"
                )
            raw = blob[offset : offset + size]
            offset += size
            arrays[name] = _from_binary(name, raw, datatype, shape)
        else:
            if "data" not in spec:
                raise ValidationError(f"input {name!r} has no 'data'")
            arrays[name] = _from_json(name, spec["data"], datatype, shape)
    params = doc.get("parameters") or {}
    wanted = doc.get("outputs")
    outputs = None
    binary: set[str] = set()
    if isinstance(wanted, list):
        outputs = []
        for o in wanted:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise ValidationError("each of 'outputs' needs a 'name'")
            outputs.append(o["name"])
            if (o.get("parameters") or {}).get("binary_data"):
                binary.add(o["name"])
    return InferRequest(
        doc.get("id"), arrays, outputs, binary, bool(params.get("binary_data_output"))
    )


def _from_json(name: str, data: Any, datatype: str, shape: list[int]) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    flat = np.asarray(data, dtype=object if datatype == "BYTES" else DATATYPES[datatype])
    if datatype != "BYTES" and flat.dtype.kind == "O":
        raise ValidationError(f"input {name!r}: data is not {datatype}")
    flat = flat.reshape(-1)
    if flat.size != count:
        raise ValidationError(
            f"input {name!r}: {flat.size} values do not fill shape {shape} ({count} values)"
        )
    return flat.reshape(shape)


def _from_binary(name: str, raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
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
