"""The server's OpenAPI 3.1 document, served at ``/openapi.json``.

Written out rather than generated from docstrings (Starlette's ``SchemaGenerator`` parses
YAML out of each handler's docstring and checks nothing): the bodies of the control API are
the very msgspec Structs the server decodes (:class:`~keel.config.RouteConfig`, the canary and
shadow settings), so their schemas come from ``msgspec.json.schema_components`` and cannot
drift from what is accepted; ``tests/serving/test_openapi.py`` checks that every HTTP route of
the app is documented here and fuzzes the server against this document.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from keel import __version__
from keel.config import CanaryConfig, RouteConfig, ShadowConfig

__all__ = ["fuzzing_document", "openapi_document"]

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "an error, said in words")
_ERRORS = {
    "400": _ERROR,
    "401": _ERROR,
    "403": _ERROR,
    "404": _ERROR,
    "413": _ERROR,
    "503": _ERROR,
}
_OBJECT: dict[str, Any] = {"type": "object"}
_NAME = {"name": "route", "in": "path", "required": True, "schema": {"type": "string"}}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_DEADLINE = {
    "name": "x-keel-deadline-ms",
    "in": "header",
    "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0},
    "description": "answer within this many milliseconds (the fast path, where a route has one)",
}
_PRIORITY = {
    "name": "x-keel-priority",
    "in": "header",
    "required": False,
    "schema": {"type": "integer"},
    "description": "higher runs first when the route's queue is long",
}

_ROWS: dict[str, Any] = {
    "type": "object",
    "required": ["rows"],
    "properties": {
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "object", "description": "entity keys and request features"},
        }
    },
}
_EXPLAIN = {
    "type": "object",
    "required": ["rows"],
    "properties": {
        **_ROWS["properties"],
        "method": {"type": "string", "enum": ["auto", "tree", "kernel", "surrogate"]},
        "top": {"type": "integer", "minimum": 1},
    },
}
_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "array"},
        "parameters": _OBJECT,
    },
}
_INFER = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object"}},
        "parameters": _OBJECT,
    },
}
_TRAFFIC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "canary": {"anyOf": [_ref("CanaryConfig"), {"type": "null"}]},
        "shadow": {"anyOf": [_ref("ShadowConfig"), {"type": "null"}]},
    },
}
_DECISION = {
    "type": "object",
    "required": ["action"],
    "properties": {"action": {"type": "string"}, "evidence": _OBJECT},
}


def _op(
    summary: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    ok: str = "200",
    answer: dict[str, Any] | None = None,
    tag: str,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "parameters": params or [],
        "responses": {ok: _json(answer or _OBJECT, "done"), **_ERRORS},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _paths() -> dict[str, dict[str, Any]]:
    v2 = "Open Inference Protocol v2"
    routes = "Routes"
    control = "Control"
    return {
        "/v2/health/live": {"get": _op("the process answers", tag=v2)},
        "/v2/health/ready": {"get": _op("every route is loaded", tag=v2)},
        "/v2": {"get": _op("server metadata", tag=v2)},
        "/v2/models/{model}": {"get": _op("a route's model", params=[_MODEL], tag=v2)},
        "/v2/models/{model}/versions/{version}": {
            "get": _op("one loaded version of a route's model", params=[_MODEL, _VERSION], tag=v2)
        },
        "/v2/models/{model}/ready": {"get": _op("a route is ready", params=[_MODEL], tag=v2)},
        "/v2/models/{model}/versions/{version}/ready": {
            "get": _op("a version is loaded", params=[_MODEL, _VERSION], tag=v2)
        },
        "/v2/models/{model}/infer": {
            "post": _op("infer on tensors", params=[_MODEL, _DEADLINE], body=_INFER, tag=v2)
        },
        "/v2/models/{model}/versions/{version}/infer": {
            "post": _op(
                "infer on one loaded version",
                params=[_MODEL, _VERSION, _DEADLINE],
                body=_INFER,
                tag=v2,
            )
        },
        "/v1/routes": {
            "get": _op("routes, their versions, canaries and shadows", tag=routes),
            "post": _op(
                "add a route, or replace one (draining the old)",
                body=_ref("RouteConfig"),
                ok="201",
                tag=control,
            ),
        },
        "/v1/routes/{route}/predict": {
            "post": _op(
                "predict on rows, features joined as of now",
                params=[_NAME, _DEADLINE, _PRIORITY],
                body=_ROWS,
                tag=routes,
            )
        },
        "/v1/routes/{route}/explain": {
            "post": _op(
                "each feature's contribution to each row's prediction",
                params=[_NAME],
                body=_EXPLAIN,
                tag=routes,
            )
        },
        "/v1/routes/{route}/reload": {
            "post": _op("load the version the route's alias names", params=[_NAME], tag=control)
        },
        "/v1/routes/{route}/traffic": {
            "get": _op("the route's canary and shadow", params=[_NAME], tag=routes),
            "post": _op(
                "set or remove the route's canary and shadow",
                params=[_NAME],
                body=_TRAFFIC,
                tag=control,
            ),
        },
        "/v1/routes/{route}/decisions": {
            "post": _op(
                "record a decision on the route's shadow or canary",
                params=[_NAME],
                body=_DECISION,
                tag=control,
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["Operations"],
                "responses": {
                    "200": {"description": "text exposition format", "content": {"text/plain": {}}}
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the inference server's HTTP API."""
    _, components = msgspec.json.schema_components(
        [RouteConfig, CanaryConfig, ShadowConfig], ref_template=_REF
    )
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    }
    paths = _paths()
    paths["/openapi.json"] = {
        "get": {
            "summary": "this document",
            "tags": ["Operations"],
            "responses": {"200": _json(_OBJECT, "the OpenAPI document")},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Keel inference server", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }


def fuzzing_document(routes: list[str]) -> dict[str, Any]:
    """The document a fuzzer is pointed at: as served, with the route and model path
    parameters drawn from ``routes`` and one name that does not exist, so that generated
    requests reach past the 404s into the handlers."""
    doc = copy.deepcopy(openapi_document())
    for item in doc["paths"].values():
        for op in item.values():
            for p in op.get("parameters", []):
                if p["in"] == "path" and p["name"] in ("route", "model"):
                    p["schema"] = {"type": "string", "enum": [*routes, "nope"]}
    return doc
