"""Traffic between versions: sticky canary buckets and ramps, shadow comparisons as
streaming statistics with confidence intervals, and the decisions drawn from them.

The comparison follows the estimator contract: ``update_many`` folds in a batch, results are
read through properties, and the whole state round-trips through ``to_dict`` so the evidence
survives a restart.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from keel.config import CanaryConfig, ShadowConfig
from keel.errors import ValidationError
from keel.runtimes.recommend import RANKING

__all__ = [
    "CANARY_ACTIONS",
    "CanaryStats",
    "Decision",
    "Running",
    "ShadowState",
    "bucket",
    "canary_evidence",
    "check_compare",
    "check_ramp",
    "compare_rankings",
    "decide_canary",
    "decide_shadow",
    "discrepancy",
    "ramp_step",
    "traffic_fingerprint",
]

Z = 1.96  # two-sided 95%


def bucket(key: Any) -> float:
    """A stable position in [0, 100) for an entity key: the same key, the same side of a
    canary split, in every process."""
    return (zlib.crc32(str(key).encode()) % 10_000) / 100


@dataclass
class Running:
    """Welford's streaming mean and variance."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update_many(self, values: np.ndarray) -> Running:
        values = np.asarray(values, dtype=np.float64).ravel()
        if not len(values):
            return self
        n_b = len(values)
        mean_b = float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n
        return self

    @property
    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else float("inf")

    @property
    def ci(self) -> tuple[float, float]:
        """The 95% confidence interval of the mean."""
        if self.n < 2:
            return (-math.inf, math.inf)
        half = Z * self.sd / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Running:
        return cls(int(d["n"]), float(d["mean"]), float(d["m2"]))


