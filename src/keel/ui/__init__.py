"""The web console (``keel ui``): server-rendered pages of what the platform is doing —
components, routes, models and their lineage, features, monitoring, jobs, the loop and
explanations — refreshing themselves, and an operator's actions (promote, reject, roll back,
pause or resume a loop) under the server's own tokens and roles.

Starlette and Jinja2 render the pages; charts are inline SVG drawn in Python; HTMX, shipped in
``static/``, refreshes live parts. Nothing is fetched from elsewhere at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["create_app"]


def create_app(project: Any, **options: Any) -> Starlette:
    """The console's ASGI app for ``project`` (see :func:`keel.ui.app.create_app`)."""
    from keel.ui.app import create_app as build

    return build(project, **options)
