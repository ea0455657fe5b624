"""The accelerator-utilization watch: sample each device's utilization, keep a window per
device, job and route, export Prometheus gauges and alert when one idles under a threshold.

A :class:`UtilizationSource` gives per-device samples and the processes on each device;
:class:`NvmlSource` reads them from NVML, :class:`FakeSource` plays a script. The watch
attributes a device's utilization to the jobs whose processes (by pid) run on it.

Example
-------
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
from typing import Any, Literal, Protocol

import msgspec

from keel.errors import UnavailableError, ValidationError
from keel.jobs.spec import UtilizationConfig
from keel.log import OFFSET, Topic

__all__ = [
    "ENGINES",
    "UTILIZATION",
    "DeviceSample",
    "FakeSource",
    "NoAcceleratorError",
    "NvmlSource",
    "SeriesSummary",
    "UtilizationAlert",
    "UtilizationSource",
    "UtilizationWatch",
    "WatchSummary",
    "open_watch",
    "publish_alerts",
    "read_alerts",
]

logger = logging.getLogger(__name__)

#: Engine label → the :class:`DeviceSample` field holding that engine's activity.
ENGINES = {
    "sm": "sm_activity",
    "sm_occupancy": "sm_occupancy",
    "tensor": "tensor_activity",
    "dram": "dram_activity",
}

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


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One device at one moment. Shares are within 0..1; a field the device does not
    report (NVML's ``NotSupported``) is None."""

    index: int
    uuid: str
    name: str
    utilization: float | None
    memory_used: int | None = None
    memory_total: int | None = None
    memory_utilization: float | None = None
    sm_activity: float | None = None
    sm_occupancy: float | None = None
    tensor_activity: float | None = None
    dram_activity: float | None = None

    def engines(self) -> dict[str, float]:
        """The engine activities this device reports, by :data:`ENGINES` label."""
        out = {e: getattr(self, f) for e, f in ENGINES.items()}
        return {e: v for e, v in out.items() if v is not None}


class UtilizationSource(Protocol):
    """Where samples come from."""

    def devices(self) -> list[DeviceSample]:
        """A sample of every device, now."""
        ...

    def processes(self, index: int) -> dict[int, int | None]:
        """Pid → used device memory in bytes (None if unknown) of device ``index``'s compute
        processes."""
        ...


