"""The closed loop: promote shadows whose evidence has converged, roll back failing canaries.

See :class:`Controller` (in-process, beside the server) and :class:`RemoteController`
(``keel controller``, against a running server's control API).
"""

from __future__ import annotations

from keel.controller.controller import Controller, RemoteController

__all__ = ["Controller", "RemoteController"]
