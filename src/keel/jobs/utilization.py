"""The accelerator-utilization watch: sample each device's utilization, keep a window per
device, job and route, export Prometheus gauges and alert when one idles under a threshold.

Samples come from a :class:`~keel.jobs.devices.UtilizationSource` (NVML on a real machine,
a scripted fake in tests). The watch attributes a device's utilization to the jobs whose
processes (by pid) run on it.

Example
-------
>>> from keel.jobs.devices import FakeSource
>>> from keel.jobs.spec import UtilizationConfig
>>> fake = FakeSource({0: [0.2] * 4})
>>> t = iter(range(0, 100, 10))
>>> watch = UtilizationWatch(fake, UtilizationConfig(window_s=30, interval_s=10),
...                          clock=lambda: float(next(t)))
>>> for _ in range(4):
...     for alert in watch.sample():
...         print(alert.message)  # doctest: +NORMALIZE_WHITESPACE
device 0 (Fake GPU) averaged 20% utilization over 30 s, under the 60% threshold:
the hardware is over-provisioned
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from keel.errors import UnavailableError, ValidationError
from keel.jobs.devices import DeviceSample, NoAcceleratorError, NvmlSource, UtilizationSource
from keel.jobs.spec import UtilizationConfig
from keel.log import OFFSET, Topic

__all__ = [
    "UTILIZATION",
    "SeriesSummary",
    "UtilizationAlert",
    "UtilizationWatch",
    "WatchSummary",
    "open_watch",
    "publish_alerts",
    "read_alerts",
]

logger = logging.getLogger(__name__)

#: Utilization alerts, keyed by the device, job or route they are about.
UTILIZATION = Topic(
    "keel.jobs.utilization",
    {
        "ts": "timestamp",
        "kind": "string",
        "name": "string",
        "mean": "float64",
        "threshold": "float64",
        "window_s": "float64",
        "message": "string",
    },
    event_time="ts",
    key="name",
)

Kind = Literal["device", "job", "route"]
Jobs = Callable[[], Mapping[int, tuple[str, str | None]]]


class UtilizationAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A device, job or route whose mean utilization over ``window_s`` stayed under
    ``threshold``; ``at`` is epoch seconds."""

    kind: Kind
    name: str
    mean: float
    threshold: float
    window_s: float
    at: float
    message: str


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """One device's, job's or route's latest utilization and its windowed mean."""

    kind: Kind
    name: str
    label: str
    current: float
    mean: float
    full: bool


@dataclass(frozen=True, slots=True)
class WatchSummary:
    """What the watch sees, for the CLI; ``str()`` gives it as lines of text."""

    state: Literal["no accelerator", "watching"]
    reason: str | None
    series: list[SeriesSummary]

    def __str__(self) -> str:
        if self.state == "no accelerator":
            return f"no accelerator: {self.reason}"
        lines = []
        for s in self.series:
            mean = f"{s.mean:.0%}" + ("" if s.full else " (window filling)")
            lines.append(f"{s.label}: now {s.current:.0%}, mean {mean}")
        return "\n".join(lines) or "watching: no sample yet"


@dataclass(slots=True)
class _Window:
    since: float
    label: str
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    alerted: bool = False

    def add(self, now: float, value: float, window_s: float) -> None:
        self.samples.append((now, value))
        while self.samples[0][0] < now - window_s:
            self.samples.popleft()

    def full(self, window_s: float) -> bool:
        """Whether the samples, from the first to the latest, span the whole window."""
        return self.samples[-1][0] - self.since >= window_s

    @property
    def mean(self) -> float:
        return sum(v for _, v in self.samples) / len(self.samples)


