"""Energy meters (mlperf_jax.energy) against a fake powercap tree and a fake pynvml, and the
energy a real tiny run records in results.json."""
import json
import os
import sys
import time
import types

import pytest

from mlperf_jax import energy as E
from mlperf_jax import results as R

RANGE = 10 ** 9  # max_energy_range_uj of the fake packages: 1000 J


def _zone(root, name, label, uj, rng=RANGE):
    d = root / name
    d.mkdir()
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{rng}\n")
    return d


def _set(zone_dir, uj):
    """Atomic, as the kernel's counter is: a poll never sees a half-written file."""
    tmp = zone_dir / "energy_uj.tmp"
    tmp.write_text(f"{uj}\n")
    os.replace(tmp, zone_dir / "energy_uj")


def _get(zone_dir):
    return int((zone_dir / "energy_uj").read_text())


@pytest.fixture
def powercap(tmp_path):
    """Two packages (package 0 close to its wrap), and the zones that must not be counted: a core
    subzone, psys, the MMIO view of package 0, and the control-type directory."""
    root = tmp_path / "powercap"
    root.mkdir()
    (root / "intel-rapl").mkdir()
    p0 = _zone(root, "intel-rapl:0", "package-0", RANGE - 2_000_000)
    p1 = _zone(root, "intel-rapl:1", "package-1", 5_000_000)
    others = [_zone(root, "intel-rapl:0:0", "core", 100),
              _zone(root, "intel-rapl:2", "psys", 100),
              _zone(root, "intel-rapl-mmio:0", "package-0", 100)]
    return root, p0, p1, others


def test_rapl_reads_packages_only_and_handles_the_wrap(powercap):
    root, p0, p1, others = powercap
    m = E.rapl_meter(str(root))
    assert m.measured and len(m.zones) == 2 and "2 package" in m.source
    s = m.start()
    _set(p0, 3_000_000)                  # wrapped: (RANGE - (RANGE - 2e6)) + 3e6 = 5 J
    _set(p1, 12_000_000)                 # 7 J
    for z in others:
        _set(z, 10 ** 8)                 # 100 J each, never counted
    s.poll()
    _set(p0, 900_000_000)                # +897 J, then wraps again below (after a poll)
    s.poll()
    _set(p0, 1_000_000)                  # (1e9 - 9e8) + 1e6 = 101 J
    e = s.stop()
    assert e.joules == pytest.approx(5 + 7 + 897 + 101, abs=1e-6)
    assert e.seconds > 0 and e.watts == pytest.approx(e.joules / e.seconds)


def test_pause_leaves_the_untimed_stretch_out(powercap):
    root, p0, p1, _ = powercap
    s = E.rapl_meter(str(root)).start()
    _set(p1, _get(p1) + 100_000_000)     # 100 J while timed
    s.pause()
    _set(p1, _get(p1) + 50_000_000)      # 50 J during an untimed eval
    s.resume()
    _set(p1, _get(p1) + 30_000_000)      # 30 J
    assert s.stop().joules == pytest.approx(130, abs=1e-6)


