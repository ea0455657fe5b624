"""The small HTTP client the CLI and the console use: every way a server can fail to answer
is a KeelError naming it, never a raw socket error."""

from __future__ import annotations

import socket
import threading

import pytest

from keel.errors import UnavailableError
from keel.serving.client import call


def test_a_server_that_accepts_but_never_answers_is_unavailable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        held: list[socket.socket] = []
        accepting = threading.Thread(target=lambda: held.append(listener.accept()[0]))
        accepting.start()
        try:
            with pytest.raises(UnavailableError, match=r"did not answer /v1/routes: no answer"):
                call(f"http://127.0.0.1:{port}", "/v1/routes", timeout=0.3)
        finally:
            accepting.join(5)
            for conn in held:
                conn.close()


def test_nothing_listening_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call: nothing listens there
    with pytest.raises(UnavailableError, match="no Keel server answers"):
        call(f"http://127.0.0.1:{port}", "/v1/routes", timeout=1)
