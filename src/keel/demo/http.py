"""An inference server on a free local port, in a thread of the demo's own process (so the
demo can reach into it: its routes, its clock, its prediction log)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serving(server: Any) -> Iterator[int]:
    """Serve ``server`` (an :class:`~keel.serving.InferenceServer`) over HTTP with uvicorn;
    yields the port, and stops it on the way out."""
    import uvicorn

    from keel.serving import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = uvicorn.Server(
        uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    while not http.started:
        time.sleep(0.02)
    try:
        yield port
    finally:
        http.should_exit = True
        thread.join(15)
