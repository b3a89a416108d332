"""INT8 post-training quantization of the vision models with qwix (MLPerf closed division:
calibration on the benchmark owner's calibration set, no retraining).

What is quantized: every convolution and dense layer of the model (``lax.conv_general_dilated``
and ``lax.dot_general`` inside the Flax module: stem, depthwise and pointwise or bottleneck
convolutions, projection shortcuts, SSD heads, the classifier).  Both operands are int8 and the
product accumulates in int32 (qwix's fast path: ``conv_general_dilated(s8, s8) -> s32``), then
is rescaled to float32.  Everything else stays float32: input normalisation, BatchNorm (applied
after the rescale, not folded), ReLU/ReLU6, residual additions, pooling, the SSD box decoding and
NMS.

How the scales are chosen (symmetric, no zero point; qwix's int8 bound 127.5, round half to even,
saturating at [-128, 127]), the "minmax" method of the MLPerf example write-up
(``calibration/doc/example writeup.adoc`` of mlcommons/inference, TensorRT's):
- weights: per output channel, ``scale[c] = max|w[..., c]| / 127.5`` over the trained weights;
- activations (the input of each quantized layer): ONE static scale per tensor,
  ``max |activation| / 127.5``, the maximum over all calibration images, taken in the FP32 model.
qwix's own static-range statistic (the mean over images of each image's max, gathered by its
``QtProvider``) clips every image whose peak is above the mean: on this project's trained tiny
ResNet (tiny track, 24x24 shapes) it moved the logits by ~20% (relative L2) where the maximum moves
them by 2.4%, so the maximum is recorded here (``nn.intercept_methods`` on the FP32 model's
``nn.Conv`` / ``nn.Dense`` inputs) and handed to ``PtqProvider`` + ``quantize_params`` in qwix's
``quant_stats`` form.

Calibration reads only the MLPerf calibration list (``calibration/``): ImageNet
``cal_image_list_option_1.txt`` and COCO ``coco_cal_images_list.txt``, 500 file names each,
matched to QSL indices by file name (the rules allow a subset: a QSL cut by
``--total_sample_count`` holds only some of them, and the run says how many).  A synthetic QSL
has no file names: its stand-in is QSL indices 0..499, and the run says so.
"""

from __future__ import annotations

import importlib.resources
import os
from typing import Any, Iterable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix

from mlperf_jax.input_pipelines.preprocessing import normalize

CALIBRATION_LISTS = {"imagenet": "cal_image_list_option_1.txt", "coco": "coco_cal_images_list.txt"}
DATASETS = {"resnet50": "imagenet", "mobilenet": "imagenet", "ssd-mobilenet": "coco", "ssd-resnet34": "coco"}
# A calibration batch holds at most this many 224x224 images' worth of pixels.
BATCH_PIXELS = 25 * 224 * 224
MAX_BATCH = 50
# the layers quantized; calibration records their inputs (every conv and dense of the vision models)
QUANTIZED_MODULES = (nn.Conv, nn.Dense)


def int8_rules() -> list[qwix.QtRule]:
    """Every conv and dense layer: int8 weights (per channel) and int8 static-scale activations."""
    return [qwix.QtRule(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8, act_static_scale=True,
                        weight_calibration_method="absmax", act_calibration_method="absmax")]


