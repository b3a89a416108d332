"""The vision systems of ``python -m mlperf_jax.infer``: models, weights and QSLs by benchmark name.

Apart from the command line so that a notebook or a script builds the same systems; a mistake in
what was asked for raises :class:`SetupError` with one line for the user.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

Say = Callable[[str], None]


class SetupError(ValueError):
    """A user mistake (missing data, wrong model for the benchmark): one line of text."""


def _stderr(msg: str) -> None:
    print(f"infer: {msg}", file=sys.stderr, flush=True)


def build_model(benchmark: str, dtype: str, width: float):
    import jax.numpy as jnp
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    if benchmark == "resnet50":
        from mlperf_jax.models import resnet
        return resnet.ResNet50(num_classes=1000, dtype=dt)
    from mlperf_jax.models import mobilenet
    return mobilenet.MobileNetV1(num_classes=1000, width_multiplier=width, dtype=dt)


def load_variables(model, checkpoint_dir: str | None, image_size: int, say: Say = _stderr):
    import jax
    import jax.numpy as jnp
    if checkpoint_dir:
        from mlperf_jax import checkpoint
        try:
            return checkpoint.restore_variables(checkpoint_dir), f"checkpoint {checkpoint_dir}"
        except FileNotFoundError as e:
            raise SetupError(f"--checkpoint_dir: {e}") from None
    say("WARNING: no --checkpoint_dir: using RANDOM weights; accuracy results are meaningless.")
    return (jax.jit(lambda k: model.init(k, jnp.zeros((1, image_size, image_size, 3)), train=False))(
        jax.random.key(0)), "random init")


def make_qsl(data_dir: str | None, image_size: int, count: int | None, benchmark: str,
             say: Say = _stderr):
    from mlperf_jax.inference import ImageNetQSL, SyntheticImageQSL, find_imagenet_val
    if data_dir:
        val = find_imagenet_val(data_dir)
        if val is None:
            raise SetupError(f"--data_dir: no ImageNet validation set under {os.path.abspath(data_dir)} "
                            "(looked for val_map.txt in ., val/, imagenet/val/); prepare it as the MLPerf "
                            "reference does: the 50,000 validation JPEGs plus val_map.txt ('file label' lines)")
        return (ImageNetQSL(val, preprocessing=benchmark, image_size=image_size, count=count),
                f"ImageNet {val}")
    say(f"WARNING: no --data_dir: using a SYNTHETIC QSL of random {image_size}x{image_size} images; "
         "accuracy results are meaningless.")
    return SyntheticImageQSL(image_size=image_size, total=count or 50_000), "synthetic"


def make_detection_qsl(data_dir: str | None, image_size: int, count: int | None, benchmark: str,
                       say: Say = _stderr):
    from mlperf_jax.inference import CocoQSL, SyntheticDetectionQSL, coco_qsl, find_coco_val
    psc = coco_qsl.DETECTION_BENCHMARKS[benchmark]["performance_sample_count"]
    if data_dir:
        root = find_coco_val(data_dir)
        if root is None:
            raise SetupError(f"--data_dir: no COCO 2017 validation set under {os.path.abspath(data_dir)} "
                            "(looked for annotations/instances_val2017.json in ., coco/, coco2017/); prepare "
                            "it as the MLPerf reference does: val2017/ with the 5,000 JPEGs plus "
                            "annotations/instances_val2017.json")
        try:
            qsl = CocoQSL(root, preprocessing=benchmark, image_size=image_size, count=count,
                          performance_sample_count=psc)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise SetupError(f"--data_dir: {e}") from None
        return qsl, f"COCO {root}"
    say(f"WARNING: no --data_dir: using a SYNTHETIC QSL of random {image_size}x{image_size} images; "
         "accuracy results are meaningless.")
    return (SyntheticDetectionQSL(image_size=image_size, total=count or coco_qsl.COCO_VAL_COUNT,
                                  performance_sample_count=psc, preprocessing=benchmark), "synthetic")


def build_detector(benchmark: str, model_name: str | None, dtype: str, default: str, num_classes: int,
                   test_models: tuple[str, ...], say: Say = _stderr):
    """(SSD module, anchors [N, 4] cy cx h w, input size, model name) for a detection benchmark:
    its MLPerf model ``default`` or one of the ``test_models`` (with ``num_classes`` classes)."""
    import jax.numpy as jnp
    import numpy as np
    from mlperf_jax.models import ssd
    name = model_name or default
    if name not in (default, *test_models):
        raise SetupError(f"--model={name}: {benchmark} runs {default} (or {', '.join(test_models)} for tests)")
    if name != default:
        say(f"WARNING: --model={name}: a TEST model, not the MLPerf {benchmark} model ({default}); "
             "results are not MLPerf results.")
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    overrides = {"dtype": dt} if name == default else {"dtype": dt, "num_classes": num_classes}
    module, boxes = ssd.ssd_model(name, **overrides)
    if isinstance(boxes, np.ndarray) or not hasattr(boxes, "feature_sizes"):
        anchors = np.asarray(boxes, np.float32)
    else:
        from mlperf_jax.models import ssd_boxes
        anchors = np.asarray(ssd_boxes.default_boxes(boxes), np.float32)
    return module, anchors, int(module.input_size), name
