"""``POST /v1/features``: online features over HTTP, for callers that are not Keel routes.

Request: ``{"features": ["view:feature", "view"], "keys": [1, 2]}`` (or ``{"user_id": [...]}``
for features of several entities), optionally ``"at": "2026-11-29T10:00:00Z"``.
Response: ``{"rows": [{"user_id": 1, "view__feature": 3.0, ...}], "staleness_s": {...},
"missing": {...}}``. Errors are ``{"error": "..."}`` with 400/404.
The app follows the log in a background thread so served values stay fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keel.config import AuthConfig, ServeConfig
from keel.errors import KeelError
from keel.features.store import FeatureStore
from keel.serving.app import read_body
from keel.serving.auth import Authenticator, AuthMiddleware

__all__ = ["FeatureRequest", "create_app"]

logger = logging.getLogger(__name__)


class FeatureRequest(msgspec.Struct, forbid_unknown_fields=True):
    features: list[str]
    keys: list[Any] | dict[str, list[Any]]
    at: datetime | None = None


_decoder = msgspec.json.Decoder(FeatureRequest)
_encoder = msgspec.json.Encoder()


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status_code=status, media_type="application/json")


def create_app(
    store: FeatureStore,
    *,
    follow: bool = True,
    interval_s: float = 0.2,
    auth: AuthConfig | None = None,
    limits: ServeConfig | None = None,
) -> Starlette:
    """A Starlette app serving ``store``; with ``follow`` it materializes in the background.
    Lookups are the data plane (see :mod:`keel.serving.auth`): open unless ``auth`` asks
    for a token there; at most ``limits.max_keys`` keys a lookup."""
    limits = limits or ServeConfig()

    async def features(request: Request) -> Response:
        try:
            req = _decoder.decode(await read_body(request, limits))
        except msgspec.ValidationError as exc:
            return _json({"error": f"invalid request: {exc}"}, 400)
        except msgspec.DecodeError as exc:
            return _json({"error": f"request body is not JSON: {exc}"}, 400)
        except KeelError as exc:
            return _json({"error": str(exc)}, exc.status_code)
        keys = (
            len(req.keys)
            if isinstance(req.keys, list)
            else max((len(v) for v in req.keys.values()), default=0)
        )
        if keys > limits.max_keys:
            return _json(
                {
                    "error": f"a lookup takes at most {limits.max_keys:,} keys "
                    f"(serve.max_keys); got {keys:,}"
                },
                413,
            )
        try:
            # Off the event loop: an online store may be a network round trip away.
            result = await asyncio.to_thread(store.get_online, req.features, req.keys, at=req.at)
        except KeelError as exc:
            return _json({"error": str(exc)}, exc.status_code)
        except Exception:
            logger.exception("feature lookup failed")
            return _json({"error": "internal error"}, 500)
        return _json(
            {
                "rows": result.to_pylist(),
                "staleness_s": {
                    k: [None if v != v else float(v) for v in arr]
                    for k, arr in result.staleness_s.items()
                },
                "missing": {k: arr.tolist() for k, arr in result.missing.items()},
            }
        )

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "views": [v.name for v in store.views]})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if follow:
            thread = threading.Thread(
                target=store.follow, args=(stop, interval_s), name="keel-materializer", daemon=True
            )
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                await asyncio.to_thread(thread.join, 10)

    return Starlette(
        routes=[
            Route("/v1/features", features, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(
                AuthMiddleware,
                authenticator=Authenticator(auth or AuthConfig()),
                level_of=lambda method, path: ACCESS.get((method, path)),
            )
        ],
    )


#: The feature server's access levels (see keel.serving.auth).
ACCESS = {("POST", "/v1/features"): "data", ("GET", "/healthz"): "health"}
