from __future__ import annotations

import threading
from collections.abc import Iterator

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from keel.clock import ManualClock
from keel.errors import UnavailableError, ValidationError
from keel.jobs.devices import FakeSource, NoAcceleratorError, NvmlSource, nvidia_device_count
from keel.jobs.spec import JobsConfig, UtilizationConfig
from keel.jobs.utilization import (
    UTILIZATION,
    UtilizationAlert,
    UtilizationWatch,
    open_watch,
    publish_alerts,
    read_alerts,
)
from keel.log import Log, open_log

CONFIG = UtilizationConfig(threshold=0.6, window_s=60, interval_s=10)
STEPS_TO_FILL = 6  # samples after the first until the first one is window_s old


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000.0)


def run(watch: UtilizationWatch, clock: ManualClock, steps: int) -> list[list[UtilizationAlert]]:
    """Sample ``steps`` times, one interval apart; the alerts raised at each step."""
    out = []
    for _ in range(steps):
        out.append(watch.sample())
        clock.advance(CONFIG.interval_s)
    return out


def test_a_device_under_the_threshold_for_a_full_window_alerts(clock: ManualClock) -> None:
    watch = UtilizationWatch(FakeSource({0: 0.2}, name="NVIDIA H200"), CONFIG, clock=clock.now)
    steps = run(watch, clock, STEPS_TO_FILL + 3)
    assert [len(a) for a in steps] == [0] * STEPS_TO_FILL + [1, 0, 0]
    alert = steps[STEPS_TO_FILL][0]
    assert (alert.kind, alert.name, alert.threshold, alert.window_s) == ("device", "0", 0.6, 60)
    assert alert.mean == pytest.approx(0.2)
    assert alert.at == 1_000_000.0 + STEPS_TO_FILL * CONFIG.interval_s
    assert alert.message == (
        "device 0 (NVIDIA H200) averaged 20% utilization over 60 s, under the 60% threshold: "
        "the hardware is over-provisioned"
    )


def test_no_alert_before_the_window_is_full(clock: ManualClock) -> None:
    watch = UtilizationWatch(FakeSource({0: 0.0}), CONFIG, clock=clock.now)
    assert not any(run(watch, clock, STEPS_TO_FILL))
    assert watch.summary().series[0].full is False


def test_no_alert_while_above_the_threshold(clock: ManualClock) -> None:
    # Dips under the threshold, but the window's mean stays over it.
    watch = UtilizationWatch(FakeSource({0: [0.9, 0.4] * 20}), CONFIG, clock=clock.now)
    assert not any(run(watch, clock, 30))


def test_the_mean_is_over_the_window_only(clock: ManualClock) -> None:
    # Busy for a long time, then idle: the alert comes once the idle samples fill the window.
    busy, idle = 20, 20
    watch = UtilizationWatch(FakeSource({0: [1.0] * busy + [0.1] * idle}), CONFIG, clock=clock.now)
    steps = run(watch, clock, busy + idle)
    first = next(i for i, a in enumerate(steps) if a)
    assert busy + 3 <= first <= busy + STEPS_TO_FILL
    assert steps[first][0].mean < CONFIG.threshold


def test_alerts_once_per_episode_and_rearms_after_recovery(clock: ManualClock) -> None:
    series = [0.1] * 12 + [0.95] * 12 + [0.1] * 12
    seen: list[UtilizationAlert] = []
    watch = UtilizationWatch(FakeSource({0: series}), CONFIG, clock=clock.now, on_alert=seen.append)
    steps = run(watch, clock, len(series))
    raised_at = [i for i, a in enumerate(steps) if a]
    assert len(raised_at) == 2
    assert raised_at[0] == STEPS_TO_FILL
    assert raised_at[1] > 24
    assert [a.at for a in seen] == [a.at for s in steps for a in s]


