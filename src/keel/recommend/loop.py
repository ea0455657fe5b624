"""The fine-tune loop: every ``fine_tune.every`` of the project's clock, judge the last
fine-tuned version on the interactions that arrived since it was made, promote or reject it,
and fine-tune the next one from the version the route serves.

A fine-tuned child goes to traffic the usual way: registered with its lineage, set as the
``challenger`` (a route shadowing ``MODEL@challenger`` compares it live), then judged on
evidence — its top-k overlap with the serving version, their score difference, and, once
interactions have arrived, both versions' hit rate and NDCG on the purchases made since. A
child no worse than its parent on those purchases (within ``margin``) is promoted: the route's
alias moves and the server hot-swaps model and index together. Every decision is an event on
``keel.traffic`` with its evidence, as the controller's are.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from keel.errors import NotFoundError
from keel.recommend.data import Interactions, last_features, read_interactions
from keel.recommend.definitions import Recommender
from keel.recommend.model import TwoTower
from keel.recommend.run import FineTuneResult, InconsistentVersion, NothingNew
from keel.recommend.train import evaluate, top_k

__all__ = ["Cycle", "FineTuneLoop", "compare_versions"]

logger = logging.getLogger(__name__)


def compare_versions(
    serving: TwoTower,
    candidate: TwoTower,
    later: Interactions,
    *,
    k: int = 10,
    probe: int = 500,
) -> dict[str, Any]:
    """Evidence for a candidate against the serving version: on the users of ``later``
    (at most ``probe``), their top-``k`` overlap and mean score difference of the serving
    version's picks; on ``later``'s purchases, both versions' hit rate and NDCG."""
    users = np.unique(later.users)[:probe] if len(later) else np.zeros(0, np.int64)
    out: dict[str, Any] = {"users": len(users)}
    if len(users):
        feats = last_features(later, users)
        a_ids, a_scores = top_k(serving, users, feats, k)
        b_ids, _ = top_k(candidate, users, feats, k)
        overlap = [len(set(x) & set(y)) / len(x) for x, y in zip(a_ids, b_ids, strict=True)]
        b_on_a = candidate.score_ids(
            np.repeat(users, a_ids.shape[1]),
            a_ids.reshape(-1),
            None if feats is None else np.repeat(feats, a_ids.shape[1], axis=0),
        ).reshape(a_ids.shape)
        out["top_k_overlap"] = float(np.mean(overlap))
        out["score_diff"] = float(np.abs(b_on_a - a_scores).mean())
    serving_q, cand_q = evaluate(serving, later, k), evaluate(candidate, later, k)
    out["purchases"] = int(serving_q["purchases"])
    for name in (f"hit_rate@{k}", f"ndcg@{k}"):
        out[f"serving_{name}"] = serving_q[name]
        out[f"candidate_{name}"] = cand_q[name]
    return out


@dataclass
class Cycle:
    """What one turn of the loop did."""

    at: datetime
    decision: dict[str, Any] | None = None
    fine_tune: FineTuneResult | None = None
    refused: str | None = None
    waiting: str | None = None


