"""ResNet-50 v1.5 on ImageNet: MLPerf image classification (``submission_benchmark`` "resnet").

Configs: ``mlperf_jax/configs/resnet50.py`` (``reference``, the LARS convergence points,
``sgd_256``, and ``tiny``: a small ResNet on the synthetic shapes task).
"""
from __future__ import annotations

import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mlperf_jax.benchmarks.base import Benchmark, DataSource
from mlperf_jax.input_pipelines.preprocessing import normalize

IMAGENET_TRAIN = 1281167
IMAGENET_EVAL = 50000

def _model(config: ml_collections.ConfigDict):
    from mlperf_jax.models import resnet
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    impl = BENCHMARK.conv_impl(config)
    if config.model == "resnet50":
        return resnet.ResNet50(num_classes=config.num_classes, dtype=dtype, conv_impl=impl)
    if config.model == "resnet_tiny":
        return resnet.ResNet(stage_sizes=list(config.tiny_stages), block_cls=resnet.BasicBlock,
                             num_filters=config.tiny_filters, num_classes=config.num_classes,
                             small_stem=True, dtype=dtype, conv_impl=impl)
    raise ValueError(f"unknown model {config.model!r}")


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up to the base rate, then polynomial decay to the end rate (MLPerf ResNet)."""
    warm = int(config.warmup_epochs * steps_per_epoch)
    decay = max(1, int(config.decay_epochs * steps_per_epoch))
    base = config.base_learning_rate
    poly = optax.polynomial_schedule(base, config.end_learning_rate, config.poly_power, decay)
    if warm == 0:
        return poly
    return optax.join_schedules([optax.linear_schedule(base / warm, base, warm), poly], [warm])


def _decay_mask(params):
    # No weight decay nor LARS adaptation for BatchNorm parameters and biases (reference).
    return jax.tree.map(lambda p: p.ndim > 1, params)


class ResNet50Benchmark(Benchmark):
    name = "resnet50"
    mlperf_name = "resnet"
    config_module = "mlperf_jax.configs.resnet50"
    # the closed resnet rules let a submitter pick the optimizer (LARS or SGD) and its schedule;
    # end_learning_rate, poly_power and lars_epsilon are fixed by closed_resnet_{lars,sgd}.yaml
    tunable_hparams = frozenset({
        "global_batch_size", "optimizer", "base_learning_rate", "warmup_epochs", "decay_epochs",
        "weight_decay", "momentum", "eval_offset_epochs", "dtype", "eval_batch_size",
        "num_epochs",
    })
    implementation_keys = frozenset({"conv_impl", "input_backend"})

    # ------------------------------------------------------------------ data
    def data_source(self, config, data_dir, *, seed, process_index, process_count) -> DataSource:
        gbs, ebs = int(config.global_batch_size), int(config.eval_batch_size)
        if gbs % process_count or ebs % process_count:
            raise ValueError("batch sizes must be divisible by the number of processes")
        if config.dataset == "synthetic":
            return _synthetic_source(config, seed, process_index, process_count)
        from mlperf_jax.input_pipelines import imagenet
        imagenet.check_prepared(data_dir)
        size = int(config.image_size)
        spe = IMAGENET_TRAIN // gbs
        backend, why = _input_backend(config)
        if backend == "dali":
            return _dali_source(config, data_dir, seed, process_index, process_count, why)

        def train_epoch(epoch: int, skip: int) -> Iterator:
            ds = imagenet.train_dataset(data_dir, batch_size=gbs // process_count, seed=seed,
                                        epoch=epoch, image_size=size,
                                        process_index=process_index, process_count=process_count)
            return iter(ds.skip(skip).take(spe - skip).as_numpy_iterator())

        def eval_batches() -> Iterator:
            return imagenet.eval_batches(data_dir, batch_size=ebs // process_count,
                                         image_size=size, process_index=process_index,
                                         process_count=process_count)

        return DataSource(
            num_train_samples=IMAGENET_TRAIN, num_eval_samples=IMAGENET_EVAL, steps_per_epoch=spe,
            train_epoch=train_epoch, eval_batches=eval_batches,
            description=f"ImageNet (TFDS imagenet2012) from {data_dir}, tf.data ({why})",
            **_imagenet_specs(gbs, ebs, size))

    # ------------------------------------------------------------------ model
    def init(self, config, rng):
        model = _model(config)
        s = int(config.image_size)
        variables = model.init(rng, jnp.zeros((1, s, s, 3), jnp.float32), train=False)
        return variables["params"], {"batch_stats": variables["batch_stats"]}

    def loss_fn(self, config, params, model_state, batch, rng):
        model = _model(config)
        logits, new_state = model.apply({"params": params, **model_state},
                                        normalize(batch["image"], "resnet50"), train=True,
                                        mutable=["batch_stats"])
        labels = jax.nn.one_hot(batch["label"], config.num_classes)
        labels = optax.smooth_labels(labels, config.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, labels).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, (dict(new_state), {"accuracy": acc})

    def optimizer(self, config, steps_per_epoch):
        schedule = lr_schedule(config, steps_per_epoch)
        if config.optimizer == "lars":
            tx = optax.lars(schedule, weight_decay=config.weight_decay,
                            weight_decay_mask=_decay_mask, trust_ratio_mask=_decay_mask,
                            trust_coefficient=config.lars_trust_coefficient,
                            eps=config.lars_epsilon, momentum=config.momentum)
        elif config.optimizer == "sgd":
            tx = optax.chain(optax.add_decayed_weights(config.weight_decay, _decay_mask),
                             optax.sgd(schedule, momentum=config.momentum))
        else:
            raise ValueError(f"config.optimizer must be lars or sgd, got {config.optimizer!r}")
        return tx, schedule

    def hparams_to_log(self, config, steps_per_epoch) -> dict[str, Any]:
        p = config.optimizer
        out: dict[str, Any] = {"opt_name": p}
        if p == "lars":
            out.update({
                "lars_opt_base_learning_rate": config.base_learning_rate,
                "lars_opt_end_learning_rate": config.end_learning_rate,
                "lars_opt_learning_rate_decay_poly_power": config.poly_power,
                "lars_opt_learning_rate_decay_steps": int(config.decay_epochs * steps_per_epoch),
                "lars_epsilon": config.lars_epsilon,
                "lars_opt_learning_rate_warmup_epochs": config.warmup_epochs,
                "lars_opt_momentum": config.momentum,
                "lars_opt_weight_decay": config.weight_decay,
                # the v0.6 names (ruleset 0.6.0 resnet.yaml); 0.7.0 ignores them
                "opt_base_learning_rate": config.base_learning_rate,
                "opt_learning_rate_warmup_epochs": config.warmup_epochs,
            })
        else:
            out.update({
                "sgd_opt_base_learning_rate": config.base_learning_rate,
                "sgd_opt_end_learning_rate": config.end_learning_rate,
                "sgd_opt_learning_rate_decay_poly_power": config.poly_power,
                "sgd_opt_learning_rate_decay_steps": int(config.decay_epochs * steps_per_epoch),
                "sgd_opt_weight_decay": config.weight_decay,
                "sgd_opt_momentum": config.momentum,
                "opt_learning_rate_warmup_epochs": config.warmup_epochs,
            })
        # BatchNorm statistics are computed over the whole global batch under jit.
        out["model_bn_span"] = int(config.global_batch_size)
        return out

    # ------------------------------------------------------------------ eval
    def eval_step(self, config, params, model_state, batch):
        logits = _model(config).apply({"params": params, **model_state},
                                      normalize(batch["image"], "resnet50"), train=False)
        mask = batch["mask"].astype(jnp.float32)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}

    def eval_metric(self, config, outputs, context) -> dict[str, float]:
        correct = sum(float(o["correct"]) for o in outputs)
        count = sum(float(o["count"]) for o in outputs)
        return {"top1": correct / max(count, 1.0)}

    def fake_train_batch(self, config, rng):
        n, s = int(config.global_batch_size), int(config.image_size)
        return {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
                "label": rng.integers(0, config.num_classes, (n,), dtype=np.int32)}

    def throughput_units(self, config, batch):
        return "images", int(config.global_batch_size)


def _input_backend(config) -> tuple[str, str]:
    from mlperf_jax.input_pipelines.imagenet_dali import choose_backend
    backend, why = choose_backend(str(config.get("input_backend", "auto")))
    from absl import logging
    logging.info("resnet50 input backend: %s (%s)", backend, why)
    return backend, why


def _dali_source(config, data_dir: str, seed: int, process_index: int, process_count: int,
                 why: str) -> DataSource:
    """The same DataSource with DALI decoding on the GPU (``input_pipelines/imagenet_dali.py``).
    DALI's TFRecord index files are written on first use, under ``data_dir/dali_index``."""
    import os
    from mlperf_jax.input_pipelines import imagenet_dali
    from mlperf_jax.input_pipelines.source import Once
    gbs, ebs = int(config.global_batch_size), int(config.eval_batch_size)
    size, spe = int(config.image_size), IMAGENET_TRAIN // gbs
    threads = max(1, min(8, os.cpu_count() or 1))

    def split(name: str) -> Once:
        def make():
            files = imagenet_dali.split_files(data_dir, name)
            return files, imagenet_dali.write_indices(
                files, os.path.join(data_dir, "dali_index", name))
        return Once(make)

    train_files, eval_files = split("train"), split("validation")

    def train_epoch(epoch: int, skip: int) -> Iterator:
        files, idx = train_files()
        return imagenet_dali.train_batches(
            files, idx, batch_size=gbs // process_count, seed=seed, epoch=epoch, steps=spe,
            skip=skip, image_size=size, process_index=process_index,
            process_count=process_count, num_threads=threads)

    def eval_batches() -> Iterator:
        files, idx = eval_files()
        return imagenet_dali.eval_batches(
            files, idx, total=IMAGENET_EVAL, batch_size=ebs // process_count, image_size=size,
            process_index=process_index, process_count=process_count, num_threads=threads)

    return DataSource(
        num_train_samples=IMAGENET_TRAIN, num_eval_samples=IMAGENET_EVAL, steps_per_epoch=spe,
        train_epoch=train_epoch, eval_batches=eval_batches,
        description=f"ImageNet (TFDS imagenet2012) from {data_dir}, DALI on the GPU ({why})",
        **_imagenet_specs(gbs, ebs, size))


