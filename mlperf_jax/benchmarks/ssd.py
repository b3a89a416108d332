"""SSD-ResNet34 on COCO: MLPerf object detection, lightweight (``submission_benchmark`` "ssd").

Matching of ground truth to the default boxes, the loss with hard-negative mining and the
post-processing (per-class top-k, batched NMS) all run on the device with fixed shapes
(``models/ssd_boxes.py``); the host only turns detections into COCO results for pycocotools, whose
ground truth arrives as the data source's eval context. Configs: ``mlperf_jax/configs/ssd.py``.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mlperf_jax.benchmarks.base import Benchmark, DataSource
from mlperf_jax.input_pipelines.source import DatasetNotFoundError, global_spec

COCO_TRAIN_IMAGES = 117266  # train2017 images with annotations (the reference drops the rest)
COCO_EVAL_IMAGES = 4952  # val2017 images with annotations (the 48 without are skipped, as the reference)


@functools.lru_cache(maxsize=8)
def _model_and_anchors(name: str, num_classes: int, dtype: str, conv_impl: str):
    from mlperf_jax.models import ssd, ssd_boxes
    model, boxes = ssd.ssd_model(name, num_classes=num_classes,
                                 dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
                                 conv_impl=conv_impl)
    anchors = ssd_boxes.default_boxes(boxes) if isinstance(boxes, ssd_boxes.BoxSpec) else boxes
    return model, np.asarray(anchors, np.float32)


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from ``warmup_factor`` x base, then x ``decay_factor`` at each boundary."""
    base = float(config.base_learning_rate)
    warm = int(config.warmup_steps)
    bounds = {int(round(e * steps_per_epoch)): float(config.decay_factor)
              for e in config.decay_boundary_epochs}
    decayed = optax.piecewise_constant_schedule(base, bounds)
    if warm <= 0:
        return decayed
    f = float(config.warmup_factor)

    def sched(step):
        s = jnp.asarray(step, jnp.float32)
        ramp = base * (f + (1.0 - f) * jnp.minimum(s, warm) / warm)
        return jnp.where(s < warm, ramp, decayed(step))
    return sched