# ----------------------------------------------------------------------------- the calibration set
def calibration_list(dataset: str) -> list[str]:
    """The 500 file names of ``dataset``'s ("imagenet", "coco") shipped MLPerf calibration list."""
    name = CALIBRATION_LISTS[dataset]
    text = (importlib.resources.files("mlperf_jax.inference") / "calibration" / name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def qsl_file_names(qsl) -> list[str] | None:
    """Per QSL index the image's file name; None for a QSL without files (synthetic)."""
    if getattr(qsl, "files", None) is not None:  # ImageNetQSL: val_map.txt paths
        return [os.path.basename(f) for f in qsl.files]
    if getattr(qsl, "images", None) is not None:  # CocoQSL: the annotation json's images
        return [os.path.basename(im["file_name"]) for im in qsl.images]
    return None


def calibration_indices(qsl, dataset: str) -> tuple[list[int], str]:
    """(QSL indices of the calibration images in the list's order, a description for the run).

    Raises ValueError when the QSL has file names but none of the list's."""
    wanted = calibration_list(dataset)
    source = f"calibration/{CALIBRATION_LISTS[dataset]}"
    names = qsl_file_names(qsl)
    if names is None:
        n = min(len(wanted), int(qsl.total_sample_count))
        return list(range(n)), (f"SYNTHETIC stand-in: QSL indices 0..{n - 1} (a synthetic QSL has no file "
                                f"names to match {source})")
    position: dict[str, int] = {}
    for i, name in enumerate(names):
        position.setdefault(name, i)
    found = [position[w] for w in wanted if w in position]
    if not found:
        raise ValueError(f"none of the {len(wanted)} images of {source} is in the QSL's {len(names)} images "
                         "(calibration may use only that list)")
    subset = "" if len(found) == len(wanted) else " (a subset, as the rules allow)"
    return found, f"{len(found)} of the {len(wanted)} images of {source}{subset}"


def calibration_batch_size(n: int, image_size: int) -> int:
    """Images per calibration batch: at most ``BATCH_PIXELS`` of pixels, at most ``MAX_BATCH``."""
    return max(1, min(n, MAX_BATCH, BATCH_PIXELS // (image_size * image_size)))


def calibration_batches(qsl, indices: Sequence[int], batch: int) -> Iterable[np.ndarray]:
    """uint8 batches of the samples ``indices`` (``qsl.load_sample``, nothing else); the last one is
    padded with copies of its first image, which leave a maximum unchanged (one compiled shape)."""
    for s in range(0, len(indices), batch):
        images = [qsl.load_sample(i) for i in indices[s:s + batch]]
        yield np.stack(images + [images[0]] * (batch - len(images)))


# ----------------------------------------------------------------------------- statistics and PTQ
def _float_variables(variables: Any) -> dict:
    """The model's variables as a plain dict of jax arrays, without sown or quantization state."""
    v = flax.core.unfreeze(variables) if isinstance(variables, flax.core.FrozenDict) else dict(variables)
    return {k: jax.tree.map(jnp.asarray, c) for k, c in v.items() if k not in ("intermediates", "quant_stats")}


def collect_absmax(model, variables: Any, batches: Iterable[np.ndarray], *, preprocessing: str
                   ) -> dict[tuple[str, ...], float]:
    """{module path: max |input|} of every ``nn.Conv`` and ``nn.Dense`` over ``batches`` (uint8
    NHWC, normalised for ``preprocessing``), from the FP32 model: the calibration statistic."""
    fvars = _float_variables(variables)

    def forward(images_u8):
        seen: dict[tuple[str, ...], jax.Array] = {}

        def record(next_fun, args, kwargs, context):
            m = context.module
            if context.method_name == "__call__" and isinstance(m, QUANTIZED_MODULES):
                x = args[0] if args else kwargs["inputs"]
                a = jnp.max(jnp.abs(x)).astype(jnp.float32)
                seen[m.path] = jnp.maximum(seen[m.path], a) if m.path in seen else a
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            model.apply(fvars, normalize(images_u8, preprocessing), train=False)
        return seen

    step = jax.jit(forward)
    absmax: dict[tuple[str, ...], float] = {}
    for images in batches:
        for path, a in step(jnp.asarray(images)).items():
            absmax[path] = max(absmax.get(path, 0.0), float(a))
    if not absmax:
        raise ValueError("calibration saw no images, or the model has no nn.Conv / nn.Dense layer")
    return absmax


def quant_stats(absmax: dict[tuple[str, ...], float], abstract_params: Any) -> dict:
    """The statistics in qwix's ``quant_stats`` form (per op: ``count``, ``sum_of_absmax``), one per
    activation scale the PTQ model asks for (``<op>_lhs_scale`` params); ValueError for a layer
    whose input was not recorded or that holds more than one quantized op."""
    scales = {k: v for k, v in flax.traverse_util.flatten_dict(abstract_params).items() if k[-1].endswith("_scale")}
    per_module: dict[tuple[str, ...], list] = {}
    for key in scales:
        per_module.setdefault(key[:-1], []).append(key[-1])
    stats = {}
    for module, names in per_module.items():
        where = "/".join(module)
        if len(names) != 1 or not names[0].endswith("_lhs_scale"):
            raise ValueError(f"{where}: quantized ops {names}; calibration records one input per layer")
        if module not in absmax:
            raise ValueError(f"{where}: no calibration statistic (recorded: inputs of "
                             f"{', '.join(c.__name__ for c in QUANTIZED_MODULES)})")
        shape = scales[(*module, names[0])].array.shape
        op = names[0].removesuffix("_scale")
        stats[(*module, op, "count")] = jnp.ones((), jnp.int32)
        stats[(*module, op, "sum_of_absmax")] = jnp.full(shape, absmax[module], jnp.float32)
    return flax.traverse_util.unflatten_dict(stats)


def quantize_variables(model, variables: Any, absmax: dict[tuple[str, ...], float], image_size: int, *,
                       rules: Sequence[qwix.QtRule] | None = None) -> tuple[Any, dict]:
    """(the PTQ module, its variables: int8 weights with their scales, static activation scales,
    the float BatchNorm statistics) from float ``variables`` and the calibration ``absmax``."""
    ptq = qwix.quantize_model(model, qwix.PtqProvider(list(rules or int8_rules())))
    x0 = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda x: ptq.init(jax.random.key(0), x, train=False), x0)["params"]
    fvars = _float_variables(variables)
    qparams = qwix.quantize_params(fvars["params"], abstract, quant_stats(absmax, abstract))
    return ptq, {**fvars, "params": qparams}


def int8_model(model, variables: Any, qsl, *, benchmark: str, image_size: int) -> tuple[Any, dict, str]:
    """Calibrate ``model`` on the calibration images of ``qsl`` (read with ``qsl.load_sample``,
    nothing else) and quantize it: (PTQ module, int8 variables, a description for the run)."""
    indices, desc = calibration_indices(qsl, DATASETS[benchmark])
    b = calibration_batch_size(len(indices), image_size)
    absmax = collect_absmax(model, variables, calibration_batches(qsl, indices, b), preprocessing=benchmark)
    ptq, qvars = quantize_variables(model, variables, absmax, image_size)
    return ptq, qvars, f"calibrated on {desc}, batches of {b}"


def int8_leaves(variables: Any) -> tuple[int, int]:
    """(int8 arrays, all arrays) among the leaves of ``variables``: what the int8 model stores."""
    leaves = jax.tree.leaves(variables)
    return sum(np.dtype(a.dtype) == np.int8 for a in leaves), len(leaves)


# ----------------------------------------------------------------------------- int8 beside fp32
def log_accuracy(benchmark: str, outdir: str, qsl) -> tuple[str, float | None, int]:
    """(metric name, value in %, samples) of ``outdir``'s accuracy log; value None without ground truth."""
    from mlperf_jax.inference import accuracy
    path = os.path.join(outdir, "mlperf_log_accuracy.json")
    if DATASETS[benchmark] == "imagenet":
        acc, _, total = accuracy.top1(accuracy.read_accuracy_log(path), qsl.labels)
        return "top-1", acc, total
    from mlperf_jax.inference import coco_accuracy
    n = len({e["qsl_idx"] for e in accuracy.read_accuracy_log(path)})
    if getattr(qsl, "annotation_file", None) is None:
        return "mAP", None, n
    m, counts = coco_accuracy.evaluate_log(path, qsl.annotation_file)
    return "mAP", 100.0 * m, counts["images"]


def accuracy_line(benchmark: str, int8: tuple[str, float | None, int], fp32: tuple[str, float | None, int]) -> str:
    """INT8 accuracy beside FP32's over the same samples, and the benchmark's MLPerf bound."""
    name, a8, n = int8
    _, a32, n32 = fp32
    if n != n32:
        raise ValueError(f"the int8 run logged {n} samples, the fp32 run {n32}")
    if a8 is None or a32 is None:
        return f"int8 vs fp32 over {n} samples: no {name} without annotations (synthetic QSL)"
    if DATASETS[benchmark] == "imagenet":
        from mlperf_jax.inference.accuracy import TARGETS
    else:
        from mlperf_jax.inference.coco_accuracy import TARGETS
    ref, frac = TARGETS[benchmark]
    bound = ref * frac
    kept = (f"int8 keeps {100.0 * a8 / a32:.2f}% of this model's fp32, "
            f"{'>=' if a8 >= frac * a32 else '<'} {100 * frac:.0f}%") if a32 > 0 else "fp32 scores 0"
    return (f"int8 {name}={a8:.3f}% beside fp32 {name}={a32:.3f}% over the same {n} samples ({kept}); MLPerf "
            f"bound {100 * frac:.0f}% of the FP32 reference {ref:.3f}% = {bound:.3f}%: "
            f"{'PASS' if a8 >= bound else 'FAIL'}")


def throughput_line(int8_metric: tuple[str, float], fp32_metric: tuple[str, float]) -> str:
    """Both precisions' headline performance metric and their ratio (speed-up of int8 over fp32)."""
    (name, v8), (_, v32) = int8_metric, fp32_metric
    if "latency" in name:  # SingleStream / MultiStream: lower is better
        speedup = v32 / v8 if v8 else float("nan")
        return (f"int8 {name}={v8:.6g} vs fp32 {name}={v32:.6g}: int8 is {speedup:.2f}x as fast "
                "(fp32/int8 latency)")
    speedup = v8 / v32 if v32 else float("nan")
    return f"int8 {name}={v8:.6g} vs fp32 {name}={v32:.6g}: int8/fp32 = {speedup:.2f}x"