def _imagenet_specs(gbs: int, ebs: int, size: int) -> dict:
    """Global train and eval batch shapes of an image-classification source (ImageNet through
    tf.data or DALI, the synthetic tiny track): uint8 images, int32 labels, an eval mask."""
    return {"train_spec": {"image": jax.ShapeDtypeStruct((gbs, size, size, 3), jnp.uint8),
                           "label": jax.ShapeDtypeStruct((gbs,), jnp.int32)},
            "eval_spec": {"image": jax.ShapeDtypeStruct((ebs, size, size, 3), jnp.uint8),
                          "label": jax.ShapeDtypeStruct((ebs,), jnp.int32),
                          "mask": jax.ShapeDtypeStruct((ebs,), jnp.bool_)}}


@functools.lru_cache(maxsize=4)
def _synthetic_arrays(train_n: int, eval_n: int, size: int, noise: float):
    from mlperf_jax.input_pipelines import synthetic_shapes
    train = synthetic_shapes.make_split(train_n, seed=1, image_size=size, label_noise=noise)
    evals = synthetic_shapes.make_split(eval_n, seed=2, image_size=size, label_noise=noise)
    return train, evals


def _synthetic_source(config, seed: int, process_index: int, process_count: int) -> DataSource:
    gbs, ebs = int(config.global_batch_size), int(config.eval_batch_size)
    lbs, lebs = gbs // process_count, ebs // process_count
    size = int(config.image_size)
    (tx, ty), (ex, ey) = _synthetic_arrays(int(config.train_examples), int(config.eval_examples),
                                           size, float(config.label_noise))
    spe = len(tx) // gbs
    if spe == 0:
        raise ValueError(f"global batch {gbs} is larger than the {len(tx)} training examples")

    def train_epoch(epoch: int, skip: int) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(len(tx))
        flips = rng.random(len(tx)) < 0.5
        for step in range(skip, spe):
            idx = perm[step * gbs + process_index * lbs: step * gbs + (process_index + 1) * lbs]
            img = tx[idx]
            img = np.where(flips[idx][:, None, None, None], img[:, :, ::-1], img)
            yield {"image": img, "label": ty[idx]}

    def eval_batches() -> Iterator[dict[str, np.ndarray]]:
        n = len(ex)
        for start in range(0, n, ebs):
            idx = np.arange(start + process_index * lebs, start + (process_index + 1) * lebs)
            mask = idx < n
            idx = np.where(mask, idx, 0)
            yield {"image": ex[idx], "label": ey[idx], "mask": mask}

    return DataSource(
        num_train_samples=spe * gbs, num_eval_samples=len(ex), steps_per_epoch=spe,
        train_epoch=train_epoch, eval_batches=eval_batches, synthetic=True,
        description="synthetic shapes (tiny track)",
        **_imagenet_specs(gbs, ebs, size))


BENCHMARK = ResNet50Benchmark()
