"""The closed loop: alerts become jobs, jobs versions, versions shadows; shadows whose evidence
has converged are promoted, failing canaries rolled back.

See :class:`LoopController` (the routes' ``[routes.loop]`` policies), :class:`Controller`
(traffic decisions in-process, beside the server) and :class:`RemoteController` (the same
against a running server's control API); ``keel controller`` runs them.
"""

from __future__ import annotations

from keel.controller.controller import Controller, RemoteController
from keel.controller.loop import LoopController

__all__ = ["Controller", "LoopController", "RemoteController"]
