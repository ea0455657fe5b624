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
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keel.errors import KeelError
from keel.features.store import FeatureStore

__all__ = ["FeatureRequest", "create_app"]

log = logging.getLogger(__name__)


class FeatureRequest(msgspec.Struct, forbid_unknown_fields=True):
    features: list[str]
    keys: list[Any] | dict[str, list[Any]]
    at: datetime | None = None


_decoder = msgspec.json.Decoder(FeatureRequest)
_encoder = msgspec.json.Encoder()


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status_code=status, media_type="application/json")


def create_app(store: FeatureStore, *, follow: bool = True, interval_s: float = 0.2) -> Starlette:
    """A Starlette app serving ``store``; with ``follow`` it materializes in the background."""

    async def features(request: Request) -> Response:
        try:
            req = _decoder.decode(await request.body())
        except msgspec.ValidationError as exc:
            return _json({"error": f"invalid request: {exc}"}, 400)
        except msgspec.DecodeError as exc:
            return _json({"error": f"request body is not JSON: {exc}"}, 400)
        try:
            result = store.get_online(req.features, req.keys, at=req.at)
        except KeelError as exc:
            return _json({"error": str(exc)}, exc.status_code)
        except Exception:
            log.exception("feature lookup failed")
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
    )
