"""The console's read-only pages: module-level handlers, each gathering its page's data off
the event loop (:mod:`keel.ui.data`) and rendering its template."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from keel.errors import KeelError, ValidationError
from keel.ui.data import explain as explain_data
from keel.ui.data import features as features_data
from keel.ui.data import jobs as jobs_data
from keel.ui.data import loop as loop_data
from keel.ui.data import models as models_data
from keel.ui.data import monitor as monitor_data
from keel.ui.data import overview as overview_data
from keel.ui.data import routes as routes_data
from keel.ui.session import COOKIE, Session, check_origin, require
from keel.ui.text import stamp_ts

__all__ = [
    "error_page",
    "explain",
    "explain_index",
    "explain_now",
    "features",
    "health",
    "jobs",
    "loop",
    "loop_index",
    "model",
    "models",
    "monitor",
    "monitor_index",
    "overview",
    "render",
    "route",
]

#: The largest form the console takes (a request row to explain is the largest it shows).
MAX_FORM = 64 * 1024

#: The main navigation: (label, route name).
NAV = [
    ("Overview", "overview"),
    ("Models", "models"),
    ("Features", "features"),
    ("Monitor", "monitor_index"),
    ("Jobs", "jobs"),
    ("Loop", "loop_index"),
    ("Explanations", "explain_index"),
]


def current_session(request: Request) -> Session | None:
    state = request.app.state.console
    return state.sessions.get(request.cookies.get(COOKIE))


def render(
    request: Request, template: str, context: dict[str, Any], status: int = 200, **extra: Any
) -> Response:
    """``template`` with ``context`` and what every page shows: who is signed in, the
    navigation, the refresh interval, a message left by the last action."""
    state = request.app.state.console
    session = current_session(request)
    flash = state.sessions.pop_flash(session, request.query_params.get("flash"))
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "flash"]
    now = time.time()
    full = {
        "session": session,
        "live_url": request.url.path + ("?" + urlencode(query) if query else ""),
        "updated": stamp_ts(now)[11:],
        "now_ts": now,
        "auth_enabled": state.sessions.enabled,
        "nav": NAV,
        "refresh_s": state.refresh_s,
        "flash": flash,
        "server_url": state.server_url,
        "project_name": state.project.settings.name,
        **extra,
        **context,
    }
    return request.app.state.templates.TemplateResponse(request, template, full, status_code=status)


def error_page(request: Request, exc: Exception, status: int) -> Response:
    detail = getattr(exc, "detail", None) or str(exc) or "not found"
    titles = {
        400: "That cannot be done",
        401: "Sign in first",
        403: "Not allowed",
        404: "Not found",
        409: "It changed meanwhile",
        503: "Not available now",
    }
    return render(
        request,
        "error.html",
        {"status": status, "title": titles.get(status, "Error"), "detail": detail},
        status=status,
    )


async def gathered(request: Request, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(state, *args)`` run off the event loop, once the person may read pages."""
    state = request.app.state.console
    require(state.sessions, current_session(request), "read")
    return await asyncio.to_thread(functools.partial(fn, state, *args, **kwargs))


# -- handlers ----------------------------------------------------------------------------
async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def overview(request: Request) -> Response:
    data = await gathered(request, overview_data.overview)
    return render(request, "overview.html", data, page="overview")


async def route(request: Request) -> Response:
    name = request.path_params["route"]
    data = await gathered(request, routes_data.route_page, name)
    return render(request, "route.html", data, page="overview")


async def models(request: Request) -> Response:
    data = await gathered(request, models_data.models_index)
    return render(request, "models.html", {"models": data}, page="models")


async def model(request: Request) -> Response:
    name = request.path_params["name"]
    q = request.query_params
    data = await gathered(
        request,
        models_data.model_page,
        name,
        q.get("version") or None,
        q.get("a") or None,
        q.get("b") or None,
        features_url=str(request.url_for("features")),
        model_url=str(request.url_for("model", name=name)),
    )
    return render(request, "model.html", data, page="models")