def test_only_the_idle_job_alerts(clock: ManualClock) -> None:
    source = FakeSource(
        {0: 0.9, 1: 0.15},
        processes={0: {100: 2**30}, 1: {200: 2**30, 201: 2**29}},
    )
    jobs = {100: ("train-a", "fraud"), 200: ("train-b", None), 201: ("train-b", None)}
    watch = UtilizationWatch(source, CONFIG, clock=clock.now, jobs=lambda: jobs)
    alerts = [a for step in run(watch, clock, STEPS_TO_FILL + 2) for a in step]
    by_kind = {(a.kind, a.name) for a in alerts}
    assert by_kind == {("device", "1"), ("job", "train-b")}
    job_alert = next(a for a in alerts if a.kind == "job")
    assert job_alert.mean == pytest.approx(0.15)
    assert job_alert.message.startswith("job train-b averaged 15% utilization over 60 s")


def test_a_route_alerts_on_the_mean_of_its_jobs_devices(clock: ManualClock) -> None:
    source = FakeSource({0: 0.5, 1: 0.3}, processes={0: {1: None}, 1: {2: None}})
    jobs = {1: ("replica-0", "fraud"), 2: ("replica-1", "fraud")}
    watch = UtilizationWatch(source, CONFIG, clock=clock.now, jobs=lambda: jobs)
    alerts = [a for step in run(watch, clock, STEPS_TO_FILL + 1) for a in step]
    route = [a for a in alerts if a.kind == "route"]
    assert [(a.name, round(a.mean, 6)) for a in route] == [("fraud", 0.4)]


def test_a_job_that_leaves_and_returns_starts_a_fresh_window(clock: ManualClock) -> None:
    source = FakeSource({0: 0.1}, processes={0: {7: None}})
    watch = UtilizationWatch(source, CONFIG, clock=clock.now, jobs=lambda: {7: ("j", None)})
    run(watch, clock, STEPS_TO_FILL - 1)
    source.set_processes(0, {})
    run(watch, clock, 1)
    source.set_processes(0, {7: None})
    jobs_alerts = [a for s in run(watch, clock, STEPS_TO_FILL) for a in s if a.kind == "job"]
    assert jobs_alerts == []
    assert [a.kind for a in watch.sample() if a.kind == "job"] == ["job"]


def test_gauges_carry_the_right_labels_and_values(clock: ManualClock) -> None:
    registry = CollectorRegistry()
    source = FakeSource(
        {0: 0.25, 1: 0.75},
        processes={0: {10: 3 * 2**30}, 1: {20: 2**30}},
        engines={1: {"tensor": 0.5, "sm": 0.7}},
        memory_total=80 * 2**30,
    )
    jobs = {10: ("idle-job", "fraud"), 20: ("busy-job", "fraud")}
    watch = UtilizationWatch(source, CONFIG, clock=clock.now, registry=registry, jobs=lambda: jobs)
    watch.sample()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    dev1 = {"device": "1", "uuid": "GPU-fake-1"}
    assert value("keel_accelerator_utilization", device="0", uuid="GPU-fake-0") == 0.25
    assert value("keel_accelerator_utilization", **dev1) == 0.75
    assert value("keel_accelerator_memory_used_bytes", device="0", uuid="GPU-fake-0") == 3 * 2**30
    assert value("keel_accelerator_memory_total_bytes", **dev1) == 80 * 2**30
    assert value("keel_accelerator_engine_activity", **dev1, engine="tensor") == 0.5
    assert value("keel_accelerator_engine_activity", **dev1, engine="sm") == 0.7
    # Device 0 reports no engine activity: no series rather than a made-up zero.
    assert (
        value("keel_accelerator_engine_activity", device="0", uuid="GPU-fake-0", engine="sm")
        is None
    )
    assert value("keel_job_accelerator_utilization", job="idle-job") == 0.25
    assert value("keel_job_accelerator_utilization", job="busy-job") == 0.75
    assert value("keel_route_accelerator_utilization", route="fraud") == pytest.approx(0.5)

    jobs.pop(10)
    watch.sample()
    assert value("keel_job_accelerator_utilization", job="idle-job") is None
    assert value("keel_job_accelerator_utilization", job="busy-job") == 0.75
    assert value("keel_route_accelerator_utilization", route="fraud") == 0.75


@pytest.fixture
def log(tmp_path) -> Iterator[Log]:
    opened = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    yield opened
    opened.close()


