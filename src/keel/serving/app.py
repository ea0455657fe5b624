"""HTTP: the Open Inference Protocol v2, route predictions with joined features, the control
API and Prometheus metrics, on Starlette.

Intended errors (any :class:`KeelError`) answer ``{"error": "..."}`` with their status; an
overloaded route answers 503 with ``Retry-After``; anything else is logged with its traceback
and answered as a generic 500 — the server lives on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from keel import __version__
from keel.config import AuthConfig, CanaryConfig, ServeConfig, ShadowConfig
from keel.errors import KeelError, ValidationError
from keel.runtimes.recommend import RANKING, is_recommender, ranked_lists
from keel.serving.auth import AUDIT, Authenticator, AuthMiddleware
from keel.serving.batcher import Overloaded
from keel.serving.openapi import openapi_document
from keel.serving.protocol import HEADER, decode_request, encode_response
from keel.serving.routes import RouteConfig, Rows
from keel.serving.server import InferenceServer
from keel.serving.traffic import CANARY_ACTIONS

__all__ = ["ACCESS", "create_app", "read_body"]

logger = logging.getLogger(__name__)
#: What a controller decides: on a shadow, then on a canary (see keel.serving.traffic).
DECISIONS = ("promote", "reject", *CANARY_ACTIONS)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        _encoder.encode(body), status_code=status, media_type="application/json", headers=headers
    )


async def _keel_error(request: Request, exc: Exception) -> Response:
    """An intended error: its status and message; an overloaded route adds Retry-After."""
    if isinstance(exc, Overloaded):
        return _json(
            {"error": str(exc)}, 503, {"retry-after": str(max(1, math.ceil(exc.retry_after_s)))}
        )
    assert isinstance(exc, KeelError)
    return _json({"error": str(exc)}, exc.status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own (404 for an unknown path, 405): JSON like every other error."""
    assert isinstance(exc, HTTPException)
    return _json({"error": exc.detail}, exc.status_code, exc.headers)


class CatchAll:
    """The last resort for a bug: logged with its traceback and answered as a generic 500
    (``answer``; JSON by default) on a connection that stays open. (Starlette's handler for
    ``Exception`` answers too, but re-raises to the server, which then drops the client's
    keep-alive connection.)"""

    def __init__(self, app: Any, answer: Response | None = None) -> None:
        self.app = app
        self.answer = answer or _json({"error": "internal error"}, 500)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def noting(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, noting)
        except Exception:
            logger.exception("request failed: %s %s", scope["method"], scope["path"])
            if started:
                raise
            await self.answer(scope, receive, send)


async def _body(request: Request) -> bytes:
    return await read_body(request, request.app.state.limits)


async def read_body(request: Request, limits: ServeConfig) -> bytes:
    """The request's body, within ``limits``: 413 over ``max_body_bytes`` (told by
    Content-Length, or found while reading), 408 when it is not sent within
    ``body_timeout_s``."""
    limit = limits.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(
            f"request body of {int(length):,} bytes is over the {limit:,}-byte limit "
            "(serve.max_body_bytes)"
        )

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(
                    f"request body is over the {limit:,}-byte limit (serve.max_body_bytes)"
                )
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), limits.body_timeout_s)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {limits.body_timeout_s:g} s "
            "(serve.body_timeout_s)"
        ) from None


def check_rows(n: int, limits: ServeConfig, what: str) -> None:
    if n > limits.max_rows:
        raise PayloadTooLarge(
            f"{what} takes at most {limits.max_rows:,} rows a request (serve.max_rows); got {n:,}"
        )


class PayloadTooLarge(KeelError):
    status_code = 413


class RequestTimeout(KeelError):
    status_code = 408


def _deadline(request: Request) -> float | None:
    raw = request.headers.get("x-keel-deadline-ms")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"x-keel-deadline-ms must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValidationError("x-keel-deadline-ms must be positive")
    return value


def _priority(request: Request) -> int:
    raw = request.headers.get("x-keel-priority")
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ValidationError(f"x-keel-priority must be an integer, got {raw!r}") from None


# -- handlers: module level, the server from request.app.state -------------------------
async def live(request: Request) -> Response:
    return _json({"live": True})