@dataclass
class FineTuneLoop:
    """Runs a project's recommender fine-tunes on a schedule and decides on each child.

    Parameters
    ----------
    project
        The :class:`~keel.project.Project` whose declared recommender ``model`` is refreshed.
    clock
        Seconds since the epoch (the project's clock; a simulation passes its own).
    serving_alias
        The alias the route serves (promotions move it).
    min_purchases
        Purchases needed since a candidate was made before it is judged.
    margin
        How much lower a candidate's hit rate may be than the serving version's and still
        be promoted (noise on a small window).
    """

    project: Any
    model: str
    clock: Callable[[], float]
    serving_alias: str = "champion"
    min_purchases: int = 20
    margin: float = 0.02
    history: list[Cycle] = field(default_factory=list)

    @property
    def rec(self) -> Recommender:
        rec = self.project.model(self.model)
        assert isinstance(rec, Recommender)
        return rec

    def step(self) -> Cycle:
        """One turn: judge the pending candidate, then fine-tune the next one."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        cycle = Cycle(now)
        registry = self.project.registry
        aliases = registry.aliases(self.model)
        pending = aliases.get("challenger")
        serving = aliases.get(self.serving_alias)
        if serving is None:
            raise NotFoundError(
                f"{self.model}@{self.serving_alias} does not exist: train the model first "
                f"(keel train {self.model} --alias {self.serving_alias})"
            )
        if pending is not None and pending != serving and not self._decided(pending):
            cycle.decision = self.judge(serving, pending)
            if cycle.decision is None:
                cycle.waiting = f"{self.model}@{pending} waits for {self.min_purchases} purchases"
                self.history.append(cycle)
                return cycle
            serving = registry.aliases(self.model)[self.serving_alias]
        try:
            cycle.fine_tune = self.project.fine_tune(
                self.rec, parent=serving, until=now, shadow=True
            )
        except InconsistentVersion as exc:
            cycle.refused = str(exc)
            self._record("reject", cycle.refused, {"parent": serving})
        except NothingNew as exc:
            cycle.waiting = str(exc)
        self.history.append(cycle)
        return cycle

    def judge(self, serving: int, candidate: int) -> dict[str, Any] | None:
        """Promote or reject ``candidate`` on the interactions logged since it was made;
        ``None`` while too few purchases have arrived."""
        rec, registry = self.rec, self.project.registry
        lineage = registry.lineage(self.model, candidate)["training"]
        start = {int(p): int(o) for p, o in lineage["interactions"]["to"].items()}
        end = dict(enumerate(self.project.log.end_offsets(rec.interactions)))
        a: TwoTower = registry.load(self.model, serving)
        later = read_interactions(
            rec,
            self.project.log,
            self.project.features if rec.features else None,
            start,
            end,
            feature_names=list(a.feature_names),
        )
        if int(later.purchase.sum()) < self.min_purchases:
            return None
        b: TwoTower = registry.load(self.model, candidate)
        evidence = compare_versions(a, b, later, k=rec.k)
        evidence.update(serving=f"{self.model}@{serving}", candidate=f"{self.model}@{candidate}")
        hit = f"hit_rate@{rec.k}"
        got, base = evidence[f"candidate_{hit}"], evidence[f"serving_{hit}"]
        if got >= base - self.margin:
            action = "promote"
            reason = (
                f"{hit} {got:.3f} against the serving {base:.3f} on {evidence['purchases']} "
                f"purchases since; top-{rec.k} overlap {evidence.get('top_k_overlap', 0):.2f}"
            )
            registry.set_alias(
                self.model, self.serving_alias, candidate, reason=f"fine-tune promotion: {reason}"
            )
        else:
            action = "reject"
            reason = (
                f"{hit} {got:.3f} is below the serving {base:.3f} by more than {self.margin} "
                f"on {evidence['purchases']} purchases since"
            )
        self._record(action, reason, evidence)
        return {"action": action, "reason": reason, "evidence": evidence}

    def _decided(self, version: int) -> bool:
        return any(
            c.decision and c.decision["evidence"].get("candidate") == f"{self.model}@{version}"
            for c in self.history
        ) or self._recorded(version)

    def _recorded(self, version: int) -> bool:
        """Whether a decision on ``version`` is on the traffic topic (a restarted loop
        does not judge a candidate twice)."""
        from keel.serving.server import TRAFFIC

        log = self.project.log
        if TRAFFIC.name not in {t.name for t in log.topics()}:
            return False
        ref = f"{self.model}@{version}"
        for p, end in enumerate(log.end_offsets(TRAFFIC.name)):
            table = log.read(TRAFFIC.name, p, max(0, end - 200), 200)
            for e in table.to_pylist():
                if e["kind"] == "decision" and ref in e["payload"]:
                    payload = json.loads(e["payload"])
                    if payload.get("evidence", {}).get("candidate") == ref:
                        return True
        return False

    def _record(self, action: str, reason: str, evidence: dict[str, Any]) -> None:
        from keel.serving.server import TRAFFIC

        rec = self.rec
        route = rec.route or self.model
        logger.info("route %s: %s — %s", route, action, reason)
        log = self.project.log
        log.create_topic(TRAFFIC, exist_ok=True)
        log.append(
            TRAFFIC.name,
            [
                {
                    "ts": datetime.fromtimestamp(self.clock(), UTC),
                    "route": route,
                    "kind": "decision",
                    "payload": json.dumps(
                        {"action": action, "reason": reason, "evidence": evidence}, default=str
                    ),
                }
            ],
        )

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Step every ``fine_tune.every`` of the clock until ``stop`` is set."""
        every = self.rec.fine_tune.every.total_seconds()
        next_at = self.clock() + every
        while not stop.is_set():
            if self.clock() >= next_at:
                try:
                    self.step()
                except Exception:
                    logger.exception("fine-tune cycle failed; retrying next cycle")
                next_at += every
            stop.wait(poll_s)