class UtilizationWatch:
    """Watches accelerator utilization per device, job and route.

    Parameters
    ----------
    source
        Where samples come from; None for a machine without accelerators (then ``reason``
        says why, and :meth:`sample` does nothing).
    config
        Threshold, window and sampling interval.
    clock
        Epoch seconds now (default ``time.time``); pass ``ManualClock(...).now`` in tests.
    registry
        A ``prometheus_client.CollectorRegistry`` to export gauges to (optional).
    on_alert
        Called with each new :class:`UtilizationAlert`.
    jobs
        Returns pid → (job id, route or None) of the running jobs' processes.
    """

    def __init__(
        self,
        source: UtilizationSource | None,
        config: UtilizationConfig,
        *,
        clock: Callable[[], float] = time.time,
        registry: Any = None,
        on_alert: Callable[[UtilizationAlert], None] | None = None,
        jobs: Jobs | None = None,
        reason: str | None = None,
    ) -> None:
        if not isinstance(config, UtilizationConfig):
            raise ValidationError(
                f"config must be a UtilizationConfig, got {type(config).__name__}; build one "
                "with UtilizationConfig(threshold=0.6, window_s=300, interval_s=5)"
            )
        for name, fn in (("clock", clock), ("on_alert", on_alert), ("jobs", jobs)):
            if fn is not None and not callable(fn):
                raise ValidationError(f"{name} must be callable, got {type(fn).__name__}")
        self.source = source
        self.config = config
        self.reason = (reason or "no source given") if source is None else None
        self._clock = clock
        self._on_alert = on_alert
        self._jobs = jobs
        self._windows: dict[tuple[Kind, str], _Window] = {}
        self._current: dict[tuple[Kind, str], float] = {}
        self._devices: list[DeviceSample] = []
        self._gauges = _Gauges(registry) if registry is not None else None

    @property
    def state(self) -> Literal["no accelerator", "watching"]:
        return "no accelerator" if self.source is None else "watching"

    @property
    def devices(self) -> list[DeviceSample]:
        """Every device as the latest :meth:`sample` saw it (none before the first)."""
        return list(self._devices)

    def sample(self) -> list[UtilizationAlert]:
        """Take one sample; return the alerts it raised (each also passed to ``on_alert``)."""
        if self.source is None:
            return []
        now = float(self._clock())
        devices = self._devices = self.source.devices()
        values: dict[tuple[Kind, str], tuple[float, str]] = {}
        for d in devices:
            if d.utilization is not None:
                values["device", str(d.index)] = (d.utilization, f"device {d.index} ({d.name})")
        jobs = self._attribute(devices) if self._jobs is not None else {}
        for key, (used, label) in jobs.items():
            shares = [values["device", str(i)][0] for i in used if ("device", str(i)) in values]
            if shares:
                values[key] = (sum(shares) / len(shares), label)
        alerts = [a for key, v in values.items() if (a := self._update(key, *v, now))]
        for key in set(self._windows) - set(values):
            del self._windows[key]  # gone: a job that comes back starts a fresh window
        self._current = {k: v for k, (v, _) in values.items()}
        if self._gauges is not None:
            self._gauges.update(devices, self._current)
        for a in alerts:
            logger.warning("%s", a.message)
            if self._on_alert is not None:
                self._on_alert(a)
        return alerts

    def run(self, stop: threading.Event) -> None:
        """Sample every ``interval_s`` until ``stop`` is set; a source that cannot answer
        is logged and asked again at the next interval."""
        while not stop.is_set():
            try:
                self.sample()
            except UnavailableError:
                logger.exception(
                    "utilization sample failed; retrying in %gs", self.config.interval_s
                )
            stop.wait(self.config.interval_s)

    def summary(self) -> WatchSummary:
        """Each device's, job's and route's latest utilization and windowed mean."""
        series = [
            SeriesSummary(
                kind,
                name,
                w.label,
                self._current[kind, name],
                w.mean,
                full=w.full(self.config.window_s),
            )
            for (kind, name), w in self._windows.items()
        ]
        return WatchSummary(self.state, self.reason, series)

    def close(self) -> None:
        """Let go of the source (:class:`~keel.jobs.devices.NvmlSource` shuts NVML down);
        call it once the watch is no longer sampled."""
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def _attribute(
        self, devices: list[DeviceSample]
    ) -> dict[tuple[Kind, str], tuple[set[int], str]]:
        """Per job and route: the devices its processes use, and its label."""
        owners = self._jobs() if self._jobs is not None else {}
        out: dict[tuple[Kind, str], tuple[set[int], str]] = {}
        for d in devices:
            for pid in self.source.processes(d.index) if self.source else ():
                if pid not in owners:
                    continue
                job, route = owners[pid]
                out.setdefault(("job", job), (set(), f"job {job}"))[0].add(d.index)
                if route is not None:
                    out.setdefault(("route", route), (set(), f"route {route}"))[0].add(d.index)
        return out

    def _update(self, key: tuple[Kind, str], value: float, label: str, now: float) -> Any:
        cfg = self.config
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window(since=now, label=label)
        w.add(now, value, cfg.window_s)
        mean = w.mean
        if mean >= cfg.threshold:
            w.alerted = False  # recovered: the next idle window is a new episode
            return None
        if w.alerted or not w.full(cfg.window_s):
            return None
        w.alerted = True
        return UtilizationAlert(
            kind=key[0],
            name=key[1],
            mean=mean,
            threshold=cfg.threshold,
            window_s=cfg.window_s,
            at=now,
            message=_message(key[0], label, mean, cfg),
        )


