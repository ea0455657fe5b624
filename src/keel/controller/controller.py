"""Decisions from evidence, applied: every decision is an event on the ``keel.traffic`` topic
with its evidence, so it survives restarts and can be audited.

A promotion moves the primary's alias in the registry (``fraud@champion`` → the candidate's
version); the server follows the alias and hot-swaps. A canary rollback sets its share to 0;
a ramp's advance sets the next step's share, and healthy at 100% the rollout completes: the
primary's alias moves to the canary's version, the route swaps to it and the canary is
cleared. Shares are set through the server's traffic settings, so they survive a restart.

What to decide lives in :mod:`keel.serving.traffic`; the controllers only apply it, one
in-process (:class:`Controller`), one against a server's control API
(:class:`RemoteController`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import msgspec

from keel.config import CanaryConfig, ShadowConfig
from keel.errors import UnavailableError
from keel.serving.client import call
from keel.serving.traffic import Decision, canary_evidence, decide_canary, decide_shadow

__all__ = ["Controller", "RemoteController"]

logger = logging.getLogger(__name__)


def _version_number(ref: str) -> int:
    return int(ref.rsplit("@", 1)[1])


class _Loop:
    """Steps every ``interval_s`` until stopped; a failing step is logged and retried.

    Applies canary decisions the same way whatever the transport; subclasses say how to
    set a route's canary, reload it and record a decision."""

    interval_s: float
    registry: Any

    def step(self) -> list[Decision]:
        raise NotImplementedError

    def run(self, stop: threading.Event) -> None:
        """Step every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                logger.exception("controller step failed; retrying")
            stop.wait(self.interval_s)

    def _apply_canary(
        self, route: str, primary: str, canary: CanaryConfig, decision: Decision
    ) -> None:
        """Apply a canary decision on ``route`` (serving ``primary``, ``name@alias``)."""
        if decision.action == "complete":
            model, _, alias = primary.partition("@")
            self.registry.set_alias(
                model,
                alias,
                _version_number(decision.evidence["serving"]),
                reason=f"canary rollout complete: {decision.reason}",
            )
            # The route serves the canary's version as its primary before the canary goes.
            self._reload(route)
            self._set_canary(route, None)
        else:
            self._set_canary(route, msgspec.structs.replace(canary, percent=decision.percent))
        self._record(decision)

    def _set_canary(self, route: str, canary: CanaryConfig | None) -> None:
        raise NotImplementedError

    def _reload(self, route: str) -> None:
        raise NotImplementedError

    def _record(self, decision: Decision) -> None:
        raise NotImplementedError


class Controller(_Loop):
    """Watches an in-process :class:`~keel.serving.InferenceServer`'s routes."""

    def __init__(self, server: Any, registry: Any, *, interval_s: float = 1.0) -> None:
        self.server = server
        self.registry = registry
        self.interval_s = interval_s

    def step(self) -> list[Decision]:
        """Evaluate every route once; apply and return the decisions taken."""
        taken = []
        now = self.server.clock.now()
        for route in list(self.server.routes.values()):
            cfg = route.config
            st = route.shadow_state
            if cfg.shadow is not None and st is not None:
                decision = decide_shadow(cfg.shadow, st.summary(cfg.shadow, now))
                if decision is not None and (
                    decision.action != "promote" or cfg.shadow.auto_promote
                ):
                    self._apply_shadow(route, decision)
                    taken.append(decision)
            if cfg.canary is not None and route.canary is not None:
                evidence = canary_evidence(
                    cfg.canary,
                    route.canary_stats,
                    now,
                    route=route.name,
                    serving=route.canary.version,
                )
                decision = decide_canary(cfg.canary, evidence)
                if decision is not None:
                    self._apply_canary(route.name, cfg.model, cfg.canary, decision)
                    taken.append(decision)
        return taken

    def _apply_shadow(self, route: Any, decision: Decision) -> None:
        st = route.shadow_state
        if decision.action == "promote":
            model, _, alias = route.config.model.partition("@")
            self.registry.set_alias(
                model,
                alias,
                _version_number(st.candidate),
                reason=f"shadow promotion: {decision.reason}",
            )
            self._record(decision)
            self.server.reload(route.name)  # also marks the comparison promoted
        else:
            st.status = "rejected"
            self._record(decision)
        self.server.snapshot(route, force=True)

    def _set_canary(self, route: str, canary: CanaryConfig | None) -> None:
        self.server.set_traffic(route, canary=canary)

    def _reload(self, route: str) -> None:
        result = self.server.reload(route)
        if "error" in result:
            raise UnavailableError(f"route {route!r}: reload failed: {result['error']}")

    def _record(self, decision: Decision) -> None:
        logger.info("route %s: %s — %s", decision.route, decision.action, decision.reason)
        self.server.publish(decision.route, "decision", decision.to_event())


class RemoteController(_Loop):
    """The same decisions against a server's control API (``keel controller --url``)."""

    def __init__(self, url: str, registry: Any, *, interval_s: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.registry = registry
        self.interval_s = interval_s

    def _get(self, path: str) -> Any:
        return call(self.url, path, timeout=30)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return call(self.url, path, body, timeout=120)

    def step(self) -> list[Decision]:
        taken = []
        for route in self._get("/v1/routes"):
            name = route["name"]
            status = self._get(f"/v1/routes/{name}/traffic")
            shadow_cfg = route.get("shadow")
            if shadow_cfg and status.get("shadow"):
                cfg = msgspec.convert(shadow_cfg, ShadowConfig)
                decision = decide_shadow(cfg, {**status["shadow"], "route": name})
                if decision is not None and (decision.action != "promote" or cfg.auto_promote):
                    self._record(decision)
                    if decision.action == "promote":
                        model, _, alias = route["model"].partition("@")
                        self.registry.set_alias(
                            model,
                            alias,
                            _version_number(status["shadow"]["candidate"]),
                            reason=f"shadow promotion: {decision.reason}",
                        )
                    taken.append(decision)
            canary_cfg = route.get("canary")
            if canary_cfg and status.get("canary") and status["canary"]["serving"]:
                cfg_c = msgspec.convert(canary_cfg, CanaryConfig)
                decision = decide_canary(cfg_c, {**status["canary"], "route": name})
                if decision is not None:
                    self._apply_canary(name, route["model"], cfg_c, decision)
                    taken.append(decision)
        return taken

    def _set_canary(self, route: str, canary: CanaryConfig | None) -> None:
        body = None if canary is None else msgspec.to_builtins(canary)
        self._post(f"/v1/routes/{route}/traffic", {"canary": body})

    def _reload(self, route: str) -> None:
        self._post(f"/v1/routes/{route}/reload", {})

    def _record(self, decision: Decision) -> None:
        logger.info("route %s: %s — %s", decision.route, decision.action, decision.reason)
        self._post(f"/v1/routes/{decision.route}/decisions", decision.to_event())