async def ready(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    # Every configured route is serving, or knowingly waiting for its first version.
    ok = bool(server.configs) and len(server.routes) + len(server.pending) == len(server.configs)
    return _json({"ready": ok}, 200 if ok else 503)


async def metadata(request: Request) -> Response:
    return _json(
        {
            "name": "keel",
            "version": __version__,
            "extensions": ["binary_tensor_data", "keel_routes"],
        }
    )


async def model_metadata(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    route = server.route(request.path_params["model"])
    loaded = server.deployed(route, request.path_params.get("version"))
    rt = loaded.runtime
    return _json(
        {
            "name": route.name,
            "versions": [loaded.version],
            "platform": rt.platform,
            "inputs": [s.to_dict() for s in rt.inputs],
            "outputs": [s.to_dict() for s in rt.outputs],
        }
    )


async def model_ready(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    route = server.route(request.path_params["model"])
    if "version" in request.path_params:
        server.check_version(route, request.path_params["version"])
    return _json({"name": request.path_params["model"], "ready": True})


async def infer(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    name = request.path_params["model"]
    route = server.route(name)
    body = await _body(request)
    req = decode_request(body, request.headers.get(HEADER))
    for array in req.inputs.values():
        check_rows(len(array) if array.ndim else 1, request.app.state.limits, "infer")
    wanted = request.path_params.get("version")
    payload = route.check_tensors(req.inputs, server.deployed(route, wanted).runtime)
    outputs, version, _ = await server.infer(
        name,
        payload,
        deadline_ms=_deadline(request),
        key=request.headers.get("x-keel-key"),
        version=wanted,
    )
    content, headers = encode_response(name, version, req.id, outputs, req)
    media = "application/octet-stream" if headers else "application/json"
    return Response(content, media_type=media, headers=headers)


async def predict(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    name = request.path_params["route"]
    route = server.route(name)
    _, rows = _rows(await _body(request), "predict")
    check_rows(len(rows), request.app.state.limits, "predict")
    outputs, version, stale = await server.infer(
        name,
        Rows(rows, len(rows)),
        deadline_ms=_deadline(request),
        priority=_priority(request),
    )
    if is_recommender(route.current.runtime) and RANKING[0] in outputs:
        predictions = ranked_lists(outputs)  # each row as long as its own k
    else:
        predictions = {k: _plain(v) for k, v in outputs.items()}
    return _json(
        {
            "route": name,
            "version": version,
            "predictions": predictions,
            "staleness_s": stale or {},
        }
    )


async def explain(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    name = request.path_params["route"]
    server.route(name)
    doc, rows = _rows(await _body(request), "explain")
    check_rows(len(rows), request.app.state.limits, "explain")
    method, top = doc.get("method"), doc.get("top")
    if method is not None and not isinstance(method, str):
        raise ValidationError("explain's 'method' must be a string")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 1):
        raise ValidationError("explain's 'top' must be a positive integer")
    return _json(await server.explanations.explain(name, rows, method=method, top=top))


async def reload(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    result = await asyncio.to_thread(server.reload, request.path_params["route"])
    return _json(result, 200 if "error" not in result else 409)


async def list_routes(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    return _json(
        [
            {
                "name": r.name,
                "model": r.config.model,
                "serving": r.current.version,
                "device": r.config.device,
                "batching": r.config.batching,
                "max_batch_size": r.config.max_batch_size,
                "queue": r.batcher.depth,
                "features": r.config.features,
                "last_error": r.last_error,
                "fast_path": None if r.fast_path is None else r.fast_path.deployed.version,
                "canary": None if r.config.canary is None else msgspec.to_builtins(r.config.canary),
                "shadow": None if r.config.shadow is None else msgspec.to_builtins(r.config.shadow),
            }
            for r in server.routes.values()
        ]
        + [
            {"name": name, "model": server.configs[name].model, "serving": None, "why": why}
            for name, why in server.pending.items()
        ]
    )


async def put_route(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    try:
        cfg = msgspec.json.decode(await _body(request), type=RouteConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationError(f"invalid route: {exc}") from None
    route = await asyncio.to_thread(server.add, cfg)
    return _json({"name": route.name, "serving": route.current.version}, 201)


async def get_traffic(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    # The last decisions are read from the log: off the event loop.
    return _json(await asyncio.to_thread(server.traffic, request.path_params["route"]))


async def set_traffic(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    name = request.path_params["route"]
    server.route(name)
    try:
        doc = msgspec.json.decode(await _body(request), type=TrafficRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationError(f"invalid traffic settings: {exc}") from None
    fields = doc.__struct_fields__
    given = {f: getattr(doc, f) for f in fields if getattr(doc, f) is not msgspec.UNSET}
    if not given:
        raise ValidationError("give 'canary' and/or 'shadow' (null removes one)")
    await asyncio.to_thread(server.set_traffic, name, **given)
    return _json(await asyncio.to_thread(server.traffic, name))


async def record_decision(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    name = request.path_params["route"]
    route = server.route(name)
    try:
        doc = _decoder.decode(await _body(request))
    except msgspec.DecodeError as exc:
        raise ValidationError(f"request body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("action") not in DECISIONS:
        raise ValidationError(f"a decision needs an 'action': one of {', '.join(DECISIONS)}")

    def record() -> None:  # writes to the log: off the event loop
        if doc["action"] == "reject" and route.shadow_state is not None:
            route.shadow_state.status = "rejected"
            server.snapshot(route, force=True)
        server.publish(name, "decision", doc)

    await asyncio.to_thread(record)
    return _json({"recorded": True})


async def metrics(request: Request) -> Response:
    server: InferenceServer = request.app.state.server
    server.metrics.queue_depths(server.routes)
    return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return _json(openapi_document())


#: Each HTTP route's access level (see keel.serving.auth): who may call it once tokens are
#: configured. A route missing here needs an admin token.
ACCESS: dict[tuple[str, str], str] = {
    ("GET", "/v2/health/live"): "health",
    ("GET", "/v2/health/ready"): "health",
    ("GET", "/v2"): "metrics",
    ("GET", "/metrics"): "metrics",
    ("GET", "/openapi.json"): "metrics",
    ("GET", "/v2/models/{model}"): "data",
    ("GET", "/v2/models/{model}/versions/{version}"): "data",
    ("GET", "/v2/models/{model}/ready"): "data",
    ("GET", "/v2/models/{model}/versions/{version}/ready"): "data",
    ("POST", "/v2/models/{model}/infer"): "data",
    ("POST", "/v2/models/{model}/versions/{version}/infer"): "data",
    ("POST", "/v1/routes/{route}/predict"): "data",
    ("POST", "/v1/routes/{route}/explain"): "data",
    ("GET", "/v1/routes"): "read",
    ("GET", "/v1/routes/{route}/traffic"): "read",
    ("POST", "/v1/routes/{route}/reload"): "operate",
    ("POST", "/v1/routes/{route}/traffic"): "operate",
    ("POST", "/v1/routes/{route}/decisions"): "operate",
    ("POST", "/v1/routes"): "admin",
}


def _level(method: str, template: str) -> str | None:
    return ACCESS.get(("GET" if method == "HEAD" else method, template))


def create_app(
    server: InferenceServer,
    *,
    max_body: int | None = None,
    auth: AuthConfig | None = None,
    limits: ServeConfig | None = None,
) -> Starlette:
    """The ASGI app for ``server`` (routes are loaded before it takes traffic). Requests
    over ``limits`` (or ``max_body`` bytes, if given) are refused with 413. With tokens in
    ``auth``, each route needs a token whose role reaches its level in ``ACCESS``;
    control-plane calls are audited on ``keel.audit`` either way."""
    limits = limits or ServeConfig()
    if max_body is not None:
        limits = msgspec.structs.replace(limits, max_body_bytes=max_body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    if server.log is not None:
        server.log.create_topic(AUDIT, exist_ok=True)
    app = Starlette(
        routes=[
            HttpRoute("/v2/health/live", live),
            HttpRoute("/v2/health/ready", ready),
            HttpRoute("/v2", metadata),
            HttpRoute("/v2/models/{model}", model_metadata),
            HttpRoute("/v2/models/{model}/versions/{version}", model_metadata),
            HttpRoute("/v2/models/{model}/ready", model_ready),
            HttpRoute("/v2/models/{model}/versions/{version}/ready", model_ready),
            HttpRoute("/v2/models/{model}/infer", infer, methods=["POST"]),
            HttpRoute("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
            HttpRoute("/v1/routes", list_routes),
            HttpRoute("/v1/routes", put_route, methods=["POST"]),
            HttpRoute("/v1/routes/{route}/predict", predict, methods=["POST"]),
            HttpRoute("/v1/routes/{route}/explain", explain, methods=["POST"]),
            HttpRoute("/v1/routes/{route}/reload", reload, methods=["POST"]),
            HttpRoute("/v1/routes/{route}/traffic", get_traffic),
            HttpRoute("/v1/routes/{route}/traffic", set_traffic, methods=["POST"]),
            HttpRoute("/v1/routes/{route}/decisions", record_decision, methods=["POST"]),
            HttpRoute("/metrics", metrics),
            HttpRoute("/openapi.json", openapi),
        ],
        lifespan=lifespan,
        exception_handlers={
            KeelError: _keel_error,
            HTTPException: _http_error,
        },
        middleware=[
            Middleware(CatchAll),
            Middleware(
                AuthMiddleware,
                authenticator=Authenticator(auth or AuthConfig()),
                level_of=_level,
                log_=server.log,
            ),
        ],
    )
    app.state.limits = limits
    app.state.server = server
    return app


class TrafficRequest(msgspec.Struct, forbid_unknown_fields=True):
    canary: CanaryConfig | msgspec.UnsetType | None = msgspec.UNSET
    shadow: ShadowConfig | msgspec.UnsetType | None = msgspec.UNSET


def _rows(body: bytes, what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A predict-shaped body: ``{"rows": [{...}, ...], ...}``."""
    try:
        doc = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"request body is not JSON: {exc}") from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValidationError(f'{what} needs {{"rows": [{{...}}, ...]}} with at least one row')
    return doc, rows


def _plain(values: np.ndarray) -> Any:
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        return [None if x != x else x for x in arr.tolist()] if arr.ndim == 1 else arr.tolist()
    return arr.tolist()
