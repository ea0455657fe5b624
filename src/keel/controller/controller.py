"""Decisions from evidence, applied: every decision is an event on the ``keel.traffic`` topic
with its evidence, so it survives restarts and can be audited.

A promotion moves the primary's alias in the registry (``fraud@champion`` → the candidate's
version); the server follows the alias and hot-swaps. A canary rollback sets its share to 0.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import msgspec

from keel.config import CanaryConfig, ShadowConfig
from keel.serving.client import call
from keel.serving.traffic import Decision, decide_canary, decide_shadow

__all__ = ["Controller", "RemoteController"]

log = logging.getLogger(__name__)


def _version_number(ref: str) -> int:
    return int(ref.rsplit("@", 1)[1])


class _Loop:
    """Steps every ``interval_s`` until stopped; a failing step is logged and retried."""

    interval_s: float

    def step(self) -> list[Decision]:
        raise NotImplementedError

    def run(self, stop: threading.Event) -> None:
        """Step every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("controller step failed; retrying")
            stop.wait(self.interval_s)


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
            if cfg.canary is not None and route.canary_stats is not None:
                decision = decide_canary(route.name, cfg.canary, route.canary_stats)
                if decision is not None:
                    self.server.set_traffic(
                        route.name, canary=msgspec.structs.replace(cfg.canary, percent=0.0)
                    )
                    self._record(decision)
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

    def _record(self, decision: Decision) -> None:
        log.info("route %s: %s — %s", decision.route, decision.action, decision.reason)
        self.server.publish(
            decision.route,
            "decision",
            {"action": decision.action, "reason": decision.reason, "evidence": decision.evidence},
        )


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
            status = self._get(f"/v1/routes/{route['name']}/traffic")
            shadow_cfg = route.get("shadow")
            if shadow_cfg and status.get("shadow"):
                cfg = msgspec.convert(shadow_cfg, ShadowConfig)
                decision = decide_shadow(cfg, {**status["shadow"], "route": route["name"]})
                if decision is not None and (decision.action != "promote" or cfg.auto_promote):
                    self._post(
                        f"/v1/routes/{route['name']}/decisions",
                        {
                            "action": decision.action,
                            "reason": decision.reason,
                            "evidence": decision.evidence,
                        },
                    )
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
            if canary_cfg and status.get("canary"):
                cfg_c = msgspec.convert(canary_cfg, CanaryConfig)
                c = status["canary"]
                from keel.serving.traffic import CanaryStats

                stats = CanaryStats(
                    c["requests"], round(c["error_rate"] * c["requests"]), [c["p99_ms"]]
                )
                decision = decide_canary(route["name"], cfg_c, stats)
                if decision is not None:
                    self._post(
                        f"/v1/routes/{route['name']}/traffic",
                        {"canary": {**canary_cfg, "percent": 0.0}},
                    )
                    self._post(
                        f"/v1/routes/{route['name']}/decisions",
                        {
                            "action": decision.action,
                            "reason": decision.reason,
                            "evidence": decision.evidence,
                        },
                    )
                    taken.append(decision)
        return taken
