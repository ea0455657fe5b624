"""What the console holds while it runs: the project, where its server is, the sessions, and
the readers that follow the log incrementally. One per app, on ``app.state.console``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from keel.ui.data.traffic import TrafficHistory
from keel.ui.metrics import MetricsSampler
from keel.ui.session import Sessions

__all__ = ["ConsoleState"]


@dataclass
class ConsoleState:
    """``server_url``: the server whose routes, metrics and control API the console uses
    when it answers; ``refresh_s``: how often live parts of a page refresh."""

    project: Any
    server_url: str
    sessions: Sessions
    refresh_s: float = 5.0
    traffic: TrafficHistory = field(init=False)
    sampler: MetricsSampler = field(init=False)
    #: A feature lookup catches the console's own copy of the online store up first: one at
    #: a time.
    features_lock: threading.Lock = field(default_factory=threading.Lock)
    _traffic_index: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.traffic = TrafficHistory(self.project.log)
        self.sampler = MetricsSampler(self.server_url)

    def traffic_index(self) -> Any:
        """A reader of the traffic topic kept for the console's life (None while the topic
        does not exist), so each page reads only what is new."""
        if self._traffic_index is None:
            from keel.controller.operator import traffic_index

            self._traffic_index = traffic_index(self.project)
        return self._traffic_index