def test_alerts_land_on_the_log_and_read_back(clock: ManualClock, log: Log) -> None:
    assert read_alerts(log) == []
    watch = UtilizationWatch(
        FakeSource({0: 0.1, 1: 0.2}),
        CONFIG,
        clock=clock.now,
        on_alert=lambda a: publish_alerts(log, [a]),
    )
    raised = [a for s in run(watch, clock, STEPS_TO_FILL + 1) for a in s]
    publish_alerts(log, [])  # nothing to append is no error
    assert len(raised) == 2
    back = read_alerts(log)
    assert back == raised
    assert log.topic(UTILIZATION.name) == UTILIZATION
    assert log.end_offsets(UTILIZATION.name) == [2]


def test_the_watch_samples_in_a_loop_until_stopped(clock: ManualClock) -> None:
    stop = threading.Event()
    calls = []

    class Once(FakeSource):
        def devices(self):  # stop after the first sample, so the loop never waits
            calls.append(1)
            stop.set()
            return super().devices()

    watch = UtilizationWatch(Once({0: 0.5}), CONFIG, clock=clock.now)
    watch.run(stop)
    assert calls == [1]
    assert watch.summary().series[0].current == 0.5


def test_summary_lists_devices_with_their_mean(clock: ManualClock) -> None:
    watch = UtilizationWatch(FakeSource({0: [0.2, 0.4]}), CONFIG, clock=clock.now)
    run(watch, clock, 2)
    summary = watch.summary()
    assert summary.state == "watching"
    assert summary.series[0].current == 0.4
    assert summary.series[0].mean == pytest.approx(0.3)
    assert str(summary) == "device 0 (Fake GPU): now 40%, mean 30% (window filling)"


def test_the_latest_devices_are_kept_and_close_lets_the_source_go(clock: ManualClock) -> None:
    class Closing(FakeSource):
        closed = 0

        def close(self) -> None:
            self.closed += 1

    source = Closing({0: [0.2, 0.4], 1: 0.9}, processes={1: {5: 2**30}})
    watch = UtilizationWatch(source, CONFIG, clock=clock.now)
    assert watch.devices == []
    run(watch, clock, 2)
    assert [(d.index, d.utilization, d.memory_used) for d in watch.devices] == [
        (0, 0.4, 0),
        (1, 0.9, 2**30),
    ]
    watch.close()
    assert source.closed == 1
    UtilizationWatch(None, CONFIG, reason="none here").close()  # nothing to let go


def test_this_machine_reports_its_devices_or_no_accelerator() -> None:
    watch = open_watch(CONFIG, registry=CollectorRegistry())
    if nvidia_device_count() > 0:
        assert watch.state == "watching"
        assert isinstance(watch.source, NvmlSource)
        devices = watch.source.devices()
        assert devices and all(d.memory_total and d.memory_total > 0 for d in devices)
        assert all(d.utilization is None or 0 <= d.utilization <= 1 for d in devices)
        assert watch.sample() == []  # a first sample never fills a window
        watch.source.close()
    else:
        assert watch.state == "no accelerator"
        assert watch.reason and ("NVML" in watch.reason or "driver" in watch.reason)
        assert watch.sample() == []
        assert str(watch.summary()) == f"no accelerator: {watch.reason}"
        with pytest.raises(NoAcceleratorError, match="no accelerator: ") as err:
            NvmlSource.open()
        assert isinstance(err.value, UnavailableError)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"threshold": 0}, id="zero-threshold"),
        pytest.param({"threshold": 1.5}, id="threshold-over-one"),
        pytest.param({"window_s": 10, "interval_s": 30}, id="interval-over-window"),
        pytest.param({"interval_s": 0}, id="zero-interval"),
    ],
)
def test_bad_config_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="utilization"):
        msgspec.convert({"utilization": fields}, JobsConfig)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValidationError, match="must be a UtilizationConfig"):
        UtilizationWatch(FakeSource({0: 0.5}), {"threshold": 0.5})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="clock must be callable"):
        UtilizationWatch(FakeSource({0: 0.5}), CONFIG, clock=5.0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="device 0's utilization series"):
        FakeSource({0: [0.5, 50]})
    with pytest.raises(ValidationError, match="unknown engine 'tensr'"):
        FakeSource({0: 0.5}, engines={0: {"tensr": 0.5}})


