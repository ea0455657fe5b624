"""A small client for a running server's JSON endpoints (control API, metadata).

Used by ``keel traffic``, ``keel bench`` and the remote controller. Errors the server answers
come back as a :class:`KeelError` with its message and status; a server that does not answer
is an :class:`UnavailableError`. A server with tokens (see :mod:`keel.serving.auth`) is called
with the bearer token in ``KEEL_TOKEN``, unless one is given.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from keel.errors import KeelError, UnavailableError

__all__ = ["call"]


def call(
    url: str, path: str, body: Any = None, *, timeout: float = 300, token: str | None = None
) -> Any:
    """``GET url+path`` (or ``POST`` with ``body`` as JSON); returns the decoded JSON."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    token = token or os.environ.get("KEEL_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        url.rstrip("/") + path,
        data=data,
        method="GET" if body is None else "POST",
        headers=headers,
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read() or b"{}"
        try:
            message = json.loads(raw).get("error", str(exc))
        except ValueError:
            message = str(exc)
        err = KeelError(message)
        err.status_code = exc.code
        raise err from None
    except urllib.error.URLError as exc:
        raise UnavailableError(f"no Keel server answers at {url}: {exc.reason}") from None
    except (TimeoutError, ConnectionError) as exc:
        # Connected, then the answer did not come in time (or the connection dropped): urllib
        # lets these through unwrapped once the request is sent.
        why = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
        raise UnavailableError(f"the Keel server at {url} did not answer {path}: {why}") from None
