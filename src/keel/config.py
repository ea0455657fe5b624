"""Settings: ``keel.toml`` in the project folder, overridden by ``KEEL_*`` environment variables.

Validated once, at the edge: unknown keys are refused with the name of the key, and every
backend URL defaults to the embedded choice under the data folder.

Example
-------
>>> s = Settings.load(env={"KEEL_LOG_URL": "redis://127.0.0.1:6379/0"}, project_dir="/tmp/p")
>>> s.log_url
'redis://127.0.0.1:6379/0'
>>> s.online_url
'memory://'
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from keel.errors import ConfigError, ValidationError, did_you_mean
from keel.jobs.executors.factory import check_url as check_jobs_url
from keel.jobs.spec import JobsConfig

__all__ = [
    "COMPARES",
    "CONFIG_FILE",
    "ENV_TOKENS",
    "LOOP_JOBS",
    "LOOP_TRIGGERS",
    "LOSSES",
    "ROLES",
    "AuthConfig",
    "CanaryConfig",
    "ExplainConfig",
    "FastPathConfig",
    "LabelsConfig",
    "LoopConfig",
    "MonitorConfig",
    "RouteConfig",
    "ServeConfig",
    "Settings",
    "ShadowConfig",
    "TokenConfig",
]

CONFIG_FILE = "keel.toml"
ENV_PREFIX = "KEEL_"
#: KEEL_* variables that are not settings: the config file's path, what a job's attempt is
#: told about itself, the server's extra tokens and a client's own token.
ENV_RESERVED = frozenset(
    {"KEEL_CONFIG", "KEEL_JOB_ID", "KEEL_JOB_ATTEMPT", "KEEL_AUTH_TOKENS", "KEEL_TOKEN"}
)


class FastPathConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A small checkpoint on the CPU, without batching, for requests whose deadline
    (``x-keel-deadline-ms``) is below ``below_ms``."""

    model: str
    features: list[str] = msgspec.field(default_factory=list)
    below_ms: float = 10.0


#: How a shadow's outputs are compared with the primary's: scores (abs, rel), classes
#: (agreement), score vectors (topk, cosine), or recommended item lists (overlap: 1 - the
#: share of the primary's top k that the candidate also recommends).
COMPARES = ("abs", "rel", "agreement", "topk", "cosine", "overlap")


class CanaryConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Send ``percent`` of the entities (sticky by a hash of the entity key) to ``model``;
    roll back (to 0%) when its error rate or p99 latency breaks the bounds over at least
    ``min_requests`` canary requests.

    With ``steps`` (percents, strictly increasing, ending at 100) the canary ramps: the
    controller moves it to the next step once the current one has served ``step_requests``
    canary requests (default ``min_requests``) over at least ``step_s`` seconds within the
    bounds, and healthy at the last step (100) completes the rollout: the route's alias moves
    to the canary's version and the canary is cleared. ``percent`` is where the ramp stands:
    one of the steps, or 0 once rolled back; left out, the ramp starts at its first step
    (without steps, the default share is 10).

    Example
    -------
    >>> CanaryConfig(model="fraud@challenger", steps=[5, 25, 50, 100]).percent
    5.0
    """

    model: str
    percent: float | None = None  # None: the first step, or 10 without steps
    steps: list[float] = msgspec.field(default_factory=list)
    step_requests: int | None = None
    step_s: float = 0.0
    max_error_rate: float = 0.05
    max_p99_ms: float | None = None
    min_requests: int = 50

    def __post_init__(self) -> None:
        if "@" not in self.model:
            raise ValidationError(f"canary model {self.model!r} must be 'name@alias'")
        steps = [float(s) for s in self.steps]
        if steps and not (
            all(0 < s <= 100 for s in steps)
            and steps == sorted(set(steps))  # strictly increasing
            and steps[-1] == 100
        ):
            raise ValidationError(
                f"canary steps must be strictly increasing percents within (0, 100] that end "
                f"at 100 (where the rollout completes), got {self.steps}"
            )
        self.steps = steps
        if self.percent is None:
            self.percent = steps[0] if steps else 10.0
        self.percent = float(self.percent)
        if not 0 <= self.percent <= 100:
            raise ValidationError(f"canary percent must be within 0..100, got {self.percent}")
        if steps and self.percent != 0 and self.percent not in steps:
            raise ValidationError(
                f"canary percent {self.percent:g} is not a step of the ramp "
                f"[{', '.join(f'{s:g}' for s in steps)}]: leave percent out to start at "
                f"{steps[0]:g}, or give one of the steps (0: rolled back)"
            )
        if not steps and (self.step_requests is not None or self.step_s):
            raise ValidationError(
                "canary step_requests and step_s pace a ramp: give steps too "
                "(e.g. steps = [5, 25, 50, 100])"
            )
        if self.step_requests is not None and self.step_requests < 1:
            raise ValidationError(
                f"canary step_requests must be at least 1, got {self.step_requests}"
            )
        if not self.step_s >= 0:  # NaN too
            raise ValidationError(f"canary step_s must be >= 0 seconds, got {self.step_s}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValidationError("canary max_error_rate must be within 0..1")


class LabelsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Outcomes that arrive later on a log topic, joined to shadowed requests by ``id`` (a
    field of both the request rows and the label events); ``loss`` is ``abs`` (|y - score|)
    or ``error`` (score rounded != y)."""

    topic: str
    id: str
    label: str
    loss: str = "abs"
    min_labels: int = 30

    def __post_init__(self) -> None:
        if self.loss not in ("abs", "error"):
            raise ValidationError(f"labels loss must be 'abs' or 'error', got {self.loss!r}")


class ShadowConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Copy a ``sample`` of requests to ``model`` after answering, compare the outputs with
    ``compare``, and promote it (move the primary's alias) once, over ``window_s``, the
    discrepancy's confidence interval sits inside ``tolerance`` and its latency and error
    rate are within bounds."""

    model: str
    sample: float = 1.0
    compare: str = "abs"
    window_s: float = 86_400.0
    tolerance: float = 0.05
    min_samples: int = 200
    max_latency_ratio: float = 3.0
    max_error_rate: float = 0.01
    top_k: int = 10
    auto_promote: bool = True
    labels: LabelsConfig | None = None

    def __post_init__(self) -> None:
        if not 0 < self.sample <= 1:
            raise ValidationError(f"shadow sample must be within (0, 1], got {self.sample}")
        if self.compare not in COMPARES:
            raise ValidationError(
                f"shadow compare {self.compare!r} is unknown{did_you_mean(self.compare, COMPARES)};"
                f" expected one of {', '.join(COMPARES)}"
            )
        if "@" not in self.model:
            raise ValidationError(f"shadow model {self.model!r} must be 'name@alias'")
        if self.window_s <= 0 or self.tolerance < 0 or self.min_samples < 1:
            raise ValidationError("shadow window_s, tolerance and min_samples must be positive")
        if self.compare == "overlap":
            if self.tolerance >= 1:
                raise ValidationError(
                    f"shadow compare 'overlap' measures 1 - top-k overlap, within [0, 1]: a "
                    f"tolerance of {self.tolerance} would accept any candidate; give one below 1"
                )
            if self.labels is not None:
                raise ValidationError(
                    "shadow labels grade one score per request; compare 'overlap' compares "
                    "item lists — drop labels or compare scores"
                )


LOSSES = ("logloss", "squared", "abs", "error")


class MonitorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Write a ``sample`` of served requests to the route's prediction log (the features
        exactly as served, the outputs, the version and the latency), and watch it with
        ``keel monitor`` in windows of ``window_rows`` rows against the model's training set.

        ``id`` names the request field that outcomes join on; ``labels`` is the topic they
        arrive on. ``holdout`` is the last share (by time) of the training set that the model
        did not learn from: the concept-drift estimator learns the model's ``loss`` there, and
        alerts when a window's estimate passes its calibrated level and is at least
        ``min_loss_rise`` (a share) above the healthy estimate. That level is set for
        ``loss_false_alert_rate`` of healthy windows: one test per window, where
        ``false_alert_rate`` applies to each feature's test. ``window_false_alert_rate``,
        when set, is the rate a user thinks in: the share of healthy windows that raise any
        drift alert across all the route's watched columns (it then decides each feature's
        level, accounting for how many are watched and how they move together). A served
    feature whose p99 staleness in a window exceeds ``max_staleness_s`` raises an alert.

    The reference is the model's training set, rebuilt from its lineage; with
    ``reference_rows`` it is the first that many logged predictions instead (a healthy period
    chosen by its position), which models without a training set (builtins, tensor models
    such as a text embedder) need."""

    sample: float = 1.0
    id: str | None = None
    window_rows: int = 1000
    categorical: list[str] = msgspec.field(default_factory=list)
    loss: str = "logloss"
    false_alert_rate: float = 0.01
    window_false_alert_rate: float | None = None
    loss_false_alert_rate: float = 0.01
    holdout: float = 0.3
    min_loss_rise: float = 0.1
    max_staleness_s: float | None = None
    reference_rows: int = 0
    labels: LabelsConfig | None = None

    def __post_init__(self) -> None:
        if not 0 < self.sample <= 1:
            raise ValidationError(f"monitor sample must be within (0, 1], got {self.sample}")
        if self.window_rows < 50:
            raise ValidationError(
                f"monitor window_rows must be at least 50, got {self.window_rows}"
            )
        if self.loss not in LOSSES:
            raise ValidationError(
                f"monitor loss {self.loss!r} is unknown{did_you_mean(self.loss, LOSSES)}; "
                f"expected one of {', '.join(LOSSES)}"
            )
        if not 0 < self.false_alert_rate < 0.5:
            raise ValidationError("monitor false_alert_rate must be within (0, 0.5)")
        if self.window_false_alert_rate is not None and not 0 < self.window_false_alert_rate < 0.5:
            raise ValidationError("monitor window_false_alert_rate must be within (0, 0.5)")
        if not 0 < self.loss_false_alert_rate < 0.5:
            raise ValidationError("monitor loss_false_alert_rate must be within (0, 0.5)")
        if self.reference_rows < 0:
            raise ValidationError(f"monitor reference_rows must be >= 0, got {self.reference_rows}")
        if not 0 < self.holdout < 1:
            raise ValidationError(f"monitor holdout must be within (0, 1), got {self.holdout}")
        if not self.min_loss_rise >= 0:  # NaN too
            raise ValidationError(f"monitor min_loss_rise must be >= 0, got {self.min_loss_rise}")


#: What starts a loop: the estimated loss over its level, drift in ``drift_features``
#: features of one window, or a schedule (``every_s``).
LOOP_TRIGGERS = ("performance", "drift", "schedule")
#: The job a loop submits: a full retrain, or a fine-tune of the embedding tables.
LOOP_JOBS = ("retrain", "fine-tune")


#: How a route's predictions are explained (see keel.explain): exact TreeSHAP for tree
#: models, budgeted Kernel SHAP for any tabular model, or a registered surrogate.
EXPLAIN_METHODS = ("tree", "kernel", "surrogate")


class ExplainConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How ``POST /v1/routes/{route}/explain`` answers.

    ``method`` is the default when a request names none (``auto``: exact TreeSHAP for tree
    models, else the surrogate when there is one, else Kernel SHAP). Kernel SHAP summarizes
    the version's training set (found through its lineage) into ``background`` k-means
    centers and evaluates ``samples`` coalitions per row against each; a request whose rows
    would need more than ``max_evaluations`` model evaluations is refused (400) before any
    work. ``surrogate`` ("tree" or "linear") fits a small model on the served version's own
    outputs over its training set, registers it as ``MODEL-surrogate`` with its fidelity,
    and rebuilds it whenever the route's version changes. ``audit`` is the share of served
    predictions whose explanation is written to the ``keel.explanations`` topic."""

    method: str = "auto"
    samples: int = 2048
    background: int = 20
    max_evaluations: int = 4_000_000
    surrogate: str | None = None
    audit: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in ("auto", *EXPLAIN_METHODS):
            raise ValidationError(
                f"explain method must be auto or one of {', '.join(EXPLAIN_METHODS)}, got "
                f"{self.method!r}"
            )
        if self.surrogate not in (None, "tree", "linear"):
            raise ValidationError(
                f"explain surrogate must be 'tree' or 'linear', got {self.surrogate!r}"
            )
        if self.method == "surrogate" and self.surrogate is None:
            raise ValidationError("explain method 'surrogate' needs surrogate = 'tree' or 'linear'")
        if self.samples < 2 or self.background < 1 or self.max_evaluations < 1:
            raise ValidationError(
                "explain samples (>= 2), background (>= 1) and max_evaluations (>= 1) must be "
                "positive"
            )
        if not 0 <= self.audit <= 1:
            raise ValidationError(f"explain audit must be within [0, 1], got {self.audit}")


class LoopConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What the controller does for a route on its own.

    On a trigger in ``on`` it submits the route's ``job`` for ``model`` (default: the
    route's model name) over the freshest settled data; the job registers a version and
    moves ``MODEL@challenger``, which the route's shadow compares with the primary, and the
    shadow's decision promotes or rejects it. One loop runs at a time per route; after a
    request the route waits ``cooldown_s`` (so one standing alert asks once), and at most
    ``max_per_day`` jobs are submitted in any 24 hours.

    A retrain is graded on its holdout beside the version it would replace, on the same
    rows, by ``metric``: one that does not improve on it is rejected before it is shadowed.
    ``holdout_s`` and ``window_s`` give the retrain its own split — the freshest settled
    rows held out, and only the last ``window_s`` before them trained on — where the
    model's declared split (made for routine training) would leave a recent drift out."""

    on: list[str] = msgspec.field(default_factory=lambda: ["performance"])
    job: str = "retrain"
    model: str | None = None
    metric: str = "logloss"
    holdout_s: float | None = None
    window_s: float | None = None
    drift_features: int = 3
    every_s: float | None = None
    cooldown_s: float = 6 * 3600.0
    max_per_day: int = 4
    queue: str | None = None

    def __post_init__(self) -> None:
        for trigger in self.on:
            if trigger not in LOOP_TRIGGERS:
                raise ValidationError(
                    f"loop trigger {trigger!r} is unknown{did_you_mean(trigger, LOOP_TRIGGERS)};"
                    f" expected some of {', '.join(LOOP_TRIGGERS)}"
                )
        if not self.on:
            raise ValidationError(
                f"loop on must name a trigger: some of {', '.join(LOOP_TRIGGERS)}"
            )
        if self.job not in LOOP_JOBS:
            raise ValidationError(
                f"loop job {self.job!r} is unknown; expected one of {', '.join(LOOP_JOBS)}"
            )
        if "schedule" in self.on and not (self.every_s and self.every_s > 0):
            raise ValidationError("loop on 'schedule' needs every_s, the seconds between jobs")
        if self.drift_features < 1:
            raise ValidationError(f"loop drift_features must be >= 1, got {self.drift_features}")
        if not self.cooldown_s >= 0:
            raise ValidationError(f"loop cooldown_s must be >= 0, got {self.cooldown_s}")
        if self.max_per_day < 1:
            raise ValidationError(f"loop max_per_day must be >= 1, got {self.max_per_day}")
        for key in ("holdout_s", "window_s"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValidationError(f"loop {key} must be a positive number of seconds")
        if self.job == "fine-tune" and (self.holdout_s or self.window_s):
            raise ValidationError(
                "loop holdout_s and window_s split a retrain's data; a fine-tune reads the "
                "interactions since the serving version"
            )


#: How a builtin text model runs: ``torch`` (as packaged), ``onnx`` (ONNX Runtime, the same
#: float32 weights) or ``onnx-int8`` (its matrix products in int8); ``auto`` is torch.
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")


class RouteConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How one model is served.

    A recommender's route answers each row's ``k`` best items: ``default_k`` when the row
    gives none, at most ``max_k``."""

    name: str
    model: str  # "name@alias", "name@3", or "builtin:all-MiniLM-L6-v2"
    runtime: str = "auto"
    device: str = "cpu"
    batching: bool = True
    max_batch_size: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 1024
    threads: int | None = None
    # Model instances: batches in flight at once, each on its own thread; a second starts
    # only once a full batch waits. A text route's passes in flight share its ``threads``.
    workers: int = 1
    features: list[str] = msgspec.field(default_factory=list)
    fast_path: FastPathConfig | None = None
    canary: CanaryConfig | None = None
    shadow: ShadowConfig | None = None
    monitor: MonitorConfig | None = None
    loop: LoopConfig | None = None
    explain: ExplainConfig = msgspec.field(default_factory=ExplainConfig)
    default_k: int = 10
    max_k: int = 100

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValidationError(f"route name {self.name!r} is invalid")
        if self.device not in ("cpu", "cuda"):
            raise ValidationError(f"route {self.name!r}: device must be 'cpu' or 'cuda'")
        if self.runtime not in RUNTIMES:
            raise ValidationError(
                f"route {self.name!r}: unknown runtime {self.runtime!r}; one of "
                f"{', '.join(RUNTIMES)}"
            )
        if self.runtime != "auto" and not self.model.startswith("builtin:"):
            raise ValidationError(
                f"route {self.name!r}: runtime {self.runtime!r} is for builtin text models; "
                "a registered model runs in its format's runtime (leave runtime = 'auto')"
            )
        if self.runtime.startswith("onnx") and self.device != "cpu":
            raise ValidationError(
                f"route {self.name!r}: runtime {self.runtime!r} runs on the CPU, not "
                f"{self.device!r}"
            )
        if self.max_batch_size < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ValidationError(f"route {self.name!r}: batch policy values must be positive")
        if self.workers < 1 or (self.threads is not None and self.threads < 1):
            raise ValidationError(
                f"route {self.name!r}: workers and threads must be >= 1 (got workers = "
                f"{self.workers}, threads = {self.threads})"
            )
        if not self.model.startswith("builtin:") and "@" not in self.model:
            raise ValidationError(
                f"route {self.name!r}: model {self.model!r} must be 'name@alias' or "
                "'name@version' (or builtin:all-MiniLM-L6-v2)"
            )
        if self.loop is not None:
            self._check_loop(self.loop)
        if not 1 <= self.default_k <= self.max_k:
            raise ValidationError(
                f"route {self.name!r}: default_k must be within 1..max_k ({self.max_k}), got "
                f"{self.default_k}"
            )

    def _check_loop(self, loop: LoopConfig) -> None:
        if self.model.startswith("builtin:"):
            raise ValidationError(
                f"route {self.name!r} serves a builtin model, which no job retrains: drop its "
                "[routes.loop] block"
            )
        model = loop.model or self.model.partition("@")[0]
        if self.shadow is None or self.shadow.model != f"{model}@challenger":
            raise ValidationError(
                f"route {self.name!r}: its loop's {loop.job} moves {model}@challenger, which "
                f"the route must compare before it takes traffic: add [routes.shadow] with "
                f'model = "{model}@challenger"'
            )
        if {"performance", "drift"} & set(loop.on) and self.monitor is None:
            raise ValidationError(
                f"route {self.name!r}: its loop reacts to the monitor's alerts, and the route "
                "has no [routes.monitor] block"
            )


class ServeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[serve]`` in keel.toml: what one request may ask of the server (``keel serve`` and
    ``keel features serve``). Over a limit answers 413 naming it; a client that takes longer
    than ``body_timeout_s`` to send its body answers 408, and an idle connection is closed
    after ``keep_alive_s``, so slow clients cannot hold the server's workers."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_rows: int = 10_000
    max_keys: int = 1_000
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if getattr(self, name) <= 0:
                raise ValidationError(f"serve {name} must be positive, got {getattr(self, name)}")


#: Roles a server token can have (see keel.serving.auth for what each may reach).
ROLES = ("admin", "operator", "reader", "client")
#: Extra tokens for the server, ``name:role:hash`` separated by spaces.
ENV_TOKENS = "KEEL_AUTH_TOKENS"


class TokenConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A named token: its ``role`` and the salted ``hash`` of its secret (never the secret)."""

    name: str
    role: str
    hash: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(
                f"token {self.name!r}: role {self.role!r} is not one of {', '.join(ROLES)}"
            )
        parts = self.hash.split("$")
        if len(parts) != 3 or parts[0] != "scrypt" or not all(_is_hex(p) for p in parts[1:]):
            raise ConfigError(
                f"token {self.name!r}: hash must be 'scrypt$<salt hex>$<digest hex>' as "
                "`keel token new` prints it"
            )


class AuthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[auth]`` in keel.toml: the tokens, and which open levels also need one."""

    tokens: list[TokenConfig] = msgspec.field(default_factory=list)
    data_token: bool = False
    metrics_token: bool = False
    health_token: bool = False

    def __post_init__(self) -> None:
        names = [t.name for t in self.tokens]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"auth token names must be unique; given twice: {', '.join(twice)}")

    def with_env(self, env: Mapping[str, str] | None = None) -> AuthConfig:
        """These settings plus the tokens in ``KEEL_AUTH_TOKENS``."""
        raw = (os.environ if env is None else env).get(ENV_TOKENS, "")
        extra = []
        for entry in raw.split():
            name, _, rest = entry.partition(":")
            role, _, hashed = rest.partition(":")
            if not name or not role or not hashed:
                raise ConfigError(f"{ENV_TOKENS}: {entry!r} is not name:role:hash")
            extra.append(TokenConfig(name=name, role=role, hash=hashed))
        if not extra:
            return self
        return msgspec.structs.replace(self, tokens=[*self.tokens, *extra])

    def needs_token(self, level: str) -> bool:
        return (
            level not in ("health", "metrics", "data")
            or {
                "health": self.health_token,
                "metrics": self.metrics_token,
                "data": self.data_token,
            }[level]
        )


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return bool(text)


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where Keel keeps its state: one URL per backend and the data folder.

    Relative paths are resolved against ``project_dir`` (the folder holding ``keel.toml``).
    Empty URLs take the embedded default under ``data_dir``.
    """

    name: str = "keel"
    project_dir: str = "."
    data_dir: str = ".keel"
    definitions: str = "definitions.py"
    log_url: str = ""
    online_url: str = "memory://"
    offline_url: str = ""
    registry_url: str = ""
    artifacts_url: str = ""
    jobs_url: str = "local://"
    routes: list[RouteConfig] = msgspec.field(default_factory=list)
    jobs: JobsConfig = msgspec.field(default_factory=JobsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    serve: ServeConfig = msgspec.field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        root = Path(self.project_dir).expanduser().resolve()
        self.project_dir = str(root)
        data = Path(self.data_dir).expanduser()
        self.data_dir = str(data if data.is_absolute() else root / data)
        if not self.log_url:
            self.log_url = f"sqlite:///{self.data_dir}/log.db"
        if not self.offline_url:
            self.offline_url = f"{self.data_dir}/offline"
        if not self.registry_url:
            self.registry_url = f"sqlite:///{self.data_dir}/registry.db"
        if not self.artifacts_url:
            self.artifacts_url = f"{self.data_dir}/artifacts"
        check_jobs_url(self.jobs_url)  # the executors' own rule, no backend imported
        scheme = self.offline_url.partition("://")[0] if "://" in self.offline_url else ""
        if scheme and scheme != "file":
            raise ValidationError(
                f"offline_url {self.offline_url!r}: the offline store is a local folder (or "
                f"file://); {scheme}:// is not supported"
            )
        if scheme == "file":
            self.offline_url = self.offline_url[len("file://") :]
        self.log_url = _resolve_sqlite(self.log_url, root)
        self.registry_url = _resolve_sqlite(self.registry_url, root)
        self.online_url = _resolve_sqlite(self.online_url, root)
        for key in ("offline_url", "artifacts_url"):
            value = getattr(self, key)
            if "://" not in value and not Path(value).is_absolute():
                setattr(self, key, str(root / value))

    @property
    def definitions_path(self) -> Path:
        """The project's Python module of definitions."""
        return Path(self.project_dir) / self.definitions

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f for f in cls.__struct_fields__ if f != "project_dir")

    @classmethod
    def load(
        cls,
        config: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        project_dir: str | os.PathLike[str] | None = None,
    ) -> Settings:
        """Read settings from ``config`` (default ``./keel.toml`` if present), then ``KEEL_*``.

        Parameters
        ----------
        config
            Path to a TOML file. When omitted, ``keel.toml`` in ``project_dir`` (default: the
            current folder) is read if it exists.
        env
            The environment to read ``KEEL_*`` overrides from (default ``os.environ``).
        project_dir
            The folder relative paths are resolved against; defaults to the config's folder.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if config is not None:
            path = Path(config)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist")
        else:
            path = Path(project_dir or ".") / CONFIG_FILE
        if path.is_file():
            values.update(_read_toml(path))
            values.setdefault("project_dir", str(path.parent))
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX) or key in ENV_RESERVED:
                continue
            field = key[len(ENV_PREFIX) :].lower()
            if field not in cls.fields():
                hint = did_you_mean(field, cls.fields())
                raise ConfigError(
                    f"environment variable {key} names no setting{hint}; "
                    f"known: {', '.join('KEEL_' + f.upper() for f in cls.fields())}"
                )
            values[field] = raw
        if project_dir is not None:
            values["project_dir"] = str(project_dir)
        try:
            return msgspec.convert(values, cls)
        except (msgspec.ValidationError, ValidationError) as exc:
            raise ConfigError(f"invalid settings in {str(path)!r}: {exc}") from exc


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not valid TOML: {exc}") from exc
    unknown = [k for k in data if k not in Settings.fields()]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"{str(path)!r}: unknown key {key!r}{did_you_mean(key, Settings.fields())}; "
            f"known keys: {', '.join(Settings.fields())}"
        )
    return data


def _resolve_sqlite(url: str, root: Path) -> str:
    """Make a relative ``sqlite:///rel/path`` absolute against the project folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rel = url[len(prefix) :]
        if rel and rel != ":memory:":
            return prefix + str(root / rel)
    return url
