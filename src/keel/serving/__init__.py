"""Serving: routes of loaded models behind a micro-batcher, over the Open Inference Protocol.

Build an :class:`InferenceServer` from route configs, then serve :func:`create_app` with any
ASGI server (``keel serve`` uses uvicorn).
"""

from __future__ import annotations

from keel.config import FastPathConfig, RouteConfig
from keel.serving.app import create_app
from keel.serving.batcher import Batcher, Overloaded
from keel.serving.server import InferenceServer

__all__ = [
    "Batcher",
    "FastPathConfig",
    "InferenceServer",
    "Overloaded",
    "RouteConfig",
    "create_app",
]
