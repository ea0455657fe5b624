"""Where accelerator samples come from: a :class:`UtilizationSource` gives a
:class:`DeviceSample` per device and the processes on each device. :class:`NvmlSource` reads
NVIDIA devices through NVML; :class:`FakeSource` plays a script, for tests and demos.

Example
-------
>>> fake = FakeSource({0: 0.25})
>>> [(d.index, d.name, d.utilization) for d in fake.devices()]
[(0, 'Fake GPU', 0.25)]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from keel.errors import UnavailableError, ValidationError

__all__ = [
    "ENGINES",
    "DeviceSample",
    "FakeSource",
    "NoAcceleratorError",
    "NvmlSource",
    "UtilizationSource",
    "nvidia_device_count",
]

logger = logging.getLogger(__name__)

#: Engine label → the :class:`DeviceSample` field holding that engine's activity.
ENGINES = {
    "sm": "sm_activity",
    "sm_occupancy": "sm_occupancy",
    "tensor": "tensor_activity",
    "dram": "dram_activity",
}


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


def nvidia_device_count() -> int:
    """The NVIDIA devices NVML sees here: 0 without the package, a driver or a device."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


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