_ADVICE = {
    "device": "the hardware is over-provisioned",
    "job": "the job holds more accelerator than it uses",
    "route": "the route's replicas hold more accelerator than they use",
}


def _message(kind: Kind, label: str, mean: float, cfg: UtilizationConfig) -> str:
    return (
        f"{label} averaged {mean:.0%} utilization over {cfg.window_s:g} s, under the "
        f"{cfg.threshold:.0%} threshold: {_ADVICE[kind]}"
    )


#: DeviceSample field → (gauge name, help), each labelled by device index and uuid.
_DEVICE_GAUGES = {
    "utilization": ("keel_accelerator_utilization", "Share of time a kernel ran"),
    "memory_utilization": ("keel_accelerator_memory_utilization", "Share of time memory moved"),
    "memory_used": ("keel_accelerator_memory_used_bytes", "Device memory in use"),
    "memory_total": ("keel_accelerator_memory_total_bytes", "Device memory"),
}


class _Gauges:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Gauge

        dev = ["device", "uuid"]
        self.device = {
            f: Gauge(name, doc, dev, registry=registry) for f, (name, doc) in _DEVICE_GAUGES.items()
        }
        self.engine = Gauge(
            "keel_accelerator_engine_activity",
            "Engine activity share (NVML GPM)",
            [*dev, "engine"],
            registry=registry,
        )
        self.owner = {
            kind: Gauge(
                f"keel_{kind}_accelerator_utilization",
                f"Mean utilization of the devices a {kind}'s processes use",
                [kind],
                registry=registry,
            )
            for kind in ("job", "route")
        }
        self._seen: dict[Any, set[tuple[str, ...]]] = {}

    def update(self, devices: list[DeviceSample], current: dict[tuple[Kind, str], float]) -> None:
        seen: dict[Any, set[tuple[str, ...]]] = {}

        def put(gauge: Any, labels: tuple[str, ...], value: float) -> None:
            gauge.labels(*labels).set(value)
            seen.setdefault(gauge, set()).add(labels)

        for d in devices:
            labels = (str(d.index), d.uuid)
            for f, gauge in self.device.items():
                if (value := getattr(d, f)) is not None:
                    put(gauge, labels, value)
            for engine, value in d.engines().items():
                put(self.engine, (*labels, engine), value)
        for (kind, name), value in current.items():
            if kind != "device":
                put(self.owner[kind], (name,), value)
        # Series of devices, jobs and routes that are gone disappear rather than freeze.
        for gauge, before in self._seen.items():
            for gone in before - seen.get(gauge, set()):
                gauge.remove(*gone)
        self._seen = seen


def open_watch(config: UtilizationConfig, **kwargs: Any) -> UtilizationWatch:
    """A watch over this machine's NVIDIA devices, or one in state ``"no accelerator"``
    (with the reason) when there are none; ``kwargs`` go to :class:`UtilizationWatch`.

    Example
    -------
    >>> from keel.jobs.spec import UtilizationConfig
    >>> watch = open_watch(UtilizationConfig())
    >>> watch.state in ("no accelerator", "watching")
    True
    """
    try:
        source = NvmlSource.open()
    except NoAcceleratorError as e:
        return UtilizationWatch(None, config, reason=e.reason, **kwargs)
    return UtilizationWatch(source, config, **kwargs)


def publish_alerts(log_: Any, alerts: Sequence[UtilizationAlert]) -> None:
    """Append ``alerts`` to the :data:`UTILIZATION` topic, creating it if need be."""
    if not alerts:
        return
    log_.create_topic(UTILIZATION, exist_ok=True)
    log_.append(
        UTILIZATION.name,
        [
            {
                "ts": datetime.fromtimestamp(a.at, tz=UTC),
                **{k: v for k, v in msgspec.structs.asdict(a).items() if k != "at"},
            }
            for a in alerts
        ],
    )


def read_alerts(log_: Any) -> list[UtilizationAlert]:
    """Every alert on the :data:`UTILIZATION` topic, in log order (none if no topic)."""
    from keel.errors import TopicNotFoundError

    try:
        topic = log_.topic(UTILIZATION.name)
    except TopicNotFoundError:
        return []
    out = []
    for p in range(topic.partitions):
        offset = 0
        while (batch := log_.read(UTILIZATION.name, p, offset, 10_000)).num_rows:
            offset = int(batch.column(OFFSET)[-1].as_py()) + 1
            for r in batch.to_pylist():
                fields = {k: r[k] for k in ("kind", "name", "mean", "threshold", "window_s")}
                out.append(UtilizationAlert(**fields, at=r["ts"].timestamp(), message=r["message"]))
    return out
