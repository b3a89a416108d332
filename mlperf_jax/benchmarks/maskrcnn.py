"""Mask R-CNN on COCO: MLPerf object detection, heavyweight (``submission_benchmark`` "maskrcnn").

The model, its target assignment and its post-processing run on the device with fixed shapes
(``models/mask_rcnn.py``); the host turns detections into COCO results (boxes, and masks pasted
into the image and RLE-encoded) for pycocotools' ``bbox`` and ``segm`` evaluations, whose ground
truth is the data source's eval context. The target has two thresholds, logged as
``{"BBOX": ..., "SEGM": ...}``. Configs: ``mlperf_jax/configs/maskrcnn.py``.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mlperf_jax.benchmarks.base import Benchmark, DataSource, Target
from mlperf_jax.input_pipelines.source import DatasetNotFoundError, global_spec

_SPEC_KEYS = ("num_classes", "image_size", "backbone", "tiny_channels", "fpn_channels",
              "rpn_levels", "roi_levels", "anchor_sizes", "aspect_ratios", "rpn_fg_iou",
              "rpn_bg_iou", "rpn_batch_per_image", "rpn_positive_fraction", "rpn_pre_nms_train",
              "rpn_pre_nms_test", "rpn_post_nms_test", "rpn_nms_iou", "roi_batch_per_image",
              "roi_positive_fraction", "roi_fg_iou", "roi_bg_iou", "box_weights", "box_pool",
              "mask_pool", "sampling_ratio", "canonical_scale", "canonical_level", "box_fc",
              "mask_convs", "mask_channels", "num_mask_rois", "score_threshold", "nms_iou",
              "max_detections")


def model_spec(config: ml_collections.ConfigDict):
    """The hashable model description from the config's model fields."""
    from mlperf_jax.models.mask_rcnn import MaskRCNNSpec
    kw = {}
    for k in _SPEC_KEYS:
        v = config[k]
        kw[k] = tuple(v) if isinstance(v, (list, tuple)) else v
    return MaskRCNNSpec(rpn_post_nms_train=int(config.num_image_candidates), **kw)


@functools.lru_cache(maxsize=8)
def _model(spec, dtype: str, conv_impl: str):
    from mlperf_jax.models.mask_rcnn import MaskRCNN
    return MaskRCNN(spec, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
                    conv_impl=conv_impl)


def lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """maskrcnn-benchmark's WarmupMultiStepLR: linear warm-up from ``warmup_factor`` x base over
    ``warmup_steps``, x ``decay_factor`` at each of ``decay_steps`` (given at batch 16)."""
    base = float(config.base_learning_rate)
    scale = 16.0 / int(config.global_batch_size)
    bounds = {int(round(s * scale)): float(config.decay_factor) for s in config.decay_steps}
    decayed = optax.piecewise_constant_schedule(base, bounds)
    warm, f = int(config.warmup_steps), float(config.warmup_factor)
    if warm <= 0:
        return decayed

    def sched(step):
        s = jnp.asarray(step, jnp.float32)
        alpha = jnp.minimum(s, warm) / warm
        return jnp.where(s < warm, decayed(step) * (f * (1 - alpha) + alpha), decayed(step))
    return sched


def param_labels(frozen_backbone: bool):
    """Labels each parameter 'frozen' (with a pretrained ResNet: its BatchNorm everywhere, the
    stem and res2), 'bias' (2x the rate, no decay) or 'weight', as maskrcnn-benchmark's
    ``make_optimizer`` and ``FREEZE_CONV_BODY_AT=2``."""
    frozen_top = {"conv_init", "bn_init"} | {f"BottleneckBlock_{i}" for i in range(3)}

    def label(path, _):
        names = [str(getattr(p, "key", p)) for p in path]
        if frozen_backbone and names[0] == "backbone":
            if names[1] in frozen_top or any(n.startswith(("BatchNorm", "bn_", "proj_bn"))
                                             for n in names[1:]):
                return "frozen"
        return "bias" if names[-1] == "bias" else "weight"
    return lambda params: jax.tree_util.tree_map_with_path(label, params)


