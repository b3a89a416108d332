"""The training system description (``<org>/systems/<system>.json``), as far as this machine
can tell.

The fields are the ones mlperf-logging's ``system_desc_checker`` requires of a training system
(its ``required_fields``); the summarizer reads ``number_of_nodes``, ``host_processors_per_node``
and ``accelerators_per_node`` as numbers. What JAX and the host report is filled in by the
inference side's detector (``mlperf_jax.inference.system_desc.detect``: accelerators from
``jax.local_devices()``, nodes from ``jax.process_count()``, the CPU from /proc/cpuinfo, memory,
OS, framework versions); everything else is ``UNKNOWN`` and named, never guessed.

The runs may have been made elsewhere: their logs name the platform (``submission_platform``,
``<device count>x<device kind>``). When it is not this machine's, only what the log says is kept
(accelerator kind and total count) and every host field is ``UNKNOWN``.
"""
from __future__ import annotations

import re
from typing import Any

from mlperf_jax.inference import system_desc as _detect

UNKNOWN = _detect.UNKNOWN
sanitize = _detect.sanitize

# mlperf_logging system_desc_checker.check_system_desc, required_fields (training, every ruleset)
REQUIRED_FIELDS = (
    "submitter", "division", "status", "system_name", "number_of_nodes", "host_processors_per_node",
    "host_processor_model_name", "host_processor_core_count", "host_processor_vcpu_count",
    "host_processor_frequency", "host_processor_caches", "host_processor_interconnect",
    "host_memory_capacity", "host_storage_type", "host_storage_capacity", "host_networking",
    "host_networking_topology", "host_memory_configuration", "accelerators_per_node",
    "accelerator_model_name", "accelerator_host_interconnect", "accelerator_frequency",
    "accelerator_on-chip_memories", "accelerator_memory_configuration",
    "accelerator_memory_capacity", "accelerator_interconnect", "accelerator_interconnect_topology",
    "cooling", "hw_notes", "framework", "other_software_stack", "operating_system", "sw_notes",
)
_MACHINE_FIELDS = tuple(k for k in REQUIRED_FIELDS if k.startswith(("host_", "accelerator"))) + (
    "number_of_nodes", "operating_system")

TINY_LABEL = "TINY-TRACK-not-an-MLPerf-result"
TINY_NOTE = ("TINY TRACK on synthetic data: NOT an MLPerf result (the whole time-to-train path "
             "run on a small learnable task)")

# the log's submission_status -> the status words of the v0.6/v0.7 result trees
STATUS = {"onprem": "available", "cloud": "available", "preview": "preview", "research": "research"}


def this_platform() -> str:
    """This machine's ``submission_platform`` as the training driver writes it."""
    from mlperf_jax.driver.loop import platform_name
    return platform_name()


def describe(platform: str, *, submitter: str, division: str, status: str, system_name: str,
             tiny: bool) -> tuple[dict[str, Any], list[str]]:
    """``(description, fields nobody here can tell)`` of the system the runs on ``platform`` ran
    on. ``status`` is the log's ``submission_status``."""
    here = this_platform()
    found = _detect.detect(system_name, submitter, division)
    d: dict[str, Any] = {k: found.get(k, UNKNOWN) for k in REQUIRED_FIELDS}
    d["status"] = STATUS.get(status, status or UNKNOWN)
    if platform == here:
        hw = (f"{found.get('hw_notes', '')} The host fields describe the machine that wrote this "
              f"tree, which reports the platform the logs name ({platform}).")
    else:
        d.update({k: UNKNOWN for k in _MACHINE_FIELDS})
        m = re.fullmatch(r"(\d+)x(.+)", platform)
        if m and m.group(2).lower() == "cpu":
            d.update(accelerators_per_node="0", accelerator_model_name="N/A")
        elif m:
            d["accelerator_model_name"] = m.group(2).replace("_", " ")
        how = "in total, over all nodes" if m else "as given"
        hw = (f"The runs report platform {platform!r} ({how}), not this machine's ({here}): the "
              "machine fields are left for the submitter.")
    d["hw_notes"] = (TINY_NOTE + ". " if tiny else "") + hw.strip()
    d["sw_notes"] = ((TINY_NOTE + ". " if tiny else "")
                     + "Time-to-train logs written by mlperf_jax (python -m mlperf_jax.train).")
    unknown = [k for k in REQUIRED_FIELDS if d[k] == UNKNOWN]
    # strings throughout, as in the published trees: system_desc_checker joins some fields as text
    return {k: str(v) for k, v in d.items()}, unknown


def system_name(platform: str, *, base: str | None = None, tiny: bool = False) -> str:
    """``base`` (default: the platform, e.g. ``1xcpu``) with the tiny-track label for tiny runs."""
    name = sanitize(base or platform) or "system"
    return f"{name}_{TINY_LABEL}" if tiny and TINY_LABEL not in name else name


__all__ = ["UNKNOWN", "REQUIRED_FIELDS", "TINY_LABEL", "TINY_NOTE", "describe", "system_name",
           "this_platform", "sanitize"]