def discrepancy(
    compare: str, primary: np.ndarray, candidate: np.ndarray, top_k: int = 10
) -> np.ndarray:
    """Per example, how far the candidate's output is from the primary's (0 = identical):
    absolute or relative error for scores, disagreement for classes, 1 - top-k overlap for
    score vectors (``topk``) and for lists of item IDs (``overlap``), 1 - cosine similarity
    for embeddings."""
    if compare == "overlap":
        return compare_rankings(primary, candidate)[0]
    a = np.asarray(primary, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape:
        raise ValidationError(
            f"shadow outputs have shape {list(b.shape)}, the primary's {list(a.shape)}"
        )
    n = a.shape[0]
    a2, b2 = a.reshape(n, -1), b.reshape(n, -1)
    if compare == "abs":
        return np.abs(a2 - b2).mean(axis=1)
    if compare == "rel":
        return (np.abs(a2 - b2) / np.maximum(np.abs(a2), 1e-12)).mean(axis=1)
    if compare == "agreement":
        if a2.shape[1] > 1:
            return (a2.argmax(axis=1) != b2.argmax(axis=1)).astype(float)
        return (np.round(a2[:, 0]) != np.round(b2[:, 0])).astype(float)
    if compare == "topk":
        k = min(top_k, a2.shape[1])
        ta = np.argsort(-a2, axis=1)[:, :k]
        tb = np.argsort(-b2, axis=1)[:, :k]
        overlap = np.array([len(set(x) & set(y)) for x, y in zip(ta, tb, strict=True)])
        return 1.0 - overlap / k
    if compare == "cosine":
        num = (a2 * b2).sum(axis=1)
        den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
        return 1.0 - num / np.maximum(den, 1e-12)
    raise ValidationError(f"unknown compare {compare!r}")


def compare_rankings(
    primary: np.ndarray,
    candidate: np.ndarray,
    primary_scores: np.ndarray | None = None,
    candidate_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row of two recommendations (item IDs best first, ``-1`` past a row's end):
    ``1 - |A ∩ B| / k`` with ``k`` the primary's list length (0 when both are empty), and,
    given both scores, the mean absolute change of score of the items both lists hold (NaN
    for a row with none in common).

    >>> a = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    >>> b = np.array([[4, 3, 9, 8], [6, 5, -1, -1]])
    >>> compare_rankings(a, b)[0].tolist()
    [0.5, 0.0]
    """
    a = np.asarray(primary, dtype=np.int64)
    b = np.asarray(candidate, dtype=np.int64)
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b):
        raise ValidationError(
            f"shadow recommendations of shape {list(b.shape)}, the primary's "
            f"{list(a.shape)}: each needs one row of item IDs per request"
        )
    valid_a, valid_b = a >= 0, b >= 0
    # same[r, i, j]: the primary's i-th item of row r is the candidate's j-th
    same = (a[:, :, None] == b[:, None, :]) & valid_a[:, :, None] & valid_b[:, None, :]
    k = valid_a.sum(axis=1)
    both = same.any(axis=2).sum(axis=1)
    diffs = np.where(k > 0, 1.0 - both / np.maximum(k, 1), (valid_b.sum(axis=1) > 0) * 1.0)
    if primary_scores is None or candidate_scores is None:
        return diffs, None
    sa = np.asarray(primary_scores, dtype=np.float64).reshape(a.shape)
    sb = np.asarray(candidate_scores, dtype=np.float64).reshape(b.shape)
    gap = np.where(same, np.abs(sa[:, :, None] - sb[:, None, :]), 0.0).sum(axis=(1, 2))
    common = same.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return diffs, np.where(common > 0, gap / common, np.nan)


def check_compare(compare: str, sample: Mapping[str, np.ndarray], *, ranking: bool = False) -> None:
    """Refuse a compare metric that does not fit the model's outputs (``sample``, from its
    warm-up); ``ranking``: the model answers with recommendations."""
    if ranking != (compare == "overlap"):
        raise ValidationError(
            "a recommender's shadow compares item lists: use compare 'overlap'"
            if ranking
            else f"compare 'overlap' compares recommended item lists ({', '.join(RANKING)}); "
            "this model answers with other outputs"
        )
    if ranking or not sample:
        return
    output = np.asarray(next(iter(sample.values())))
    width = 1 if output.ndim == 1 else int(np.prod(output.shape[1:]))
    if compare in ("topk", "cosine") and width < 2:
        raise ValidationError(
            f"compare {compare!r} needs vector outputs (rankings, embeddings); this model "
            f"outputs one value per example — use 'abs', 'rel' or 'agreement'"
        )
    if output.dtype.kind in "OSU":
        raise ValidationError(f"compare {compare!r} needs numeric outputs")


@dataclass
class ShadowState:
    """The evidence gathered for one candidate against one primary."""

    route: str
    candidate: str
    primary: str
    started_at: float
    status: str = "comparing"  # comparing | promoted | rejected
    diff: Running = field(default_factory=Running)
    primary_ms: Running = field(default_factory=Running)
    candidate_ms: Running = field(default_factory=Running)
    errors: int = 0
    requests: int = 0
    # Where labels arrive: per labelled request, candidate loss minus primary loss.
    label_delta: Running = field(default_factory=Running)
    primary_loss: Running = field(default_factory=Running)
    # Recommendations: the change of score of the items both versions recommend.
    score_diff: Running = field(default_factory=Running)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def latency_ratio(self) -> float:
        if not self.primary_ms.n or not self.candidate_ms.n:
            return float("nan")
        return self.candidate_ms.mean / max(self.primary_ms.mean, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "candidate": self.candidate,
            "primary": self.primary,
            "started_at": self.started_at,
            "status": self.status,
            "diff": self.diff.to_dict(),
            "primary_ms": self.primary_ms.to_dict(),
            "candidate_ms": self.candidate_ms.to_dict(),
            "errors": self.errors,
            "requests": self.requests,
            "label_delta": self.label_delta.to_dict(),
            "primary_loss": self.primary_loss.to_dict(),
            "score_diff": self.score_diff.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShadowState:
        empty = Running().to_dict()
        return cls(
            d["route"],
            d["candidate"],
            d["primary"],
            float(d["started_at"]),
            d["status"],
            Running.from_dict(d["diff"]),
            Running.from_dict(d["primary_ms"]),
            Running.from_dict(d["candidate_ms"]),
            int(d["errors"]),
            int(d["requests"]),
            Running.from_dict(d.get("label_delta", empty)),
            Running.from_dict(d.get("primary_loss", empty)),
            Running.from_dict(d.get("score_diff", empty)),
        )

    def summary(self, cfg: ShadowConfig, now: float) -> dict[str, Any]:
        lo, hi = self.diff.ci
        out = {
            "route": self.route,
            "candidate": self.candidate,
            "primary": self.primary,
            "status": self.status,
            "compare": cfg.compare,
            "tolerance": cfg.tolerance,
            "samples": self.diff.n,
            "discrepancy": None if not self.diff.n else self.diff.mean,
            "ci95": None if self.diff.n < 2 else [lo, hi],
            "elapsed_s": now - self.started_at,
            "window_s": cfg.window_s,
            "latency_ratio": None if math.isnan(self.latency_ratio) else self.latency_ratio,
            "candidate_error_rate": self.error_rate,
            "labels": None
            if not self.label_delta.n
            else {
                "n": self.label_delta.n,
                "primary_loss": self.primary_loss.mean,
                "candidate_loss": self.primary_loss.mean + self.label_delta.mean,
                "delta_ci95": None if self.label_delta.n < 2 else list(self.label_delta.ci),
            },
        }
        if cfg.compare == "overlap":
            # The discrepancy is 1 - overlap; the overlap itself reads better.
            out["overlap"] = None if not self.diff.n else 1.0 - self.diff.mean
            out["score_diff"] = (
                None
                if not self.score_diff.n
                else {
                    "n": self.score_diff.n,
                    "mean": self.score_diff.mean,
                    "ci95": None if self.score_diff.n < 2 else list(self.score_diff.ci),
                }
            )
        return out


@dataclass
class CanaryStats:
    """A canary's requests, errors and latencies since ``started_at`` (clock seconds): since
    it took its current share, so a ramp judges each step on its own evidence."""

    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    started_at: float = 0.0

    def record(self, ok: bool, ms: float) -> None:
        self.requests += 1
        self.errors += 0 if ok else 1
        self.latencies_ms.append(ms)
        if len(self.latencies_ms) > 2000:
            del self.latencies_ms[:1000]

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else 0.0


def ramp_step(cfg: CanaryConfig) -> int | None:
    """Where a ramp stands: the position (from 1) of the canary's share among its steps;
    None without a ramp or once rolled back (0%).

    >>> ramp_step(CanaryConfig(model="m@c", steps=[5, 25, 100], percent=25))
    2
    """
    if not cfg.steps or cfg.percent not in cfg.steps:
        return None
    return cfg.steps.index(cfg.percent) + 1


def canary_evidence(
    cfg: CanaryConfig,
    stats: CanaryStats | None,
    now: float,
    *,
    route: str = "",
    serving: str | None = None,
) -> dict[str, Any]:
    """What a canary has shown at its current share (``serving``: its loaded version).

    This is the ``canary`` of ``GET /v1/routes/{route}/traffic``, and what
    :func:`decide_canary` reads, so an in-process and a remote controller decide alike."""
    return {
        "route": route,
        "model": cfg.model,
        "serving": serving,
        "percent": cfg.percent,
        "steps": list(cfg.steps),
        "step": ramp_step(cfg),
        "step_requests": _step_requests(cfg) if cfg.steps else None,
        "step_s": cfg.step_s if cfg.steps else None,
        "requests": 0 if stats is None else stats.requests,
        "error_rate": 0.0 if stats is None else stats.error_rate,
        "p99_ms": 0.0 if stats is None else stats.p99_ms,
        "elapsed_s": 0.0 if stats is None else max(0.0, now - stats.started_at),
    }


def check_ramp(route: str, model: str, canary: CanaryConfig) -> None:
    """Refuse a ramp that could not complete on route ``route`` serving ``model``: completing
    moves the route's alias to the canary's version, so the route serves ``name@alias`` and
    the canary is a version of that same model."""
    if not canary.steps:
        return
    name, _, alias = model.partition("@")
    if model.startswith("builtin:") or not alias or alias.isdigit() or alias == "latest":
        raise ValidationError(
            f"route {route!r} serves {model!r}: a canary ramp completes by moving the route's "
            f"alias to the canary's version; serve the route from an alias (e.g. "
            f"'{name}@champion') or give the canary no steps"
        )
    if canary.model.partition("@")[0] != name:
        raise ValidationError(
            f"route {route!r}: the ramped canary {canary.model!r} is not a version of "
            f"{name!r}, so completing it could not move {model!r} to it; ramp a version of "
            f"{name!r}"
        )


def _step_requests(cfg: CanaryConfig) -> int:
    return cfg.min_requests if cfg.step_requests is None else cfg.step_requests


#: What a controller decides on a canary (on a shadow: promote or reject).
CANARY_ACTIONS = ("rollback", "advance", "complete")


@dataclass(frozen=True)
class Decision:
    """A controller's verdict on a route's shadow or canary, with the evidence behind it.

    ``action``: promote or reject (a shadow); rollback, advance or complete (a canary).
    ``percent``: the canary share the decision sets (rollback 0, advance the next step)."""

    route: str
    action: str
    reason: str
    evidence: dict[str, Any]
    percent: float | None = None

    def to_event(self) -> dict[str, Any]:
        """The payload of its ``decision`` event on the traffic topic; a canary's names the
        step (from 1) its evidence was gathered at, and the share it sets."""
        event: dict[str, Any] = {
            "action": self.action,
            "reason": self.reason,
            "evidence": self.evidence,
        }
        if self.action in CANARY_ACTIONS:
            event["step"] = self.evidence.get("step")
            event["percent"] = self.percent
        return event


def decide_shadow(cfg: ShadowConfig, evidence: dict[str, Any]) -> Decision | None:
    """Promote when, over the whole window, the discrepancy's 95% interval lies inside the
    tolerance and latency and errors are within bounds; reject when it clearly lies outside.

    ``evidence`` is :meth:`ShadowState.summary` — also what ``GET /v1/routes/{route}/traffic``
    returns, so an in-process and a remote controller decide alike."""
    route = evidence.get("route", "")
    if evidence["status"] != "comparing":
        return None
    if evidence["elapsed_s"] < cfg.window_s or evidence["samples"] < cfg.min_samples:
        return None
    lo, hi = evidence["ci95"] or (-math.inf, math.inf)
    errors = evidence["candidate_error_rate"]
    ratio = evidence["latency_ratio"]
    if errors > cfg.max_error_rate:
        return Decision(
            route,
            "reject",
            f"candidate error rate {errors:.2%} over {cfg.max_error_rate:.2%}",
            evidence,
        )
    labels = evidence.get("labels")
    if cfg.labels is not None and labels and labels["n"] >= cfg.labels.min_labels:
        delta = labels["delta_ci95"]
        if delta is not None and delta[0] > 0:
            return Decision(
                route,
                "reject",
                f"on {labels['n']:,} labelled requests the candidate's loss "
                f"{labels['candidate_loss']:.4g} is worse than the primary's "
                f"{labels['primary_loss']:.4g} (95% CI of the difference "
                f"{delta[0]:.4g}–{delta[1]:.4g})",
                evidence,
            )
    if lo > cfg.tolerance:
        return Decision(
            route,
            "reject",
            f"discrepancy {evidence['discrepancy']:.4g} (95% CI {lo:.4g}–{hi:.4g})"
            f" is above the tolerance {cfg.tolerance:g}",
            evidence,
        )
    if hi <= cfg.tolerance and not (ratio is not None and ratio > cfg.max_latency_ratio):
        return Decision(
            route,
            "promote",
            f"over {evidence['elapsed_s']:,.0f} s and {evidence['samples']:,} "
            f"samples the discrepancy's 95% CI {lo:.4g}–{hi:.4g} is within "
            f"{cfg.tolerance:g}; latency ratio "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'}, errors {errors:.2%}",
            evidence,
        )
    return None


def decide_canary(cfg: CanaryConfig, evidence: dict[str, Any]) -> Decision | None:
    """Roll the canary back (to 0%) when, over at least ``min_requests`` requests at its
    current share, its error rate or p99 latency breaks its bounds. On a ramp, advance to the
    next step once the current one has served ``step_requests`` requests over ``step_s``
    seconds within the bounds; healthy at the last step (100%), complete the rollout.

    ``evidence`` is :func:`canary_evidence` (``GET /v1/routes/{route}/traffic``'s canary).

    >>> cfg = CanaryConfig(model="m@2", steps=[5, 50, 100], min_requests=20)
    >>> ok = {"route": "r", "requests": 20, "error_rate": 0.0, "p99_ms": 3.0, "elapsed_s": 60}
    >>> d = decide_canary(cfg, ok); (d.action, d.percent)
    ('advance', 50.0)
    >>> decide_canary(cfg, {**ok, "error_rate": 0.5}).action
    'rollback'
    >>> decide_canary(msgspec.structs.replace(cfg, percent=100), ok).action
    'complete'
    """
    route = evidence.get("route", "")
    if not cfg.percent:
        return None  # no canary traffic: rolled back, or not started
    step = ramp_step(cfg)
    at = f" at step {step} of {len(cfg.steps)} ({cfg.percent:g}%)" if step else ""
    requests = evidence["requests"]
    broken = _broken(cfg, evidence)
    if broken is not None and requests >= cfg.min_requests:
        return Decision(route, "rollback", f"canary {broken}{at}", evidence, 0.0)
    if (
        step is None
        or broken is not None  # not judged yet (too few requests), but not healthy either
        or requests < _step_requests(cfg)
        or evidence["elapsed_s"] < cfg.step_s
    ):
        return None
    healthy = (
        f"over {requests:,} requests and {evidence['elapsed_s']:,.0f} s{at} the canary's "
        f"error rate {evidence['error_rate']:.2%} and p99 {evidence['p99_ms']:.1f} ms are "
        "within bounds"
    )
    if step == len(cfg.steps):
        return Decision(route, "complete", f"{healthy}: the rollout is complete", evidence)
    to = cfg.steps[step]
    return Decision(route, "advance", f"{healthy}: on to {to:g}%", evidence, to)


def _broken(cfg: CanaryConfig, evidence: dict[str, Any]) -> str | None:
    """Which bound the canary's evidence breaks, if any."""
    errors, p99 = evidence["error_rate"], evidence["p99_ms"]
    if errors > cfg.max_error_rate:
        return f"error rate {errors:.2%} over {cfg.max_error_rate:.2%}"
    if cfg.max_p99_ms is not None and p99 > cfg.max_p99_ms:
        return f"p99 {p99:.1f} ms over {cfg.max_p99_ms:g} ms"
    return None


def traffic_fingerprint(canary: CanaryConfig | None, shadow: ShadowConfig | None) -> str:
    """A short hash of a route's configured canary and shadow (every field, defaults too).

    A server records it, for the settings its routes were configured with (``keel.toml``),
    in each ``traffic_set`` event; at start a route takes the last runtime setting only
    while its configured settings still have that fingerprint (see
    :meth:`~keel.serving.InferenceServer.add`).

    >>> a = traffic_fingerprint(CanaryConfig(model="m@c"), None)
    >>> a == traffic_fingerprint(CanaryConfig(model="m@c", percent=10), None)
    True
    >>> a == traffic_fingerprint(CanaryConfig(model="m@c", percent=20), None)
    False
    """
    doc = {
        "canary": None if canary is None else msgspec.to_builtins(canary),
        "shadow": None if shadow is None else msgspec.to_builtins(shadow),
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
