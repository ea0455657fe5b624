"""What an operator does from the console — promote, reject, roll back, pause or resume a
route's loop — and signing in and out.

An action is two requests: ``GET /routes/{route}/{action}`` shows what it would do (the
confirmation, read from :func:`keel.controller.operator.propose`), and its form's ``POST``
does it, only if the route still stands where the person saw it. Both need the operator role;
the POST also the session's CSRF token. Every POST to an action, done or refused, is an event
on ``keel.audit`` (the server's audit topic) naming who asked, and what was done is recorded
where the CLI records it: the decision on ``keel.traffic``, the alias move in the registry,
the pause on ``keel.loop``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.controller import loop as loops
from keel.controller.operator import ACTIONS, carry_out, propose, route_config
from keel.errors import ConflictError, KeelError, NotFoundError, ValidationError
from keel.serving.auth import AUDIT
from keel.ui.pages import current_session, form_of, origin_of, render
from keel.ui.session import (
    COOKIE,
    HOW_TO_OPERATE,
    Session,
    SignInRequired,
    check_csrf,
    check_origin,
    require,
)

__all__ = ["LOOP_ACTIONS", "act", "confirm", "signin", "signin_form", "signout"]

logger = logging.getLogger(__name__)

LOOP_ACTIONS = ("pause", "resume")
VERBS = {
    "promote": "Promote",
    "reject": "Reject",
    "rollback": "Roll back",
    "pause": "Pause the loop of",
    "resume": "Resume the loop of",
}


def _check_action(action: str) -> None:
    if action not in ACTIONS and action not in LOOP_ACTIONS:
        raise NotFoundError(
            f"no action {action!r}; actions: {', '.join((*ACTIONS, *LOOP_ACTIONS))}"
        )


def _plan(state: Any, route: str, action: str) -> dict[str, Any]:
    """What the confirmation shows: the proposal of a decision, or the loop's state."""
    if action in ACTIONS:
        proposal = propose(state.project, route, action, index=state.traffic_index())
        return {"proposal": proposal, "summary": proposal.summary}
    cfg = route_config(state.project, route)
    if cfg.loop is None:
        raise ValidationError(
            f"route {route!r} has no [routes.loop] block: it has no loop to {action}"
        )
    if action == "pause":
        summary = (
            f"route {route}'s loop stops acting on alerts: each trigger is recorded as skipped "
            "until it is resumed (a chain already under way carries on)"
        )
    else:
        summary = f"route {route}'s loop acts on alerts again, by its policy"
    return {"proposal": None, "summary": summary}


async def confirm(request: Request) -> Response:
    state = request.app.state.console
    route, action = request.path_params["route"], request.path_params["action"]
    _check_action(action)
    session = current_session(request)
    require(state.sessions, session, "operate")
    plan = await asyncio.to_thread(_plan, state, route, action)
    return render(
        request,
        "confirm.html",
        {"route": route, "action": action, "verb": VERBS[action], **plan},
        page="overview",
    )


def _perform(state: Any, session: Session, route: str, action: str, form: Any) -> str:
    """Do the action as the form's person confirmed it; what was done, in one line."""
    by = f"{session.who} (keel ui)"
    if action in LOOP_ACTIONS:
        (loops.pause if action == "pause" else loops.resume)(state.project, route, by=by)
        return (
            f"route {route}: loop {'paused' if action == 'pause' else 'resumed'} by {session.who}"
        )
    proposal = propose(state.project, route, action, index=state.traffic_index())
    seen = (str(form.get("serving", "")), str(form.get("target", "")))
    if seen != (str(proposal.serving), str(proposal.target)):
        raise ConflictError(
            f"route {route} changed since the confirmation was shown (it proposed "
            f"{proposal.model}@{seen[0]} → {proposal.model}@{seen[1]}; now: {proposal.summary}); "
            "nothing was done — look again"
        )
    decision = carry_out(state.project, proposal, by=by, url=state.server_url, token=session.token)
    return str(decision["reason"])


async def act(request: Request) -> Response:
    state = request.app.state.console
    route, action = request.path_params["route"], request.path_params["action"]
    _check_action(action)
    session = current_session(request)
    status, outcome = 500, ""
    try:
        form = await form_of(request)
        require(state.sessions, session, "operate")
        if session is None:  # require() lets nobody act anonymously; said again for clarity
            raise SignInRequired("sign in with an operator token to act")
        check_csrf(session, form, request.headers.get("origin"), origin_of(request))
        if form.get("confirm") != "yes":
            raise ValidationError(f"{VERBS[action].lower()} {route} needs its confirmation")
        outcome = await asyncio.to_thread(_perform, state, session, route, action, form)
        status = 303
    except KeelError as exc:
        status, outcome = exc.status_code, str(exc)
        raise
    finally:
        body = {"action": action, "route": route, "outcome": outcome}
        await asyncio.to_thread(_audit, state, session, request.url.path, status, body)
    key = state.sessions.flash(session, outcome)
    target = str(request.url_for("route", route=route)) + f"?flash={key}"
    return RedirectResponse(target, status_code=303)


def _audit(
    state: Any, session: Session | None, path: str, status: int, body: dict[str, Any]
) -> None:
    """An event on ``keel.audit``, as the server writes for its control plane."""
    record = {
        "ts": datetime.now(UTC),
        "who": "anonymous" if session is None else session.who,
        "role": None if session is None else session.role,
        "method": "POST",
        "path": path,
        "status": status,
        "body": json.dumps(body),
    }
    logger.info("audit: %s (%s) POST %s → %d", record["who"], record["role"], path, status)
    try:
        state.project.log.append(AUDIT.name, [record])
    except Exception:
        logger.exception("could not write the audit event for POST %s", path)


# -- signing in and out -------------------------------------------------------------------
def _next(value: str | None, default: str) -> str:
    """Where to go after signing in: a path of this console, never another site."""
    if not value:
        return default
    parts = urlsplit(value)
    # (a browser reads "/\\host" as "//host": another site)
    if parts.scheme or parts.netloc or not value.startswith("/") or value[1:2] in ("/", "\\"):
        return default
    return value


async def signin_form(request: Request) -> Response:
    return render(
        request,
        "signin.html",
        {"next": request.query_params.get("next", ""), "error": None, "how": HOW_TO_OPERATE},
        page="signin",
    )


async def signin(request: Request) -> Response:
    state = request.app.state.console
    form = await form_of(request)
    check_origin(request.headers.get("origin"), origin_of(request))
    token = str(form.get("token") or "")
    after = _next(str(form.get("next") or ""), str(request.url_for("overview")))
    session = await asyncio.to_thread(state.sessions.sign_in, token) if token else None
    if session is None:
        error = (
            "this project has no tokens: there is nothing to sign in with"
            if not state.sessions.enabled
            else "that is not a token of this project"
        )
        return render(
            request,
            "signin.html",
            {"next": after, "error": error, "how": HOW_TO_OPERATE},
            status=401,
            page="signin",
        )
    response = RedirectResponse(after, status_code=303)
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=int(state.sessions.ttl_s),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def signout(request: Request) -> Response:
    state = request.app.state.console
    session = current_session(request)
    form = await form_of(request)
    check_csrf(session, form, request.headers.get("origin"), origin_of(request))
    state.sessions.sign_out(None if session is None else session.id)
    response = RedirectResponse(request.url_for("signin"), status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