class MaskRCNNBenchmark(Benchmark):
    name = "maskrcnn"
    mlperf_name = "maskrcnn"
    config_module = "mlperf_jax.configs.maskrcnn"
    # v0.7 hyperparameter table (training_policies): batch, lr = 0.02 K, warm-up, decay steps;
    # num_image_candidates (1000 or 1000 x batch per chip); image sizes are fixed
    tunable_hparams = frozenset({
        "global_batch_size", "base_learning_rate", "warmup_steps", "warmup_factor",
        "decay_steps", "num_image_candidates", "eval_batch_size", "dtype",
    })
    implementation_keys = frozenset({"conv_impl", "max_instances", "gt_mask_size",
                                     "image_size"})

    def _model(self, config):
        return _model(model_spec(config), str(config.dtype), self.conv_impl(config))

    def target(self, config, round=None) -> Target:
        if config.get("target_bbox") is not None:
            return Target({"BBOX": float(config.target_bbox), "SEGM": float(config.target_segm)})
        return super().target(config, round)

    def pretrained_subtree(self, config):
        return "backbone" if str(config.backbone) == "resnet50" else None

    def pretrained_arch(self, config):
        return "resnet50"

    def check_config(self, config):
        super().check_config(config)
        if int(config.image_size) < int(config.max_size) or int(config.image_size) % 32:
            raise ValueError("config.image_size must be a multiple of 32 and at least max_size")
        if int(config.image_size) % 2 ** max(config.rpn_levels):
            raise ValueError("config.image_size must be a multiple of the coarsest RPN stride")
        if len(config.decay_steps) != 2:
            raise ValueError("config.decay_steps must hold two iteration counts")

    def init(self, config, rng):
        model = self._model(config)
        s, m, r = int(config.image_size), int(config.max_instances), int(config.gt_mask_size)
        batch = {"boxes": jnp.tile(jnp.asarray([[0., 0., 8., 8.]]), (1, m, 1)),
                 "classes": jnp.ones((1, m), jnp.int32), "num_gt": jnp.ones((1,), jnp.int32),
                 "masks": jnp.zeros((1, m, r, r), jnp.uint8),
                 "image_hw": jnp.full((1, 2), s, jnp.int32)}
        variables = model.init({"params": rng}, jnp.zeros((1, s, s, 3), jnp.float32), batch,
                               rng, train=False)
        params = variables["params"]
        return params, {k: v for k, v in variables.items() if k != "params"}

    def _normalize(self, images):
        from mlperf_jax.input_pipelines import preprocessing
        return preprocessing.normalize(images, "maskrcnn")

    def loss_fn(self, config, params, model_state, batch, rng):
        model = self._model(config)
        variables = {"params": params, **model_state}
        images = self._normalize(batch["image"])
        if model_state:  # the tiny backbone's BatchNorm learns batch statistics
            losses, new_state = model.apply(variables, images, batch, rng, train=True,
                                            mutable=list(model_state))
        else:
            losses, new_state = model.apply(variables, images, batch, rng, train=True), {}
        loss = sum(losses.values())
        return loss, (dict(new_state) if model_state else model_state, dict(losses))

    def optimizer(self, config, steps_per_epoch):
        schedule = lr_schedule(config)
        factor = float(config.bias_lr_factor)
        momentum = float(config.momentum)
        weight = optax.chain(optax.add_decayed_weights(float(config.weight_decay)),
                             optax.sgd(schedule, momentum=momentum))
        bias = optax.sgd(lambda step: factor * schedule(step), momentum=momentum)
        tx = optax.multi_transform({"weight": weight, "bias": bias,
                                    "frozen": optax.set_to_zero()},
                                   param_labels(str(config.backbone) == "resnet50"))
        return tx, schedule

    def hparams_to_log(self, config, steps_per_epoch) -> dict[str, Any]:
        gbs = int(config.global_batch_size)
        per_chip = max(1, gbs // jax.device_count())
        return {
            "opt_base_learning_rate": float(config.base_learning_rate),
            "opt_weight_decay": float(config.weight_decay),
            "opt_learning_rate_warmup_steps": int(config.warmup_steps),
            "opt_learning_rate_warmup_factor": float(config.warmup_factor),
            "opt_learning_rate_decay_factor": float(config.decay_factor),
            "opt_learning_rate_decay_steps": [int(round(s * 16 / gbs))
                                              for s in config.decay_steps],
            "num_image_candidates": int(config.num_image_candidates) * per_chip,
            "min_image_size": int(config.min_size),
            "max_image_size": int(config.max_size),
        }

    # ------------------------------------------------------------------ evaluation
    def eval_step(self, config, params, model_state, batch):
        from mlperf_jax.models.mask_rcnn import MaskRCNN
        model = self._model(config)
        det = model.apply({"params": params, **model_state}, self._normalize(batch["image"]),
                          batch["image_hw"], method=MaskRCNN.predict)
        hw = batch["image_hw"].astype(jnp.float32)
        scale = jnp.concatenate([hw, hw], -1)[:, None, :]
        # probabilities as uint8 (x 255): a quarter of the host memory; pasting thresholds 0.5
        masks = jnp.round(det["masks"] * 255.0).astype(jnp.uint8)
        return {"boxes": det["boxes"] / scale, "scores": det["scores"],
                "classes": det["classes"], "valid": det["valid"], "masks": masks,
                "image_id": batch["image_id"], "orig_size": batch["orig_size"],
                "mask": batch["mask"]}

    def eval_metric(self, config, outputs, context) -> dict[str, float]:
        from mlperf_jax.input_pipelines import coco_eval
        cat = {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}
        keep = cat["mask"].astype(bool)
        args = (cat["image_id"][keep], cat["boxes"][keep], cat["scores"][keep],
                cat["classes"][keep], cat["valid"][keep])
        boxes = coco_eval.detections_to_coco(*args, cat["orig_size"][keep],
                                             context.label_to_category)
        segms = coco_eval.segmentations_to_coco(
            *args, cat["masks"][keep].astype(np.float32) / 255.0, cat["orig_size"][keep],
            context.label_to_category)
        bbox = coco_eval.evaluate(context, boxes, iou_type="bbox")
        segm = coco_eval.evaluate(context, segms, iou_type="segm")
        return {"BBOX": float(bbox["mAP"]), "SEGM": float(segm["mAP"])}

    # ------------------------------------------------------------------ data
    def prepare_data(self, config, data_dir):
        if config.dataset == "synthetic":
            return None
        from mlperf_jax.input_pipelines import coco_instances
        if not data_dir:
            raise DatasetNotFoundError("maskrcnn needs --data_dir with COCO 2017 in the raw "
                                       "layout (train2017/, val2017/, annotations/)")
        done = [coco_instances.prepare(data_dir, split, mask_size=int(config.gt_mask_size))
                for split in ("train", "val")]
        return "; ".join(d for d in done if d)

    def _specs(self, config, process_count):
        gbs, ebs = int(config.global_batch_size), int(config.eval_batch_size)
        if gbs % process_count or ebs % process_count:
            raise ValueError("batch sizes must be divisible by the number of processes")
        b, e = gbs // process_count, ebs // process_count
        s, m, r = int(config.image_size), int(config.max_instances), int(config.gt_mask_size)
        train = global_spec({"image": ((b, s, s, 3), np.uint8), "boxes": ((b, m, 4), np.float32),
                             "classes": ((b, m), np.int32), "masks": ((b, m, r, r), np.uint8),
                             "num_gt": ((b,), np.int32), "image_hw": ((b, 2), np.int32)},
                            process_count)
        evals = global_spec({"image": ((e, s, s, 3), np.uint8), "image_id": ((e,), np.int32),
                             "image_hw": ((e, 2), np.int32), "orig_size": ((e, 2), np.int32),
                             "mask": ((e,), np.bool_)}, process_count)
        return train, evals

    def data_source(self, config, data_dir, *, seed, process_index, process_count) -> DataSource:
        train_spec, eval_spec = self._specs(config, process_count)
        if config.dataset == "synthetic":
            from mlperf_jax.input_pipelines import synthetic_masks
            return synthetic_masks.data_source(config, seed, process_index, process_count,
                                               train_spec, eval_spec)
        from mlperf_jax.input_pipelines import coco_eval, coco_instances, maskrcnn_input
        if not data_dir:
            raise DatasetNotFoundError("maskrcnn needs --data_dir with COCO 2017 in the raw "
                                       "layout (or --config=tiny for the synthetic tiny track)")
        coco_instances.check_prepared(data_dir, "train")
        coco_instances.check_prepared(data_dir, "val")
        meta_train = coco_instances.metadata(data_dir, "train")
        meta_val = coco_instances.metadata(data_dir, "val")
        gbs, ebs = int(config.global_batch_size), int(config.eval_batch_size)
        spe = int(meta_train["num_examples"]) // gbs
        sizes = dict(min_size=int(config.min_size), max_size=int(config.max_size),
                     pad_size=int(config.image_size))

        def train_epoch(epoch: int, skip: int) -> Iterator:
            ds = maskrcnn_input.train_dataset(
                data_dir, batch_size=gbs // process_count, seed=seed, epoch=epoch,
                max_instances=int(config.max_instances), process_index=process_index,
                process_count=process_count, steps=spe, **sizes)
            return iter(ds.skip(skip).take(spe - skip).as_numpy_iterator())

        def eval_batches() -> Iterator:
            return maskrcnn_input.eval_batches(data_dir, batch_size=ebs // process_count,
                                               process_index=process_index,
                                               process_count=process_count, **sizes)

        return DataSource(
            num_train_samples=spe * gbs, num_eval_samples=int(meta_val["num_examples"]),
            steps_per_epoch=spe, train_epoch=train_epoch, eval_batches=eval_batches,
            train_spec=train_spec, eval_spec=eval_spec,
            eval_context=lambda: coco_eval.load_annotations(meta_val["annotation_file"]),
            description=f"COCO 2017 instances (raw layout) from {data_dir}")

    def fake_train_batch(self, config, rng):
        n, s = int(config.global_batch_size), int(config.image_size)
        m, r = int(config.max_instances), int(config.gt_mask_size)
        lo = rng.uniform(0.0, 0.7 * s, (n, m, 2)).astype(np.float32)
        hi = lo + rng.uniform(0.05 * s, 0.3 * s, (n, m, 2)).astype(np.float32)
        return {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
                "boxes": np.concatenate([lo, np.minimum(hi, s)], -1),
                "classes": rng.integers(1, int(config.num_classes), (n, m), dtype=np.int32),
                "masks": (rng.random((n, m, r, r)) < 0.6).astype(np.uint8) * 255,
                "num_gt": rng.integers(1, m + 1, (n,), dtype=np.int32),
                "image_hw": np.full((n, 2), s, np.int32)}

    def throughput_units(self, config, batch):
        return "images", int(config.global_batch_size)


BENCHMARK = MaskRCNNBenchmark()