def test_rapl_not_measured_with_the_reason(tmp_path, powercap, monkeypatch):
    m = E.rapl_meter(str(tmp_path / "absent"))
    assert not m.measured and "absent" in m.source and m.source.startswith("not measured")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no RAPL package zone" in E.rapl_meter(str(empty)).source
    root = powercap[0]
    real_open = open

    def root_only(path, *a, **k):  # what a non-root user meets on a patched kernel
        if str(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(E, "open", root_only, raising=False)
    m = E.rapl_meter(str(root))
    assert not m.measured and "not readable" in m.source and "CVE-2020-8694" in m.source


def test_a_counter_that_vanishes_mid_run_gives_no_number(powercap):
    root, p0, _, _ = powercap
    s = E.rapl_meter(str(root)).start()
    os.remove(p0 / "energy_uj")
    e = s.stop()
    assert e.joules is None and "counter read failed" in e.source


def test_this_machines_real_state():
    """CPU here: RAPL when /sys/class/powercap has readable package zones, else "not measured"
    with the reason (this sandbox has no /sys/class/powercap)."""
    m = E.auto_meter()
    readable = m.measured
    if not os.path.isdir("/sys/class/powercap"):
        assert not readable and "/sys/class/powercap is absent" in m.source
    if readable:
        assert isinstance(m, E.RaplMeter)
    else:
        assert m.source.startswith("not measured (")


# --------------------------------------------------------------------------------- fake pynvml
class _NVMLError(Exception):
    pass


class _NotSupported(_NVMLError):
    pass


def _fake_nvml(start_mj, watts=None, step_mj=None, supported=True):
    """GPU i's counter starts at start_mj[i] and advances by ``watts`` (in real time) or by
    ``step_mj`` per read."""
    t0 = time.perf_counter()
    reads = [0] * len(start_mj)
    calls = []

    def energy(h):
        if not supported:
            raise _NotSupported("Not Supported")
        reads[h] += 1
        if watts is not None:
            v = start_mj[h] + watts * (time.perf_counter() - t0) * 1e3
        else:
            v = start_mj[h] + step_mj * (reads[h] - 1)
        return int(v) % 2 ** 64

    return types.SimpleNamespace(
        NVMLError=_NVMLError, NVMLError_NotSupported=_NotSupported,
        nvmlInit=lambda: calls.append("init"),
        nvmlDeviceGetHandleByIndex=lambda i: calls.append(("index", i)) or i,
        nvmlDeviceGetHandleByUUID=lambda u: calls.append(("uuid", u)) or 0,
        nvmlDeviceGetName=lambda h: b"NVIDIA H200",
        nvmlDeviceGetTotalEnergyConsumption=energy, calls=calls)


def _gpus(n):
    return [types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200", local_hardware_id=i)
            for i in range(n)]


def test_nvml_sums_the_runs_gpus_and_watts_are_joules_over_time(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = _fake_nvml([10_000, 20_000], watts=250.0)  # two GPUs at 250 W each
    m = E.auto_meter(_gpus(2), nvml=nvml, process_count=1)
    assert isinstance(m, E.NvmlMeter) and "2 GPU(s) (NVIDIA H200)" in m.source
    s = m.start()
    time.sleep(0.3)
    e = s.stop()
    assert e.watts == pytest.approx(500.0, rel=0.05)
    assert e.joules == pytest.approx(500.0 * e.seconds, rel=0.05)


def test_nvml_counter_wrap_and_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    nvml = _fake_nvml([0, 0, 0, 2 ** 64 - 1_400, 0, 7], step_mj=1_000)
    m = E.auto_meter(_gpus(2), nvml=nvml, process_count=1)
    assert ("index", 3) in nvml.calls and ("index", 5) in nvml.calls
    s = m.start()
    e = s.stop()  # reads: the meter's probe, the start (GPU 3: 2**64 - 400), the stop (600)
    assert e.joules == pytest.approx(2 * 1.0)  # 1000 mJ on each GPU, GPU 3 across the wrap
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    E.auto_meter(_gpus(1), nvml=nvml, process_count=1)
    assert ("uuid", "GPU-1234") in nvml.calls
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-abcd")
    m = E.auto_meter(_gpus(1), nvml=nvml, process_count=1)
    assert not m.measured and "MIG" in m.source


def test_nvml_unsupported_or_missing_is_not_measured(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    m = E.auto_meter(_gpus(1), nvml=_fake_nvml([0], step_mj=1, supported=False), process_count=1)
    assert not m.measured and "no total-energy counter" in m.source
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    m = E.auto_meter(_gpus(1), process_count=1)
    assert not m.measured and "nvidia-ml-py" in m.source
    s = m.start()
    e = s.stop()
    assert e.joules is None and e.watts is None


def test_other_platforms_say_why():
    tpu = [types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")]
    assert E.auto_meter(tpu, process_count=1).source == \
        "not measured (no energy counter read for tpu devices)"
    cpu = [types.SimpleNamespace(platform="cpu", device_kind="cpu")]
    assert "several processes" in E.auto_meter(cpu, process_count=2).source


# ------------------------------------------------------------------------- through a real run
def _ncf(num_epochs):
    from mlperf_jax.configs import ncf
    c = ncf.get_config("tiny")
    c.num_epochs = num_epochs
    return c


class _Killed(Exception):
    pass


def _stepper(zones, per_step_uj, kill_at=None):
    """Each train step adds per_step_uj to every fake package: the oracle is steps x that."""
    from mlperf_jax import train as T
    state = {"killed": False}

    def on_step(run, step):
        if kill_at is not None and step == kill_at and not state["killed"]:
            state["killed"] = True
            raise _Killed("killed")
        for z in zones:
            _set(z, (_get(z) + per_step_uj) % RANGE)
    return T.Callbacks(on_step=on_step)


def test_run_records_energy_in_results_json_and_table(tmp_path, powercap, monkeypatch):
    from mlperf_jax import train as T
    root, p0, p1, _ = powercap
    monkeypatch.setattr(E, "POWERCAP_ROOT", str(root))
    config = _ncf(1)
    gbs = int(config.global_batch_size)
    res = T.train("ncf", config, T.RunOptions(workdir=str(tmp_path / "w"), num_runs=1,
                                               checkpoint=False, progress=False,
                                               config_name="tiny"),
                  print_fn=lambda s: None, callbacks=_stepper([p0, p1], 1_000_000))
    r = res.runs[0]
    steps = r.samples // gbs
    assert steps > 100
    # 1 J per step on each of the 2 packages (package 0 wrapped), nothing from the other zones
    assert r.energy_j == pytest.approx(2.0 * steps, abs=1e-6)
    assert r.avg_power_w == pytest.approx(r.energy_j / r.time_to_train_s, rel=0.02)
    assert "RAPL package counters, 2 package(s)" in r.energy_source
    assert r.device_count == 1 and r.device_kind == "cpu"
    saved = json.load(open(res.results_path))
    run = saved["runs"][0]
    assert run["energy_j"] == pytest.approx(2.0 * steps, abs=1e-6)
    assert run["avg_power_w"] == pytest.approx(run["energy_j"] / run["time_to_train_s"], rel=0.02)
    assert run["device_count"] == 1 and run["device_kind"] == "cpu"
    assert saved["mean_per_chip_throughput"] == pytest.approx(r.throughput)  # one device
    assert R.RunResult(**run) == r  # results.json's runs load back
    assert saved["energy"]["mean_j"] == pytest.approx(2.0 * steps, abs=1e-6)
    assert saved["devices"] == [{"count": 1, "kind": "cpu"}]
    assert "energy (J)" in res.table and "avg W" in res.table
    assert f"{2.0 * steps:,.0f}" in res.table
    assert max(len(line) for line in res.table.splitlines()) <= 120


def test_resumed_run_adds_the_energy_of_both_parts(tmp_path, powercap, monkeypatch):
    """Killed at step 41 after a checkpoint at step 40, then resumed: the first part counts up to
    its checkpoint (steps 1..39 had run their hook then), the second from the resume on."""
    from mlperf_jax import train as T
    root, p0, p1, _ = powercap
    monkeypatch.setattr(E, "POWERCAP_ROOT", str(root))
    config = _ncf(1)
    opts = T.RunOptions(workdir=str(tmp_path / "w"), num_runs=1, checkpoint_every_steps=40,
                        progress=False, config_name="tiny")
    cb = _stepper([p0, p1], 1_000_000, kill_at=41)
    with pytest.raises(_Killed):
        T.train("ncf", config, opts, print_fn=lambda s: None, callbacks=cb)
    res = T.train("ncf", config, opts, print_fn=lambda s: None, callbacks=cb)
    r = res.runs[0]
    steps = r.samples // int(config.global_batch_size)
    assert r.resumed == 1 and steps > 41
    assert r.energy_j == pytest.approx(2.0 * (steps - 1), abs=1e-6)
    assert r.energy_source.startswith("RAPL")
