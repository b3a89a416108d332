"""The contract every benchmark implements, so that one driver can train all of them.

A benchmark is data plus pure functions (AlgoPerf's ``Workload`` idea) and holds no state: the
driver owns the clock, the mesh, the optimizer step, checkpoints and the MLPerf log; the benchmark
says what to train, how to score it and when it is done. What a metric needs from the data travels
as the data source's eval context. Configs are data, in ``mlperf_jax/configs/<name>.py``.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.util
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
import optax

from mlperf_jax import division as division_lib
from mlperf_jax.input_pipelines.source import Batch, DataSource, DatasetNotFoundError, PyTree

__all__ = ["Batch", "Benchmark", "DataSource", "DatasetNotFoundError", "Program", "PyTree",
           "Target"]


@dataclasses.dataclass(frozen=True)
class Target:
    """The quality target: one or more thresholds over the named metrics ``eval_metric`` returns
    (AlgoPerf's ``has_reached_validation_target``). Mask R-CNN: ``{"BBOX": 0.377, "SEGM": 0.339}``.
    """

    thresholds: Mapping[str, float]
    higher_is_better: bool = True

    @property
    def primary(self) -> str:
        """The metric shown first in tables and progress bars."""
        return next(iter(self.thresholds))

    def reached(self, metrics: Mapping[str, float]) -> bool:
        def ok(name: str, bound: float) -> bool:
            v = metrics.get(name)
            if v is None or not np.isfinite(v):
                return False
            return v >= bound if self.higher_is_better else v <= bound
        return all(ok(k, b) for k, b in self.thresholds.items())

    def log_value(self, metrics: Mapping[str, float]) -> float | dict[str, float]:
        """``eval_accuracy`` as the checker reads it: a float, or a dict when there are several
        thresholds (Mask R-CNN's ``{"BBOX": ..., "SEGM": ...}``)."""
        if len(self.thresholds) == 1:
            return float(metrics[self.primary])
        return {k: float(metrics[k]) for k in self.thresholds}

    def describe(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return ", ".join(f"{k} {op} {v:g}" for k, v in self.thresholds.items())


@dataclasses.dataclass(frozen=True)
class Program:
    """An extra jitted program a benchmark declares (MiniGo's self-play, a match against a fixed
    model). The driver compiles ``fn(params, model_state, *args)`` ahead of time, with the train
    state's shardings for the model and ``arg_specs`` (``jax.ShapeDtypeStruct``) for the rest, and
    hands the compiled programs to the data source's ``before_epoch`` hook."""

    fn: Callable[..., Any]
    arg_specs: tuple = ()
    #: indices of ``arg_specs`` whose leading axis is split over the mesh's data axis (MiniGo's
    #: per-game keys: each device plays its share of the games)
    sharded_args: tuple[int, ...] = ()


class Benchmark(abc.ABC):
    """One MLPerf training benchmark.

    Config fields every benchmark has (see ``mlperf_jax/configs/``): ``target`` (None: the round's
    target from ``mlperf_jax/rounds.py``; a number for the tiny track) and ``target_metric``;
    ``global_batch_size``, ``eval_batch_size``, ``num_epochs`` (the budget; past it the run
    aborts); ``eval_every_epochs`` and ``eval_offset_epochs``, or ``eval_epochs`` (an explicit
    list); ``dtype``; ``dataset`` ('synthetic' or a real source); ``num_runs``; ``division``.
    """

    #: name on the command line (``--benchmark=NAME``)
    name: str = ""
    #: MLPerf ``submission_benchmark`` value
    mlperf_name: str = ""
    #: the module holding ``get_config(variant)`` and ``VARIANTS``
    config_module: str = ""
    #: dotted config keys (or globs) a closed-division submission may change
    tunable_hparams: frozenset[str] = frozenset({"global_batch_size"})
    #: dotted config keys that switch implementations without changing the mathematics
    implementation_keys: frozenset[str] = frozenset()
    #: False when the rules leave evaluation off the clock (MiniGo v0.6+: each generation's
    #: match is stamped with the time that generation finished training): the driver stops the
    #: clock and the log's timestamps while it evaluates
    eval_timed: bool = True

    # ---------------------------------------------------------------- configs
    @property
    def config_names(self) -> tuple[str, ...]:
        """Variants ``get_config`` accepts; the first is the default when real data is given."""
        return tuple(importlib.import_module(self.config_module).VARIANTS)

    def get_config(self, variant: str) -> ml_collections.ConfigDict:
        return importlib.import_module(self.config_module).get_config(variant)

    def config_file(self) -> str:
        """Path of the config file, for ``ml_collections.config_flags``."""
        spec = importlib.util.find_spec(self.config_module)
        return spec.origin

    def target(self, config: ml_collections.ConfigDict, round: str | None = None) -> Target:
        """The config's own target (tiny track), else the round's (``mlperf_jax/rounds.py``)."""
        if config.get("target") is not None:
            return Target({str(config.target_metric): float(config.target)},
                          bool(config.get("higher_is_better", True)))
        from mlperf_jax import rounds
        return Target(dict(rounds.targets(self.name, round or rounds.default_round(self.name))),
                      bool(config.get("higher_is_better", True)))

    def eval_epochs(self, config: ml_collections.ConfigDict) -> list[int]:
        """Epochs after which the driver evaluates: ``config.eval_epochs`` when given (SSD's
        reference evaluates at fixed epochs), else every ``eval_every_epochs`` after
        ``eval_offset_epochs``; the last epoch of the budget always."""
        n = int(config.num_epochs)
        if config.get("eval_epochs"):
            epochs = sorted({int(e) for e in config.eval_epochs if 0 < int(e) <= n})
        else:
            every = int(config.get("eval_every_epochs", 1))
            offset = int(config.get("eval_offset_epochs", 0))
            epochs = [e for e in range(1, n + 1) if e > offset and (e - offset) % every == 0]
        if not epochs or epochs[-1] != n:
            epochs.append(n)
        return epochs

    def reference_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """The reference a closed-division ``config`` is compared with (MiniGo has one per board
        size: the v0.6 9x9 and the later rules' 19x19)."""
        return self.get_config("reference")

    def closed_division_violations(self, config: ml_collections.ConfigDict,
                                   reference: ml_collections.ConfigDict) -> list[str]:
        """Fixed hyperparameters that differ from the reference, as ``key=value (reference v)``."""
        return division_lib.violations(config, reference, tunable=self.tunable_hparams,
                                       implementation=self.implementation_keys)

    # ---------------------------------------------------------------- data
    def prepare_data(self, config: ml_collections.ConfigDict, data_dir: str | None) -> str | None:
        """One-time, untimed preparation (vocabularies, tokenised eval sets, caches), as the rules
        allow for reformatting; returns what it did. Runs before any run's ``init_start``."""
        return None

    @abc.abstractmethod
    def data_source(self, config: ml_collections.ConfigDict, data_dir: str | None, *,
                    seed: int, process_index: int, process_count: int) -> DataSource:
        """This host's input pipeline; reads no data (only what ``prepare_data`` wrote as
        metadata). Raise ``DatasetNotFoundError`` when the data or its preparation is missing."""

    # ---------------------------------------------------------------- model
    @abc.abstractmethod
    def init(self, config: ml_collections.ConfigDict, rng: jax.Array) -> tuple[PyTree, PyTree]:
        """``(params, model_state)``; traceable (the driver runs it under ``eval_shape`` and jit)."""

    @abc.abstractmethod
    def loss_fn(self, config: ml_collections.ConfigDict, params: PyTree, model_state: PyTree,
                batch: Mapping[str, jax.Array], rng: jax.Array
                ) -> tuple[jax.Array, tuple[PyTree, dict[str, jax.Array]]]:
        """Mean training loss over the global batch, the new model state and scalar metrics."""

    @abc.abstractmethod
    def optimizer(self, config: ml_collections.ConfigDict, steps_per_epoch: int
                  ) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """The closed-division optimizer and its learning-rate schedule."""

    @abc.abstractmethod
    def hparams_to_log(self, config: ml_collections.ConfigDict, steps_per_epoch: int
                       ) -> dict[str, Any]:
        """MLLOG key -> value (or ``(value, metadata)``) for every hyperparameter the ruleset
        wants; ``global_batch_size`` is logged by the driver."""

    def programs(self, config: ml_collections.ConfigDict) -> dict[str, Program]:
        """Extra programs to compile ahead of time with the train step (none by default)."""
        return {}

    def epoch_end_lines(self, config: ml_collections.ConfigDict, epoch: int) -> dict[str, Any]:
        """MLLOG key -> value (or ``(value, metadata)``) logged when epoch ``epoch``'s training
        ends, before ``epoch_stop`` (MiniGo: ``save_model`` of each generation)."""
        return {}

    def success_lines(self, config: ml_collections.ConfigDict, epoch: int,
                      model_time_s: float) -> dict[str, Any]:
        """Lines logged before ``run_stop`` of a run that reached its target at ``epoch``, whose
        training ended ``model_time_s`` after ``run_start`` on the log's clock (MiniGo v0.6:
        ``eval_result``)."""
        return {}

    def partition_rules(self, config: ml_collections.ConfigDict) -> tuple:
        """``(regex, PartitionSpec)`` rules for the train state's leaves (first match wins);
        unmatched leaves follow the default (replicated, or FSDP with ``--fsdp``)."""
        return ()

    def pretrained_subtree(self, config: ml_collections.ConfigDict) -> str | None:
        """The params subtree (``'/'``-path, ``''`` for all) that ``--config.pretrained=PATH``
        fills after init; None when the benchmark takes no pretrained weights."""
        return None

    def pretrained_arch(self, config: ml_collections.ConfigDict) -> str:
        """The torchvision architecture a ``.pth`` file for this benchmark must hold ('' : any
        the file says)."""
        return ""

    def conv_impl(self, config: ml_collections.ConfigDict) -> str:
        """The convolution implementation the model is built with (it names the parameters)."""
        impl = config.get("conv_impl", "xla")
        if impl == "auto":
            impl = "matmul" if jax.default_backend() == "cpu" else "xla"
        return impl

    # ---------------------------------------------------------------- evaluation
    @abc.abstractmethod
    def eval_step(self, config: ml_collections.ConfigDict, params: PyTree, model_state: PyTree,
                  batch: Mapping[str, jax.Array]) -> PyTree:
        """Jitted on the mesh: per-batch outputs (sums for on-device metrics, predictions for host
        metrics such as BLEU or mAP)."""

    @abc.abstractmethod
    def eval_metric(self, config: ml_collections.ConfigDict, outputs: list[PyTree],
                    context: Any) -> dict[str, float]:
        """On the host: named quality metrics from all ``eval_step`` outputs (numpy) and the data
        source's eval context (BLEU references, COCO annotations; None when it has none)."""

    # ---------------------------------------------------------------- helpers
    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Raise ``ValueError`` with one clear sentence for out-of-range values."""
        for key in ("global_batch_size", "eval_batch_size", "num_epochs", "num_runs"):
            if key in config and int(config[key]) <= 0:
                raise ValueError(f"config.{key} must be positive, got {config[key]}")
        if config.get("dtype", "float32") not in ("float32", "bfloat16"):
            raise ValueError(f"config.dtype must be float32 or bfloat16, got {config.dtype!r}")
        if config.get("pretrained") and self.pretrained_subtree(config) is None:
            raise ValueError(f"{self.name} takes no pretrained weights (config.pretrained)")

    def fake_train_batch(self, config: ml_collections.ConfigDict, rng: np.random.Generator
                         ) -> Batch:
        """A global train batch of random but valid content, for dataset-free throughput
        measurements."""
        raise NotImplementedError(f"{self.name} has no fake_train_batch")

    def throughput_units(self, config: ml_collections.ConfigDict, batch: Batch) -> tuple[str, int]:
        """What throughput is counted in, and how many of them one global batch holds."""
        return "samples", int(config.global_batch_size)