class SSDBenchmark(Benchmark):
    name = "ssd"
    mlperf_name = "ssd"
    config_module = "mlperf_jax.configs.ssd"
    # v0.7 hyperparameter table (training_policies e382b31): batch, base LR, warm-up steps and
    # factor, weight decay, decay boundaries ([40, 50] x (1 + k/10)), max_samples (1 or 50)
    tunable_hparams = frozenset({
        "global_batch_size", "base_learning_rate", "warmup_steps", "warmup_factor",
        "weight_decay", "decay_boundary_epochs", "max_samples", "eval_batch_size", "dtype",
    })
    implementation_keys = frozenset({"conv_impl", "max_boxes"})

    # ------------------------------------------------------------------ model
    def _model(self, config):
        return _model_and_anchors(str(config.model), int(config.num_classes), str(config.dtype),
                                  self.conv_impl(config))

    def pretrained_subtree(self, config):
        return "backbone" if str(config.model).endswith("resnet34") else None

    def pretrained_arch(self, config):
        return "resnet34"

    def init(self, config, rng):
        model, _ = self._model(config)
        s = int(config.image_size)
        variables = model.init(rng, jnp.zeros((1, s, s, 3), jnp.float32), train=False)
        params = variables["params"]
        return params, {k: v for k, v in variables.items() if k != "params"}

    def _normalize(self, images):
        from mlperf_jax.input_pipelines import preprocessing
        return preprocessing.normalize(images, "ssd")

    def loss_fn(self, config, params, model_state, batch, rng):
        from mlperf_jax.models import ssd_boxes
        model, anchors = self._model(config)
        (loc, logits), new_state = model.apply(
            {"params": params, **model_state}, self._normalize(batch["image"]), train=True,
            mutable=list(model_state))
        loc_t, labels_t = ssd_boxes.match(batch["boxes"], batch["labels"], batch["num_boxes"],
                                          jnp.asarray(anchors), float(config.match_iou))
        loss, metrics = ssd_boxes.ssd_loss(loc.astype(jnp.float32), logits.astype(jnp.float32),
                                           loc_t, labels_t, int(config.neg_pos_ratio))
        return loss, (dict(new_state), dict(metrics))

    def optimizer(self, config, steps_per_epoch):
        schedule = lr_schedule(config, steps_per_epoch)
        tx = optax.chain(optax.add_decayed_weights(float(config.weight_decay)),
                         optax.sgd(schedule, momentum=float(config.momentum)))
        return tx, schedule

    def hparams_to_log(self, config, steps_per_epoch) -> dict[str, Any]:
        return {
            "opt_base_learning_rate": float(config.base_learning_rate),
            "opt_weight_decay": float(config.weight_decay),
            "opt_learning_rate_warmup_steps": int(config.warmup_steps),
            "opt_learning_rate_warmup_factor": int(config.warmup_factor),
            "opt_learning_rate_decay_boundary_epochs": [int(e) for e in
                                                        config.decay_boundary_epochs],
            "max_samples": int(config.max_samples),
            # BatchNorm statistics are computed over the whole global batch under jit
            "model_bn_span": int(config.global_batch_size),
        }

    # ------------------------------------------------------------------ evaluation
    def eval_step(self, config, params, model_state, batch):
        from mlperf_jax.models import ssd_boxes
        model, anchors = self._model(config)
        loc, logits = model.apply({"params": params, **model_state},
                                  self._normalize(batch["image"]), train=False)
        det = ssd_boxes.postprocess(
            loc.astype(jnp.float32), logits.astype(jnp.float32), jnp.asarray(anchors),
            score_threshold=float(config.score_threshold),
            per_class_top_k=int(config.per_class_top_k), nms_iou=float(config.nms_iou),
            max_detections=int(config.max_detections))
        return dict(det, image_id=batch["image_id"], orig_size=batch["orig_size"],
                    mask=batch["mask"])

    def eval_metric(self, config, outputs, context) -> dict[str, float]:
        from mlperf_jax.input_pipelines import coco_eval
        cat = {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}
        keep = cat["mask"].astype(bool)
        dets = coco_eval.detections_to_coco(
            cat["image_id"][keep], cat["boxes"][keep], cat["scores"][keep], cat["classes"][keep],
            cat["valid"][keep], cat["orig_size"][keep], context.label_to_category)
        stats = coco_eval.evaluate(context, dets)
        return {"mAP": float(stats["mAP"])}

    # ------------------------------------------------------------------ data
    def data_source(self, config, data_dir, *, seed, process_index, process_count) -> DataSource:
        gbs, ebs = int(config.global_batch_size), int(config.eval_batch_size)
        if gbs % process_count or ebs % process_count:
            raise ValueError("batch sizes must be divisible by the number of processes")
        s, m = int(config.image_size), int(config.max_boxes)
        train_spec = global_spec({"image": ((gbs // process_count, s, s, 3), np.uint8),
                                  "boxes": ((gbs // process_count, m, 4), np.float32),
                                  "labels": ((gbs // process_count, m), np.int32),
                                  "num_boxes": ((gbs // process_count,), np.int32)}, process_count)
        eval_spec = global_spec({"image": ((ebs // process_count, s, s, 3), np.uint8),
                                 "image_id": ((ebs // process_count,), np.int32),
                                 "orig_size": ((ebs // process_count, 2), np.int32),
                                 "mask": ((ebs // process_count,), np.bool_)}, process_count)
        if config.dataset == "synthetic":
            return _synthetic_source(config, seed, process_index, process_count, train_spec,
                                     eval_spec)
        from mlperf_jax.input_pipelines import coco
        if not data_dir:
            raise DatasetNotFoundError("ssd needs --data_dir with COCO 2017 (or --config=tiny for "
                                       "the synthetic tiny track); " + coco.PREPARE_HELP)
        coco.check_prepared(data_dir, source=str(config.dataset))
        spe = COCO_TRAIN_IMAGES // gbs

        def train_epoch(epoch: int, skip: int) -> Iterator:
            ds = coco.train_dataset(data_dir, batch_size=gbs // process_count, seed=seed,
                                    epoch=epoch, image_size=s, max_boxes=m,
                                    max_samples=int(config.max_samples),
                                    process_index=process_index, process_count=process_count,
                                    source=str(config.dataset), steps=spe)
            return iter(ds.skip(skip).take(spe - skip).as_numpy_iterator())

        def eval_batches() -> Iterator:
            return coco.eval_batches(data_dir, batch_size=ebs // process_count, image_size=s,
                                     process_index=process_index, process_count=process_count,
                                     source=str(config.dataset))

        return DataSource(
            num_train_samples=spe * gbs, num_eval_samples=COCO_EVAL_IMAGES, steps_per_epoch=spe,
            train_epoch=train_epoch, eval_batches=eval_batches, train_spec=train_spec,
            eval_spec=eval_spec,
            eval_context=lambda: coco.ground_truth(data_dir, source=str(config.dataset)),
            description=f"COCO 2017 ({config.dataset}) from {data_dir}")

    def fake_train_batch(self, config, rng):
        n, s, m = int(config.global_batch_size), int(config.image_size), int(config.max_boxes)
        lo = rng.uniform(0.0, 0.6, (n, m, 2)).astype(np.float32)
        hi = lo + rng.uniform(0.1, 0.4, (n, m, 2)).astype(np.float32)
        return {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
                "boxes": np.concatenate([lo, np.minimum(hi, 1.0)], -1),
                "labels": rng.integers(1, int(config.num_classes), (n, m), dtype=np.int32),
                "num_boxes": rng.integers(1, m + 1, (n,), dtype=np.int32)}

    def throughput_units(self, config, batch):
        return "images", int(config.global_batch_size)


@functools.lru_cache(maxsize=4)
def _synthetic_arrays(train_n: int, eval_n: int, size: int, max_objects: int):
    from mlperf_jax.input_pipelines import synthetic_detection as sd
    return (sd.make_split(train_n, seed=1, image_size=size, max_objects=max_objects),
            sd.make_split(eval_n, seed=2, image_size=size, max_objects=max_objects))


def _synthetic_source(config, seed, process_index, process_count, train_spec, eval_spec
                      ) -> DataSource:
    from mlperf_jax.input_pipelines import coco_eval
    gbs, ebs = int(config.global_batch_size), int(config.eval_batch_size)
    lbs, lebs = gbs // process_count, ebs // process_count
    size = int(config.image_size)
    train, evals = _synthetic_arrays(int(config.train_examples), int(config.eval_examples), size,
                                     int(config.max_boxes))
    n_train, n_eval = len(train["images"]), len(evals["images"])
    spe = n_train // gbs
    if spe == 0:
        raise ValueError(f"global batch {gbs} is larger than the {n_train} training examples")

    def train_epoch(epoch: int, skip: int):
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(n_train)
        flips = rng.random(n_train) < 0.5
        for step in range(skip, spe):
            idx = perm[step * gbs + process_index * lbs: step * gbs + (process_index + 1) * lbs]
            img, boxes = train["images"][idx], train["boxes"][idx].copy()
            f = flips[idx]
            img = np.where(f[:, None, None, None], img[:, :, ::-1], img)
            # a horizontal flip maps x to 1 - x: xmin' = 1 - xmax, xmax' = 1 - xmin
            boxes[f, :, 1], boxes[f, :, 3] = 1.0 - boxes[f, :, 3], 1.0 - boxes[f, :, 1]
            yield {"image": img, "boxes": boxes, "labels": train["labels"][idx],
                   "num_boxes": train["num_boxes"][idx]}

    def eval_batches():
        for start in range(0, n_eval, ebs):
            idx = np.arange(start + process_index * lebs, start + (process_index + 1) * lebs)
            mask = idx < n_eval
            idx = np.where(mask, idx, 0)
            yield {"image": evals["images"][idx], "image_id": (idx + 1).astype(np.int32),
                   "orig_size": np.full((len(idx), 2), size, np.int32), "mask": mask}

    def eval_context():
        from mlperf_jax.input_pipelines import synthetic_detection as sd
        return coco_eval.ground_truth_from_arrays(
            np.arange(1, n_eval + 1), np.full((n_eval, 2), size), evals["boxes"],
            evals["labels"], evals["num_boxes"], category_names=sd.CLASS_NAMES)

    return DataSource(
        num_train_samples=spe * gbs, num_eval_samples=n_eval, steps_per_epoch=spe,
        train_epoch=train_epoch, eval_batches=eval_batches, train_spec=train_spec,
        eval_spec=eval_spec, eval_context=eval_context, synthetic=True,
        description="synthetic shapes detection (tiny track)")


BENCHMARK = SSDBenchmark()
