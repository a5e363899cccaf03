import time

import pytest

from collectors import nvml
from collectors.devices import CpuDevice, NvidiaGpu, decode_throttle_reasons, get_device
from collectors.power import (
    EnergyReading,
    NullPowerReader,
    NvmlEnergyCounter,
    NvmlPowerSampler,
    PowerReader,
    RaplReader,
    cpu_power_reader,
    gpu_power_reader,
)
from tests.fake_nvml import FakeNvml


def test_null_reader_says_unavailable():
    reader = NullPowerReader("no sensor")
    reading = reader.stop(reader.start())
    assert not reader.available
    assert reading.source == "unavailable" and reading.energy_j is None
    assert reading.power_w is None and reading.note == "no sensor"


def test_cpu_without_powercap_is_unavailable(tmp_path):
    reader = cpu_power_reader(str(tmp_path / "missing"))
    assert isinstance(reader, NullPowerReader)
    assert "does not exist" in reader.reason


def _fake_rapl(root, energy_uj, max_uj=1_000_000):
    d = root / "intel-rapl:0"
    d.mkdir(parents=True, exist_ok=True)
    (d / "energy_uj").write_text(str(energy_uj))
    (d / "max_energy_range_uj").write_text(str(max_uj))
    (root / "intel-rapl:0:0").mkdir(exist_ok=True)  # a sub-zone: must not be double counted
    return d


def test_rapl_reads_deltas_and_handles_wraparound(tmp_path):
    d = _fake_rapl(tmp_path, 999_000)
    reader = cpu_power_reader(str(tmp_path))
    assert isinstance(reader, RaplReader) and reader.domains == [str(d)]
    token = reader.start()
    (d / "energy_uj").write_text("4000")  # wrapped past 1_000_000
    reading = reader.stop(token)
    assert reading.source == "rapl"
    assert reading.energy_j == pytest.approx((1_000_000 - 999_000 + 4000) / 1e6)


def test_unreadable_rapl_is_unavailable(tmp_path):
    d = _fake_rapl(tmp_path, 10)
    # A read error of any kind (EACCES for non-root users on most kernels; here a folder,
    # which fails for root too) must mean "unavailable", never a crash or a made-up figure.
    (d / "energy_uj").unlink()
    (d / "energy_uj").mkdir()
    reader = cpu_power_reader(str(tmp_path))
    assert isinstance(reader, NullPowerReader) and "no readable RAPL" in reader.reason


def test_nvml_missing_means_unavailable_gpu_reader(monkeypatch):
    monkeypatch.setattr(nvml, "_tried", True)
    monkeypatch.setattr(nvml, "_nvml", None)
    monkeypatch.setattr(nvml, "unavailable_reason", "NVML could not start: no driver")
    reader = gpu_power_reader("h")
    assert isinstance(reader, NullPowerReader) and "no driver" in reader.reason
    with pytest.raises(ValueError, match="no NVIDIA GPU usable"):
        get_device("cuda:0")


def test_fake_nvml_gpu_info_and_energy_counter():
    nvml.set_nvml(FakeNvml(power_w=300.0))
    gpu = NvidiaGpu(0)
    assert gpu.info.model == "NVIDIA H100 80GB HBM3"
    assert gpu.info.cuda_version == "12.4" and gpu.info.power_limit_w == 700.0
    assert gpu.info.memory_bytes == 80 * 2**30 and gpu.info.kind == "gpu"
    assert gpu.state().throttle_reasons == "sw_power_cap,sw_thermal_slowdown"
    reader = gpu.power_reader()
    assert isinstance(reader, NvmlEnergyCounter)
    token = reader.start()
    time.sleep(0.3)
    reading = reader.stop(token)
    assert reading.power_w == pytest.approx(300.0, rel=0.05)
    with pytest.raises(ValueError, match="no such GPU"):
        get_device("cuda:3")


def test_fake_nvml_without_counter_falls_back_to_sampling():
    nvml.set_nvml(FakeNvml(power_w=150.0, energy_counter=False))
    reader = gpu_power_reader("handle0")
    assert isinstance(reader, NvmlPowerSampler)
    token = reader.start()
    time.sleep(0.3)
    reading = reader.stop(token)
    assert reading.source == "nvml_power_sampling"
    assert reading.power_w == pytest.approx(150.0, rel=0.02)


def test_fingerprint_is_stable_and_distinguishes_hosts():
    a, b = CpuDevice().info, CpuDevice().info
    assert a.fingerprint == b.fingerprint
    b.host = "other-host"
    assert a.fingerprint != b.fingerprint
    assert decode_throttle_reasons(0) == "none" and decode_throttle_reasons(None) is None


class _ConstantPower(PowerReader):
    """A sensor that reads a steady 100 W, so energy is exactly proportional to time."""

    source = "fake_constant"
    min_window_s = 0.2

    def start(self):
        return time.perf_counter()

    def stop(self, token):
        duration = time.perf_counter() - token
        return EnergyReading(self.source, duration, 100.0 * duration)


def test_energy_window_lasts_the_window_even_when_the_call_estimate_is_too_slow():
    # A kernel that got faster after its timing (clocks up, caches warm) must not shorten the
    # window below what the sensor needs: found on an H200, where a 4096^3 bf16 GEMM estimated
    # at 1 ms per call ran in 0.2 ms and the window ended after 0.2 s.
    from collectors.timing import PerfCounterTimer, energy_window

    calls = []
    result = energy_window(lambda: calls.append(1), PerfCounterTimer(), _ConstantPower(),
                           per_call_ms=50.0, window_s=0.3)
    assert result.window_s >= 0.3
    assert result.power_w == pytest.approx(100.0)
    assert result.energy_j_per_call == pytest.approx(100.0 * result.window_s / len(calls))
    assert result.calls == len(calls)
    # Calls that keep the device busy a tenth of the window: a duty of 0.1.
    busy_ms = 0.1 * result.window_s * 1e3 / len(calls)
    assert result.duty(busy_ms) == pytest.approx(0.1)
    assert result.duty(1e9) == 1.0


def test_energy_window_respects_the_sensors_shortest_window():
    from collectors.timing import PerfCounterTimer, energy_window

    result = energy_window(lambda: time.sleep(1e-4), PerfCounterTimer(), _ConstantPower(),
                           per_call_ms=0.1, window_s=0.0)
    assert result.window_s >= 0.2


def test_a_device_model_is_named_exactly_or_by_a_unique_part():
    from collectors.devices import matching_models

    models = ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "AMD EPYC"]
    assert matching_models("NVIDIA H200", models) == ["NVIDIA H200"]
    assert matching_models(" h100 ", models) == ["NVIDIA H100 80GB HBM3"]
    assert matching_models("nvidia", models) == ["NVIDIA H100 80GB HBM3", "NVIDIA H200"]
    assert matching_models("TPU", models) == []
    # An exact name wins over the longer names that contain it.
    assert matching_models("H200", ["H200", "H200 NVL"]) == ["H200"]