class NoAcceleratorError(UnavailableError):
    """This machine has no accelerator Keel can watch; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"no accelerator: {reason}")


class NvmlSource:
    """Samples NVIDIA devices through NVML (the ``nvidia-ml-py`` package).

    Open one with :meth:`open`, which raises :class:`NoAcceleratorError` on a machine
    without a driver or devices. Pids are the host's: a watch in a container sees its own
    jobs only when it shares the host's pid namespace.

    Example
    -------
    >>> try:
    ...     source = NvmlSource.open()
    ... except NoAcceleratorError as e:
    ...     ok = bool(e.reason)
    ... else:
    ...     ok = len(source.devices()) > 0
    ...     source.close()
    >>> ok
    True
    """

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles
        # GPM rates are measured between two samples: the previous one per device, or None
        # where the device has no GPM (pre-Hopper) or it failed once.
        self._gpm: dict[int, list[Any] | None] = {}
        for i, h in enumerate(handles):
            self._gpm[i] = self._gpm_start(h)

    @classmethod
    def open(cls) -> NvmlSource:
        """Start NVML and take every device; :class:`NoAcceleratorError` if there are none."""
        try:
            import pynvml
        except ImportError as e:
            raise NoAcceleratorError(
                f"the nvidia-ml-py package is not installed ({e}); pip install nvidia-ml-py"
            ) from e
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded) as e:
            raise NoAcceleratorError(f"no NVIDIA driver: NVML could not start: {e}") from e
        except pynvml.NVMLError as e:
            raise NoAcceleratorError(f"NVML could not start: {e}") from e
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            if count == 0:
                raise NoAcceleratorError("NVML started but found no devices")
            return cls(pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)])
        except BaseException:
            pynvml.nvmlShutdown()
            raise

    def devices(self) -> list[DeviceSample]:
        nvml = self._nvml
        out = []
        for i, h in enumerate(self._handles):
            try:
                rates = self._field(nvml.nvmlDeviceGetUtilizationRates, h)
                memory = self._field(nvml.nvmlDeviceGetMemoryInfo, h)
                engines = self._gpm_read(i, h)
                out.append(
                    DeviceSample(
                        index=i,
                        uuid=_text(nvml.nvmlDeviceGetUUID(h)),
                        name=_text(nvml.nvmlDeviceGetName(h)),
                        utilization=None if rates is None else rates.gpu / 100,
                        memory_used=None if memory is None else int(memory.used),
                        memory_total=None if memory is None else int(memory.total),
                        memory_utilization=None if rates is None else rates.memory / 100,
                        **engines,
                    )
                )
            except nvml.NVMLError as e:
                raise UnavailableError(f"NVML could not read device {i}: {e}") from e
        return out

    def processes(self, index: int) -> dict[int, int | None]:
        if not 0 <= index < len(self._handles):
            raise ValidationError(f"device index must be within 0..{len(self._handles) - 1}")
        nvml = self._nvml
        try:
            procs = self._field(nvml.nvmlDeviceGetComputeRunningProcesses, self._handles[index])
        except nvml.NVMLError as e:
            raise UnavailableError(f"NVML could not list device {index}'s processes: {e}") from e
        return {int(p.pid): p.usedGpuMemory for p in procs or ()}

    def close(self) -> None:
        """Free GPM samples and shut NVML down."""
        for samples in self._gpm.values():
            for s in samples or ():
                self._nvml.nvmlGpmSampleFree(s)
        self._gpm.clear()
        self._nvml.nvmlShutdown()

    def _field(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (self._nvml.NVMLError_NotSupported, self._nvml.NVMLError_NoPermission):
            return None

    def _gpm_start(self, handle: Any) -> list[Any] | None:
        nvml = self._nvml
        try:
            if not nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
                return None
            first, second = nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()
            nvml.nvmlGpmSampleGet(handle, first)
        except (nvml.NVMLError, AttributeError) as e:
            # Engine activity is optional: a driver or package without GPM leaves it None.
            logger.info("no GPM engine activity on this device: %s", e)
            return None
        return [first, second]

    def _gpm_read(self, index: int, handle: Any) -> dict[str, float | None]:
        samples = self._gpm.get(index)
        if samples is None:
            return {}
        nvml = self._nvml
        ids = {
            "sm_activity": nvml.NVML_GPM_METRIC_SM_UTIL,
            "sm_occupancy": nvml.NVML_GPM_METRIC_SM_OCCUPANCY,
            "tensor_activity": nvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
            "dram_activity": nvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
        }
        try:
            nvml.nvmlGpmSampleGet(handle, samples[1])
            request = nvml.c_nvmlGpmMetricsGet_t()
            request.version = nvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = len(ids)
            request.sample1, request.sample2 = samples
            for k, metric in enumerate(ids.values()):
                request.metrics[k].metricId = metric
            nvml.nvmlGpmMetricsGet(request)
        except nvml.NVMLError as e:
            logger.info("GPM engine activity of device %d stopped: %s", index, e)
            for s in samples:
                nvml.nvmlGpmSampleFree(s)
            self._gpm[index] = None
            return {}
        samples.reverse()  # the newest sample is the next interval's start
        return {
            name: request.metrics[k].value / 100
            if request.metrics[k].nvmlReturn == nvml.NVML_SUCCESS
            else None
            for k, name in enumerate(ids)
        }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class FakeSource:
    """A scripted source for tests and demos.

    Each :meth:`devices` call takes the next value of every device's utilization series and
    holds the last one once a series runs out; a plain number is a constant series.
    ``processes`` maps a device to its pid → used memory; change it with
    :meth:`set_processes`.

    Example
    -------
    >>> fake = FakeSource({0: [0.5, 0.9], 1: 0.1}, processes={0: {42: 2**30}})
    >>> [d.utilization for d in fake.devices()], [d.utilization for d in fake.devices()]
    ([0.5, 0.1], [0.9, 0.1])
    >>> fake.processes(0)
    {42: 1073741824}
    """

    def __init__(
        self,
        utilization: Mapping[int, Sequence[float] | float],
        *,
        processes: Mapping[int, Mapping[int, int | None]] | None = None,
        engines: Mapping[int, Mapping[str, float]] | None = None,
        name: str = "Fake GPU",
        memory_total: int = 80 * 2**30,
    ) -> None:
        self._series: dict[int, list[float]] = {}
        for index, series in utilization.items():
            values = [series] if isinstance(series, int | float) else list(series)
            if not values or not all(0 <= v <= 1 for v in values):
                raise ValidationError(
                    f"device {index}'s utilization series must be shares within 0..1, "
                    f"got {series!r}"
                )
            self._series[index] = values
        for index, activity in (engines or {}).items():
            unknown = set(activity) - set(ENGINES)
            if unknown:
                raise ValidationError(
                    f"device {index}: unknown engine {sorted(unknown)[0]!r}; "
                    f"known: {', '.join(ENGINES)}"
                )
        self._engines = {i: dict(e) for i, e in (engines or {}).items()}
        self._processes = {i: dict(p) for i, p in (processes or {}).items()}
        self.name = name
        self.memory_total = memory_total
        self._step = 0

    def set_processes(self, index: int, processes: Mapping[int, int | None]) -> None:
        """Replace device ``index``'s processes (pid → used memory in bytes)."""
        self._processes[index] = dict(processes)

    def devices(self) -> list[DeviceSample]:
        out = []
        for index, series in self._series.items():
            used = sum(m or 0 for m in self._processes.get(index, {}).values())
            engines = {ENGINES[e]: v for e, v in self._engines.get(index, {}).items()}
            out.append(
                DeviceSample(
                    index=index,
                    uuid=f"GPU-fake-{index}",
                    name=self.name,
                    utilization=series[min(self._step, len(series) - 1)],
                    memory_used=used,
                    memory_total=self.memory_total,
                    **engines,
                )
            )
        self._step += 1
        return out

    def processes(self, index: int) -> dict[int, int | None]:
        return dict(self._processes.get(index, {}))


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
        self._gauges = _Gauges(registry) if registry is not None else None

    @property
    def state(self) -> Literal["no accelerator", "watching"]:
        return "no accelerator" if self.source is None else "watching"

    def sample(self) -> list[UtilizationAlert]:
        """Take one sample; return the alerts it raised (each also passed to ``on_alert``)."""
        if self.source is None:
            return []
        now = float(self._clock())
        devices = self.source.devices()
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
        for gauge, labels in self._seen.items():
            for gone in labels - seen.get(gauge, set()):
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
