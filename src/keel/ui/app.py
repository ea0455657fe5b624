"""The web console's ASGI app: server-rendered pages (Starlette and Jinja2), built once from a
list of routes, its state on ``app.state.console``, errors answered as pages by exception
handlers.

Pages read the project off the event loop; live parts refresh themselves with HTMX (shipped
in ``static/``, as is everything the pages load: nothing is fetched from elsewhere, which the
Content-Security-Policy enforces).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from keel.config import AuthConfig
from keel.errors import KeelError, ValidationError
from keel.serving.app import CatchAll
from keel.serving.auth import AUDIT
from keel.ui import actions, pages
from keel.ui.session import Sessions, SignInRequired
from keel.ui.state import ConsoleState

__all__ = ["create_app"]


HERE = Path(str(resources.files("keel.ui")))

#: Headers on every answer: nothing loads from elsewhere, nothing frames the console.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` (and ``no-store`` on pages: they
    show who is signed in and what they may do)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


BUG_PAGE = (
    "<!doctype html><html lang=en><title>Error · Keel</title><h1>Something went wrong</h1>"
    "<p>The console could not answer this page; its log says why. <a href=/>Overview</a></p>"
)


async def _sign_in_first(request: Request, exc: Exception) -> Response:
    """A page that needs a signed-in person sends the browser to sign in, then back."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    where = str(request.url_for("signin")) + "?next=" + quote(target, safe="")
    if request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Redirect": where})
    if request.method == "GET":
        return RedirectResponse(where, status_code=303)
    return pages.error_page(request, exc, 401)


async def _keel_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KeelError)
    return pages.error_page(request, exc, exc.status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return pages.error_page(request, exc, exc.status_code)


ROUTES = [
    Route("/", pages.overview, name="overview"),
    Route("/health", pages.health, name="health"),
    Route("/routes/{route}", pages.route, name="route"),
    Route("/routes/{route}/{action}", actions.confirm, name="confirm"),
    Route("/routes/{route}/{action}", actions.act, methods=["POST"], name="act"),
    Route("/models", pages.models, name="models"),
    Route("/models/{name}", pages.model, name="model"),
    Route("/features", pages.features, name="features"),
    Route("/monitor", pages.monitor_index, name="monitor_index"),
    Route("/monitor/{route}", pages.monitor, name="monitor"),
    Route("/jobs", pages.jobs, name="jobs"),
    Route("/loop", pages.loop_index, name="loop_index"),
    Route("/loop/{route}", pages.loop, name="loop"),
    Route("/explain", pages.explain_index, name="explain_index"),
    Route("/explain/{route}", pages.explain, name="explain"),
    Route("/explain/{route}", pages.explain_now, methods=["POST"], name="explain_now"),
    Route("/signin", actions.signin_form, name="signin"),
    Route("/signin", actions.signin, methods=["POST"], name="signin_post"),
    Route("/signout", actions.signout, methods=["POST"], name="signout"),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


def create_app(
    project: Any,
    *,
    server_url: str | None = None,
    auth: AuthConfig | None = None,
    refresh_s: float = 5.0,
    sample_metrics: bool = True,
) -> Starlette:
    """The console of ``project`` (a :class:`keel.project.Project`).

    ``server_url``: the server it asks about routes, scrapes metrics from and tells of
    decisions (default: the one ``keel up`` runs, else ``http://127.0.0.1:8000``); the
    console works without one, from the log and the registry. ``auth``: the tokens (default:
    the project's, with ``KEEL_AUTH_TOKENS``). ``refresh_s``: how often live parts refresh.
    """
    from keel.supervisor.plan import run_dir
    from keel.supervisor.state import read_state
    from keel.supervisor.status import DEFAULT_URL
    from keel.supervisor.supervisor import STATE_FILE

    if refresh_s <= 0:
        raise ValidationError(f"refresh_s must be positive, got {refresh_s!r}")
    if server_url is None:
        up = read_state(run_dir(project.settings.data_dir) / STATE_FILE)
        server_url = up.url if up is not None and up.url else DEFAULT_URL
    sessions = Sessions(auth if auth is not None else project.settings.auth.with_env())
    state = ConsoleState(project, server_url, sessions, refresh_s=refresh_s)
    state.sampler.every_s = max(refresh_s, 1.0)
    project.log.create_topic(AUDIT, exist_ok=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        sampler = None
        if sample_metrics:
            sampler = threading.Thread(
                target=state.sampler.run, args=(stop,), name="keel-ui-metrics", daemon=True
            )
            sampler.start()
        try:
            yield
        finally:
            stop.set()
            if sampler is not None:
                sampler.join(5)

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            SignInRequired: _sign_in_first,
            KeelError: _keel_error,
            HTTPException: _http_error,
        },
        # A bug in a handler is logged with its traceback and answered as a plain 500 page
        # (with the security headers, which wrap it); the console lives on.
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(CatchAll, answer=Response(BUG_PAGE, 500, media_type="text/html")),
        ],
    )
    app.state.console = state
    app.state.templates = templates()
    return app


def templates() -> Jinja2Templates:
    """The console's templates, with the helpers they use."""
    from keel.ui import charts, text
    from keel.ui.data.routes import decision_facts

    t = Jinja2Templates(directory=HERE / "templates")
    t.env.globals.update(
        number=charts.number,
        duration=text.duration,
        stamp=text.stamp,
        stamp_ts=text.stamp_ts,
        decision_facts=decision_facts,
    )
    return t