class FakeNvml:
    """pynvml's own structures, constants and errors, with the driver's answers made up:
    NvmlSource's reading of NVML runs here without a GPU. Device 0 is a Hopper with GPM;
    device 1 supports neither utilization rates nor GPM."""

    def __init__(self) -> None:
        import pynvml

        self._pynvml = pynvml
        self.freed = 0
        self.shut = False
        self.lost = False
        self.gpm_fails = False

    def __getattr__(self, name: str):
        return getattr(self._pynvml, name)

    def _error(self, code: int) -> Exception:
        return self._pynvml.NVMLError(code)

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}"

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H200"  # older bindings answer bytes

    def nvmlDeviceGetUtilizationRates(self, h: int):
        if self.lost:
            raise self._error(self._pynvml.NVML_ERROR_GPU_IS_LOST)
        if h == 1:
            raise self._error(self._pynvml.NVML_ERROR_NOT_SUPPORTED)
        rates = self._pynvml.c_nvmlUtilization_t()
        rates.gpu, rates.memory = 37, 12
        return rates

    def nvmlDeviceGetMemoryInfo(self, h: int):
        memory = self._pynvml.c_nvmlMemory_t()
        memory.used, memory.total = 2**30, 141 * 2**30
        return memory

    def nvmlDeviceGetComputeRunningProcesses(self, h: int):
        from types import SimpleNamespace

        return [SimpleNamespace(pid=4242, usedGpuMemory=2**30)] if h == 0 else []

    def nvmlGpmQueryDeviceSupport(self, h: int):
        from types import SimpleNamespace

        return SimpleNamespace(isSupportedDevice=int(h == 0))

    def nvmlGpmSampleAlloc(self):
        return self._pynvml.c_nvmlGpmSample_t()

    def nvmlGpmSampleGet(self, h: int, sample):
        return sample

    def nvmlGpmSampleFree(self, sample) -> None:
        self.freed += 1

    def nvmlGpmMetricsGet(self, request):
        p = self._pynvml
        if self.gpm_fails:
            raise self._error(p.NVML_ERROR_UNKNOWN)
        assert request.version == p.NVML_GPM_METRICS_GET_VERSION
        answers = {p.NVML_GPM_METRIC_SM_UTIL: 55.0, p.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 20.0}
        for k in range(request.numMetrics):
            m = request.metrics[k]
            if m.metricId in answers:
                m.nvmlReturn, m.value = p.NVML_SUCCESS, answers[m.metricId]
            else:
                m.nvmlReturn = p.NVML_ERROR_NOT_SUPPORTED
        return request

    def nvmlShutdown(self) -> None:
        self.shut = True


def test_nvml_source_reads_each_field_and_leaves_unsupported_ones_none() -> None:
    nvml = FakeNvml()
    source = NvmlSource(nvml, [0, 1])
    hopper, older = source.devices()
    assert (hopper.index, hopper.uuid, hopper.name) == (0, "GPU-0", "NVIDIA H200")
    assert (hopper.utilization, hopper.memory_utilization) == (0.37, 0.12)
    assert (hopper.memory_used, hopper.memory_total) == (2**30, 141 * 2**30)
    assert hopper.engines() == {"sm": 0.55, "tensor": 0.2}
    assert hopper.sm_occupancy is None and hopper.dram_activity is None
    assert older.utilization is None and older.engines() == {}
    assert older.memory_total == 141 * 2**30
    assert source.processes(0) == {4242: 2**30}
    assert source.processes(1) == {}
    with pytest.raises(ValidationError, match=r"device index must be within 0\.\.1"):
        source.processes(2)

    nvml.gpm_fails = True  # GPM stops: engine activity goes None, the rest carries on
    assert source.devices()[0].engines() == {}
    assert nvml.freed == 2
    nvml.lost = True
    with pytest.raises(UnavailableError, match="NVML could not read device 0"):
        source.devices()
    source.close()
    assert nvml.shut and nvml.freed == 2


def test_nvml_with_no_devices_is_no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    pynvml = pytest.importorskip("pynvml")
    shut = []
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: shut.append(True))
    with pytest.raises(NoAcceleratorError, match="found no devices") as err:
        NvmlSource.open()
    assert err.value.reason == "NVML started but found no devices"
    assert shut == [True]