async def features(request: Request) -> Response:
    q = request.query_params
    data = await gathered(request, features_data.features_page)
    found = await gathered(request, features_data.lookup_or_error, q.get("view"), q.get("key"))
    return render(request, "features.html", {**data, "lookup": found}, page="features")


async def monitor_index(request: Request) -> Response:
    routes = await gathered(request, monitor_data.monitored_routes)
    if len(routes) == 1:
        return RedirectResponse(request.url_for("monitor", route=routes[0]), status_code=303)
    return render(
        request,
        "choose.html",
        {"routes": routes, "target": "monitor", "what": "Monitor"},
        page="monitor_index",
    )


async def monitor(request: Request) -> Response:
    data = await gathered(request, monitor_data.monitor_page, request.path_params["route"])
    routes = await gathered(request, monitor_data.monitored_routes)
    return render(request, "monitor.html", {**data, "routes": routes}, page="monitor_index")


async def jobs(request: Request) -> Response:
    data = await gathered(request, jobs_data.jobs_page)
    return render(request, "jobs.html", data, page="jobs")


def _looped(state: Any) -> list[str]:
    return [r.name for r in state.project.settings.routes if r.loop is not None]


def _choose(request: Request, routes: list[str], target: str, what: str) -> Response:
    """A page per route: straight to it when there is one, else a list to choose from."""
    if len(routes) == 1:
        return RedirectResponse(request.url_for(target, route=routes[0]), status_code=303)
    return render(
        request,
        "choose.html",
        {"routes": routes, "target": target, "what": what},
        page=f"{target}_index",
    )


async def loop_index(request: Request) -> Response:
    return _choose(request, await gathered(request, _looped), "loop", "Loop")


async def loop(request: Request) -> Response:
    data = await gathered(request, loop_data.loop_page, request.path_params["route"])
    return render(request, "loop.html", data, page="loop_index")


def _explained(state: Any) -> list[str]:
    return [r.name for r in state.project.settings.routes if r.explain is not None]


async def explain_index(request: Request) -> Response:
    return _choose(request, await gathered(request, _explained), "explain", "Explanations")


async def explain(request: Request) -> Response:
    data = await gathered(
        request,
        explain_data.explain_page,
        request.path_params["route"],
        request.query_params.get("ref"),
    )
    return render(request, "explain.html", {**data, "now": None}, page="explain_index")


async def explain_now(request: Request) -> Response:
    """Explain a row with the running server (the server's data endpoint; the console asks
    with the signed-in person's token)."""
    state = request.app.state.console
    session = current_session(request)
    form = await form_of(request)
    # Nothing is changed (the server's data endpoint answers): the origin check suffices.
    check_origin(request.headers.get("origin"), origin_of(request))
    name = request.path_params["route"]
    data = await gathered(request, explain_data.explain_page, name, None)
    text = str(form.get("row") or "")
    try:
        now = await asyncio.to_thread(
            explain_data.explain_row, state, name, text, None if session is None else session.token
        )
    except KeelError as exc:
        now = {"error": str(exc)}
    return render(request, "explain.html", {**data, "now": now, "row": text}, page="explain_index")


async def form_of(request: Request) -> dict[str, str]:
    """A posted form (``application/x-www-form-urlencoded``, as the console's forms are), at
    most :data:`MAX_FORM` bytes; a field given twice keeps its last value."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ValidationError(
            f"a form is posted as application/x-www-form-urlencoded, not {kind!r}"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ValidationError(
                f"a form of more than {MAX_FORM:,} bytes is not one of the console's"
            )
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(f"the form does not read as one: {exc}") from None


def origin_of(request: Request) -> str:
    """The console's own origin, as the browser names it in ``Origin``."""
    return f"{request.url.scheme}://{request.url.netloc}"
