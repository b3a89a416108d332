"""What a training run is told apart from the benchmark's config, and the driver's errors."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


class UserError(Exception):
    """A mistake in the command line or the environment: reported as one line, exit code 2."""


class DivergedError(Exception):
    """A non-finite loss: the run stops with status ``aborted`` and this reason."""


@dataclasses.dataclass
class RunOptions:
    """Everything about a run that is not the benchmark's config."""

    workdir: str
    data_dir: str | None = None
    num_runs: int | None = None
    seed: int = 0
    division: str | None = None
    round: str | None = None          # None: the newest round that has the benchmark
    log_format: str = "mllog"         # "mllog" (ruleset 0.7.0) or "v0.6" (ruleset 0.6.0 lines)
    fsdp: bool = False
    mesh_model: int = 1               # size of the mesh's model axis
    checkpoint: bool = True
    checkpoint_every_steps: int = 0
    log_every_steps: int = 10         # loss read back (NaN check, progress) every N steps
    resume: bool = True
    submission_org: str = "mlperf_jax"
    submission_platform: str = ""
    submission_status: str = "research"
    submission_poc_name: str = ""     # v0.6 logs only (default: the org)
    progress: bool = True
    config_name: str = ""


@dataclasses.dataclass
class Callbacks:
    """Hooks for tests and notebooks. ``on_step(run, global_step)`` runs after each train step is
    dispatched; raising from it stops the run as a killed process would (checkpoints already
    written stay)."""

    on_step: Callable[[int, int], Any] | None = None
