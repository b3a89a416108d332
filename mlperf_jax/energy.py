"""Energy of the timed region, read from counters the platform already keeps.

A run reads an energy counter at ``run_start`` and at ``run_stop`` (and in between, for counters
that wrap): NVML's total-energy counter on NVIDIA GPUs, RAPL's package counters on Linux CPUs,
otherwise nothing, with the reason said. These are device and socket counters, not the wall power
that MLPerf's power rules measure (TP ``power_measurement.adoc``: at the PSU, >= 1 Hz), so the
numbers are labelled as what they are.

- NVML (``pynvml``, PyPI ``nvidia-ml-py``): ``nvmlDeviceGetTotalEnergyConsumption`` is the energy
  a GPU used since the driver was loaded, in mJ, as an unsigned 64-bit count (Volta and newer;
  older GPUs answer NOT_SUPPORTED). Summed over the GPUs this process runs on.
- RAPL (``/sys/class/powercap/intel-rapl:N/energy_uj``, in uJ): counts up to
  ``max_energy_range_uj`` and starts again at 0 (a few hundred kJ: minutes at full load), so a
  session polls it in a background thread and adds the wrapped differences. Only package zones
  (``intel-rapl:N`` named ``package-N``) are read: their subzones (``intel-rapl:N:M``: core,
  uncore, dram) are parts of them, ``psys`` covers the packages too, and ``intel-rapl-mmio:N`` is
  the same package read another way, so counting those would count energy twice. The counters
  are root-only on kernels patched for CVE-2020-8694; then energy is "not measured".

Everything that touches the outside (the powercap root, the NVML module, the devices) can be
passed in, so that tests point a meter at a fake tree and a fake NVML.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
import time
from typing import Any, Sequence

POWERCAP_ROOT = "/sys/class/powercap"
NVML_WRAP = 2 ** 64        # nvmlDeviceGetTotalEnergyConsumption: unsigned long long, mJ
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")


class Meter:
    """A set of energy counters read together. ``read()`` gives the raw values,
    ``joules(a, b)`` the energy between two reads (at most one wrap per counter between them),
    ``poll_s`` how often a session must read in between (``None``: never)."""

    measured: bool = True
    source: str = ""
    poll_s: float | None = None

    def read(self) -> tuple[int, ...]:
        raise NotImplementedError

    def joules(self, a: Sequence[int], b: Sequence[int]) -> float:
        raise NotImplementedError

    def start(self) -> "Session":
        """Begin metering now (the caller's ``run_start``)."""
        return Session(self)


class NotMeasured(Meter):
    """No counter: ``source`` says why (shown as "energy: not measured (why)")."""

    measured = False

    def __init__(self, reason: str):
        self.reason = reason
        self.source = f"not measured ({reason})"

    def read(self) -> tuple[int, ...]:
        return ()

    def joules(self, a: Sequence[int], b: Sequence[int]) -> float:
        return 0.0


class RaplMeter(Meter):
    """RAPL package counters under a powercap root (see the module note)."""

    def __init__(self, zones: Sequence[tuple[str, int]], *, poll_s: float = 10.0):
        self.zones = list(zones)  # (energy_uj path, max_energy_range_uj)
        self.poll_s = poll_s
        self.source = f"RAPL package counters, {len(self.zones)} package(s)"

    def read(self) -> tuple[int, ...]:
        out = []
        for path, _ in self.zones:
            with open(path) as f:
                out.append(int(f.read().strip()))
        return tuple(out)

    def joules(self, a: Sequence[int], b: Sequence[int]) -> float:
        uj = 0
        for (_, wrap), x, y in zip(self.zones, a, b):
            uj += y - x if y >= x else y - x + wrap
        return uj / 1e6


class NvmlMeter(Meter):
    """NVML total-energy counters of some GPUs (``handles``), through the module ``nvml``."""

    def __init__(self, nvml: Any, handles: Sequence[Any], names: Sequence[str]):
        self.nvml, self.handles = nvml, list(handles)
        kinds = sorted(set(names))
        self.source = (f"NVML total energy, {len(self.handles)} GPU(s)"
                       + (f" ({', '.join(kinds)})" if kinds else ""))

    def read(self) -> tuple[int, ...]:
        return tuple(int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles)

    def joules(self, a: Sequence[int], b: Sequence[int]) -> float:
        return sum((y - x) % NVML_WRAP for x, y in zip(a, b)) / 1e3


@dataclasses.dataclass
class Energy:
    """What a session measured: ``joules`` is ``None`` when it is not known."""

    joules: float | None
    seconds: float
    source: str

    @property
    def watts(self) -> float | None:
        if self.joules is None or self.seconds <= 0:
            return None
        return self.joules / self.seconds


class Session:
    """Energy over the active part of a run: ``pause()``/``resume()`` leave untimed stretches out,
    as the run's clock does. A counter that fails mid-run makes the result "not measured"."""

    def __init__(self, meter: Meter):
        self.meter = meter
        self._lock = threading.Lock()
        self._joules = 0.0
        self._seconds = 0.0
        self._error = ""
        self._active = False
        self._last: tuple[int, ...] = ()
        self._t_last = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.resume()
        if meter.measured and meter.poll_s:
            self._thread = threading.Thread(target=self._poll_loop, daemon=True,
                                            name="energy-poll")
            self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.meter.poll_s):
            self.poll()

    def _read(self) -> tuple[int, ...] | None:
        try:
            return self.meter.read()
        except Exception as e:  # a counter that stops answering: say so, never guess
            self._error = self._error or f"counter read failed: {type(e).__name__}: {e}"
            return None

    def poll(self) -> None:
        """Read the counters and add the energy since the last read (while active)."""
        with self._lock:
            if not self._active or self._error:
                return
            now, cur = time.perf_counter(), self._read()
            if cur is None:
                return
            self._joules += self.meter.joules(self._last, cur)
            self._seconds += now - self._t_last
            self._last, self._t_last = cur, now

    def pause(self) -> None:
        self.poll()
        with self._lock:
            self._active = False

    def resume(self) -> None:
        with self._lock:
            if self._active or self._error:
                return
            cur = self._read()
            if cur is None:
                return
            self._last, self._t_last, self._active = cur, time.perf_counter(), True

    def snapshot(self) -> Energy:
        """The energy so far (for a checkpoint), without stopping."""
        self.poll()
        return self._result()

    def close(self) -> None:
        """Stop the polling thread (idempotent; what was measured stays)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def stop(self) -> Energy:
        """The last read (the caller's ``run_stop``) and the total."""
        self.pause()
        self.close()
        return self._result()

    def _result(self) -> Energy:
        if not self.meter.measured:
            return Energy(None, self._seconds, self.meter.source)
        if self._error:
            return Energy(None, self._seconds, f"not measured ({self.meter.source}: "
                                               f"{self._error})")
        return Energy(self._joules, self._seconds, self.meter.source)


# ------------------------------------------------------------------------------ choosing a meter
def rapl_meter(root: str | None = None, *, poll_s: float = 10.0) -> Meter:
    """The RAPL package zones under ``root`` (default ``POWERCAP_ROOT``), if readable."""
    root = POWERCAP_ROOT if root is None else root
    if not os.path.isdir(root):
        return NotMeasured(f"{root} is absent: no RAPL powercap driver here")
    zones = []
    for name in sorted(os.listdir(root)):
        zdir = os.path.join(root, name)
        if not _PACKAGE_ZONE.match(name):
            continue
        try:
            with open(os.path.join(zdir, "name")) as f:
                if not f.read().strip().startswith("package"):
                    continue  # psys: the whole platform, packages included
            with open(os.path.join(zdir, "max_energy_range_uj")) as f:
                wrap = int(f.read().strip())
            with open(os.path.join(zdir, "energy_uj")) as f:
                int(f.read().strip())
        except PermissionError:
            return NotMeasured(f"{zdir}/energy_uj is not readable by this user (root only on "
                               "kernels patched for CVE-2020-8694)")
        except (OSError, ValueError) as e:
            return NotMeasured(f"{zdir} cannot be read: {e}")
        zones.append((os.path.join(zdir, "energy_uj"), wrap))
    if not zones:
        return NotMeasured(f"{root} has no RAPL package zone (intel-rapl:N named package-N)")
    return RaplMeter(zones, poll_s=poll_s)


def _nvml_handle(nvml: Any, device: Any) -> Any:
    """The NVML handle of a JAX GPU device: by PCI bus id when JAX gives one, else through
    CUDA_VISIBLE_DEVICES (indices or UUIDs), else by the CUDA ordinal."""
    bus = getattr(device, "pci_bus_id", None)
    if isinstance(bus, str) and bus:
        return nvml.nvmlDeviceGetHandleByPciBusId(bus)
    ordinal = int(getattr(device, "local_hardware_id", None) or 0)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    if visible:
        entry = visible[ordinal]
        if entry.startswith("MIG-"):
            raise ValueError("a MIG instance has no energy counter of its own")
        if not entry.isdigit():
            return nvml.nvmlDeviceGetHandleByUUID(entry)
        ordinal = int(entry)
    return nvml.nvmlDeviceGetHandleByIndex(ordinal)


def nvml_meter(devices: Sequence[Any], nvml: Any = None) -> Meter:
    """The NVML energy counters of ``devices`` (JAX GPU devices), if NVML has them."""
    if nvml is None:
        try:
            import pynvml as nvml  # PyPI: nvidia-ml-py
        except ImportError:
            return NotMeasured("pynvml is not installed: pip install nvidia-ml-py")
    try:
        nvml.nvmlInit()
        handles = [_nvml_handle(nvml, d) for d in devices]
        names = []
        for h in handles:
            name = nvml.nvmlDeviceGetName(h)
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    except Exception as e:
        return NotMeasured(f"NVML: {type(e).__name__}: {e}")
    meter = NvmlMeter(nvml, handles, names)
    try:
        meter.read()
    except Exception as e:  # NVMLError_NotSupported on GPUs older than Volta
        return NotMeasured(f"NVML has no total-energy counter for {', '.join(sorted(set(names)))}"
                           f" ({type(e).__name__}: {e})")
    return meter


def auto_meter(devices: Sequence[Any] | None = None, *, powercap_root: str | None = None,
               nvml: Any = None, process_count: int | None = None) -> Meter:
    """The meter for the devices this process computes on (default ``jax.local_devices()``):
    NVML for NVIDIA GPUs, RAPL for CPUs, else "not measured" with the reason."""
    if devices is None or process_count is None:
        import jax
        devices = jax.local_devices() if devices is None else devices
        process_count = jax.process_count() if process_count is None else process_count
    if not devices:
        return NotMeasured("no devices")
    platform = str(devices[0].platform).lower()
    if platform in ("gpu", "cuda"):
        vendor = str(getattr(devices[0], "device_kind", ""))
        if "amd" in vendor.lower() or "radeon" in vendor.lower() or "instinct" in vendor.lower():
            return NotMeasured(f"no energy counter read for {vendor} GPUs")
        return nvml_meter(devices, nvml)
    if platform == "cpu":
        if process_count > 1:
            return NotMeasured("RAPL counts a whole host; with several processes it could count "
                               "one host more than once")
        return rapl_meter(powercap_root)
    return NotMeasured(f"no energy counter read for {platform} devices")


def total_over_processes(energy: Energy) -> Energy:
    """The sum over all processes of a multi-process run (each meters its own devices); unknown
    if any process could not measure. A collective: every process must call it."""
    import jax
    if jax.process_count() == 1:
        return energy
    import numpy as np
    from jax.experimental import multihost_utils
    mine = np.array([math.nan if energy.joules is None else energy.joules, energy.seconds])
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 2)
    if np.isnan(every[:, 0]).any():
        return Energy(None, energy.seconds, energy.source if energy.joules is None else
                      "not measured (some processes could not read an energy counter)")
    return Energy(float(every[:, 0].sum()), float(every[:, 1].max()),
                  f"{energy.source}, summed over {jax.process_count()} processes")
