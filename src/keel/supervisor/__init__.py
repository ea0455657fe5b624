"""``keel up``: the platform's long-running components as one supervised set.

A :class:`Supervisor` starts :class:`Component` commands in dependency order, tells when each
is up (:mod:`~keel.supervisor.health`), restarts one that exits with :class:`Backoff` and names
a crash loop, and stops them all in reverse order. Every change is an event on the ``keel.up``
topic and is kept in ``state.json`` (:mod:`~keel.supervisor.state`). :func:`plan` says which
components a project runs; :mod:`keel.supervisor.status` is what ``keel status`` shows.
"""

from __future__ import annotations

from keel.supervisor.backoff import Backoff, Restart
from keel.supervisor.component import Component
from keel.supervisor.events import UP, UpEvent, read_events
from keel.supervisor.health import Alive, HealthCheck, HttpReady
from keel.supervisor.plan import COMPONENTS, Plan, plan
from keel.supervisor.state import ComponentStatus, Exit, State, SupervisorState, read_state
from keel.supervisor.supervisor import STATE_FILE, Supervisor

__all__ = [
    "COMPONENTS",
    "STATE_FILE",
    "UP",
    "Alive",
    "Backoff",
    "Component",
    "ComponentStatus",
    "Exit",
    "HealthCheck",
    "HttpReady",
    "Plan",
    "Restart",
    "State",
    "Supervisor",
    "SupervisorState",
    "UpEvent",
    "plan",
    "read_events",
    "read_state",
]
