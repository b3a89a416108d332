"""The contract every benchmark implements, so that one driver can train all of them.

A benchmark is data plus pure functions (AlgoPerf's ``Workload`` idea): the driver owns the clock,
the mesh, the optimizer step, checkpoints and the MLPerf log; the benchmark says what to train, how
to score it and when it is done.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Iterator, Mapping

import jax
import ml_collections
import numpy as np
import optax

PyTree = Any
Batch = dict[str, np.ndarray]


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a real dataset is missing; the message says where we looked and how to prepare it."""


@dataclasses.dataclass
class DataSource:
    """What the driver needs from a benchmark's input pipeline, for one host.

    ``train_epoch(epoch, skip_steps, params)`` yields this host's slice of each global batch for
    epoch ``epoch`` (numbered from 1), deterministic given the seed and the epoch so that a resumed
    run can skip ``skip_steps`` batches and see exactly what an uninterrupted run sees. ``params`` is
    the current model, for benchmarks whose data depends on it (MiniGo's self-play); others ignore it.

    ``eval_batches()`` yields this host's slice of fixed-size eval batches; padded rows carry
    ``mask == 0`` so that metrics count every real example exactly once.
    """

    num_train_samples: int
    num_eval_samples: int
    steps_per_epoch: int
    train_epoch: Callable[[int, int, PyTree], Iterator[Batch]]
    eval_batches: Callable[[], Iterator[Batch]]
    description: str = ""
    synthetic: bool = False
    #: shapes and dtypes of one *global* train / eval batch, so the driver compiles ahead of time
    #: without reading data before ``run_start``; when None it peeks at the first batch instead
    train_spec: dict[str, jax.ShapeDtypeStruct] | None = None
    eval_spec: dict[str, jax.ShapeDtypeStruct] | None = None


@dataclasses.dataclass(frozen=True)
class Target:
    """The quality target and how it is reported.

    ``value`` is compared with ``eval_metric``'s result (``>=`` when ``higher_is_better``). The
    MLPerf log's ``eval_accuracy`` is that same number, so the compliance checker's bound applies to
    it directly.
    """

    value: float
    metric: str
    higher_is_better: bool = True

    def reached(self, score: float) -> bool:
        return score >= self.value if self.higher_is_better else score <= self.value


class Benchmark(abc.ABC):
    """One MLPerf training benchmark.

    Subclasses set the class attributes and implement the abstract methods. Hyperparameters,
    targets, eval cadence and budgets live in the ``ml_collections`` config returned by
    ``get_config(variant)``; fields every config must have:

    - ``target`` (float), ``target_metric`` (str): quality target on the eval metric.
    - ``global_batch_size`` (int), ``num_epochs`` (int): the epoch budget; past it the run aborts.
    - ``eval_every_epochs`` (int) and ``eval_offset_epochs`` (int), or ``eval_every_samples`` (int > 0).
    - ``eval_batch_size`` (int), ``dtype`` ('float32' | 'bfloat16'), ``dataset`` ('synthetic' | 'tfds').
    - ``num_runs`` (int): runs in a result for this config.
    - ``division`` default ('closed' for reference configs, 'open' for tiny).
    """

    #: name on the command line (``--benchmark=NAME``)
    name: str = ""
    #: MLPerf ``submission_benchmark`` value
    mlperf_name: str = ""
    #: config variants ``get_config`` accepts; the first is the default with a data dir
    config_names: tuple[str, ...] = ("reference", "tiny")
    #: config keys a closed-division submission may change (the rest must match the reference)
    tunable_hparams: frozenset[str] = frozenset({"global_batch_size"})

    # ---------------------------------------------------------------- configs
    @abc.abstractmethod
    def get_config(self, variant: str) -> ml_collections.ConfigDict:
        """The config for ``variant`` (one of ``config_names``)."""

    def target(self, config: ml_collections.ConfigDict) -> Target:
        return Target(float(config.target), str(config.target_metric),
                      bool(config.get("higher_is_better", True)))

    # ---------------------------------------------------------------- data
    @abc.abstractmethod
    def data_source(self, config: ml_collections.ConfigDict, data_dir: str | None, *,
                    seed: int, process_index: int, process_count: int) -> DataSource:
        """This host's input pipeline. Raise ``DatasetNotFoundError`` when real data is missing."""

    # ---------------------------------------------------------------- model
    @abc.abstractmethod
    def init(self, config: ml_collections.ConfigDict, rng: jax.Array) -> tuple[PyTree, PyTree]:
        """Returns ``(params, model_state)``; ``model_state`` is e.g. BatchNorm statistics or ``{}``.

        Must be traceable (the driver runs it under ``jax.eval_shape`` and ``jit``)."""

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
        """MLLOG key -> value for every hyperparameter the ruleset wants (``opt_name``, ...).

        ``global_batch_size`` is logged by the driver."""

    # ---------------------------------------------------------------- evaluation
    @abc.abstractmethod
    def eval_step(self, config: ml_collections.ConfigDict, params: PyTree, model_state: PyTree,
                  batch: Mapping[str, jax.Array]) -> PyTree:
        """Jitted on the mesh: per-batch outputs (sums for on-device metrics, predictions for host
        metrics such as BLEU or mAP)."""

    @abc.abstractmethod
    def eval_metric(self, config: ml_collections.ConfigDict, outputs: list[PyTree]) -> float:
        """On the host: the quality metric from all ``eval_step`` outputs (as numpy)."""

    # ---------------------------------------------------------------- helpers
    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Raise ``ValueError`` with one clear sentence for out-of-range values."""
        for key in ("global_batch_size", "eval_batch_size", "num_epochs", "num_runs"):
            if key in config and int(config[key]) <= 0:
                raise ValueError(f"config.{key} must be positive, got {config[key]}")
        if config.get("dtype", "float32") not in ("float32", "bfloat16"):
            raise ValueError(f"config.dtype must be float32 or bfloat16, got {config.dtype!r}")

    def closed_division_violations(self, config: ml_collections.ConfigDict,
                                   reference: ml_collections.ConfigDict) -> list[str]:
        """Hyperparameters that differ from the reference config but are not tunable."""
        skip = set(self.tunable_hparams) | {"division", "dataset", "num_runs", "checkpoint_every_steps"}
        out = []
        for key, value in reference.items():
            if key in skip or key not in config:
                continue
            if config[key] != value:
                out.append(f"{key}={config[key]!r} (reference {value!r})")
        return out

    def fake_train_batch(self, config: ml_collections.ConfigDict, rng: np.random.Generator
                         ) -> Batch:
        """A global train batch of random but valid content (labels in range, tokens in the
        vocabulary), for throughput benchmarks that must not depend on a dataset."""
        raise NotImplementedError(f"{self.name} has no fake_train_batch")

    def throughput_units(self, config: ml_collections.ConfigDict, batch: Batch) -> tuple[str, int]:
        """What a train step's throughput is counted in, and how many of them one global batch
        holds (images for vision, tokens for translation)."""
        return "samples", int(config.global_batch_size)
