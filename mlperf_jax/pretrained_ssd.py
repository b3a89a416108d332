"""The MLPerf inference v0.5 PyTorch SSD-ResNet34 ("ssd-large", 1200x1200) in our Flax ``SSD``.

The reference (mlcommons/inference ``vision/classification_and_detection/python/models/
ssd_r34.py`` ``SSD_R34`` with ``base_model_r34.py`` ``ResNet34``) names its state dict:

- ``model.layer1.{0,1}``: torchvision resnet34's ``conv1``/``bn1``; ``model.layer1.{4,5}.j``: its
  ``layer1``/``layer2`` blocks; ``model.layer2.0.j``: its ``layer3`` blocks (block 0 at stride 1).
  These go to ``params["backbone"]`` through ``pretrained.torchvision_names("resnet34")``.
- ``additional_blocks.i.0`` (1x1 conv, bias) and ``additional_blocks.i.2`` (3x3 conv, bias), i in
  0..4: our ``extra{i}_1x1`` / ``extra{i}_3x3``.
- ``loc.i`` / ``conf.i`` (3x3 heads, stride 3, bias), i in 0..5: our ``loc{i}`` / ``conf{i}``.

Convolutions go OIHW -> HWIO. Both networks lay a head's channels out coordinate-major (channel
``d*k + kind``, the reference's ``.view(B, 4, -1)``), so the conf heads need nothing more; the loc
heads' coordinate blocks are permuted (x, y, w, h) -> (y, x, h, w), our box-code order
(``models/ssd_boxes.py``). Our ``loc [B, N, 4]`` is then the reference's ``locs [B, 4, N]``
transposed with its rows reordered [1, 0, 3, 2], and our ``logits [B, N, C]`` its ``confs
[B, C, N]`` transposed; both flatten boxes in the same "khw" order. ::

    loaded = pretrained_ssd.load_ssd_r34("ssd_r34_state_dict.pth")  # or pretrained.load(path)
    model, boxes = ssd.ssd_model("ssd1200_resnet34", num_classes=pretrained_ssd.num_classes(loaded))
    params, model_state, unused = pretrained.restore_subtree(params, model_state, loaded)
    # or only the trunk, e.g. to start SSD300 training from it:
    params, model_state, unused = pretrained.restore_subtree(
        params, model_state, pretrained_ssd.backbone(loaded), subtree="backbone")
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from mlperf_jax import pretrained

#: the reference's additional blocks and feature levels (heads)
NUM_EXTRAS = 5
NUM_LEVELS = 6
#: our loc channel block d is the reference's block LOC_PERMUTATION[d]: (x, y, w, h) -> (y, x, h, w)
LOC_PERMUTATION = (1, 0, 3, 2)

# reference backbone prefix -> torchvision resnet34 prefix (base_model_r34.ResNet34: layer1 is
# children()[:6] of torchvision's resnet34, layer2 is children()[6:7], i.e. layer3)
_BACKBONE_PREFIXES = (("model.layer1.0.", "conv1."), ("model.layer1.1.", "bn1."),
                      ("model.layer1.4.", "layer1."), ("model.layer1.5.", "layer2."),
                      ("model.layer2.0.", "layer3."))


def ssd_r34_names(conv_impl: str = "xla") -> dict[str, str]:
    """The conversion table: reference state-dict name -> Flax '/'-path, collection first.

    ``conv_impl`` is the ``SSD``'s (it names the trunk's convolutions, see
    ``pretrained.torchvision_names``). ``num_batches_tracked`` counters are not in the table.
    """
    tv_to_ref = {tv: ref for ref, tv in _BACKBONE_PREFIXES}
    table: dict[str, str] = {}
    for tv_name, path in pretrained.torchvision_names("resnet34", conv_impl).items():
        for tv_prefix, ref_prefix in tv_to_ref.items():
            if tv_name.startswith(tv_prefix):
                col, rest = path.split("/", 1)
                table[ref_prefix + tv_name[len(tv_prefix):]] = f"{col}/backbone/{rest}"
                break  # layer4 and fc: not part of the SSD trunk
    for i in range(NUM_EXTRAS):
        for idx, kind in ((0, "1x1"), (2, "3x3")):
            for w, f in (("weight", "kernel"), ("bias", "bias")):
                table[f"additional_blocks.{i}.{idx}.{w}"] = f"params/extra{i}_{kind}/{f}"
    for i in range(NUM_LEVELS):
        for head in ("loc", "conf"):
            for w, f in (("weight", "kernel"), ("bias", "bias")):
                table[f"{head}.{i}.{w}"] = f"params/{head}{i}/{f}"
    return table


def is_ssd_r34(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict looks like the reference SSD-ResNet34's (not a torchvision one)."""
    keys = {_strip(k) for k in state_dict}
    return {"model.layer1.0.weight", "additional_blocks.0.0.weight", "loc.0.weight"} <= keys


def _strip(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name  # DataParallel


def _permute_loc(w: np.ndarray) -> np.ndarray:
    """Reorder the 4 coordinate blocks of a loc head's output channels (axis 0, torch layout)."""
    k = w.shape[0] // 4
    if w.shape[0] != 4 * k:
        raise ValueError(f"a loc head with {w.shape[0]} output channels is not k boxes x 4")
    return w.reshape(4, k, *w.shape[1:])[list(LOC_PERMUTATION)].reshape(w.shape)


def from_ssd_r34(state_dict: Mapping[str, Any], conv_impl: str = "xla") -> pretrained.Pretrained:
    """Convert the reference SSD-ResNet34 state dict (names -> numpy arrays or tensors).

    Every name must be in ``ssd_r34_names`` (``num_batches_tracked`` aside) and every table entry
    present, else ValueError. The result fills a whole ``ssd_model("ssd1200_resnet34")``
    (``restore_subtree(..., subtree="")``) or just its ``"backbone"``.
    """
    sd = {_strip(k): v for k, v in state_dict.items()}
    table = ssd_r34_names(conv_impl)
    for name in sd:
        if name not in table and not name.endswith("num_batches_tracked"):
            raise ValueError(f"unexpected tensor {name!r} in an SSD-ResNet34 state dict")
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for name, path in table.items():
        if name not in sd:
            raise ValueError(f"SSD-ResNet34 state dict lacks {name!r}")
        w = np.asarray(sd[name], np.float32)
        if name.startswith("loc."):
            w = _permute_loc(w)
        if path.endswith("/kernel"):
            w = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        flat[tuple(path.split("/"))] = np.ascontiguousarray(w)
    tree = traverse_util.unflatten_dict(flat)
    params = tree.pop("params")
    num_classes = sd["conf.0.weight"].shape[0] // (sd["loc.0.weight"].shape[0] // 4)
    return pretrained.Pretrained(params, tree, f"MLPerf SSD-ResNet34 ({num_classes} classes)")


def num_classes(loaded: pretrained.Pretrained) -> int:
    """Classes (background included) of converted SSD weights: conf0's outputs / loc0's boxes."""
    return (loaded.params["conf0"]["kernel"].shape[-1] * 4
            // loaded.params["loc0"]["kernel"].shape[-1])


def backbone(loaded: pretrained.Pretrained) -> pretrained.Pretrained:
    """Only the ResNet-34 trunk of converted SSD weights, rooted as ``restore_subtree(...,
    subtree="backbone")`` expects (as a torchvision resnet34 converts)."""
    return pretrained.Pretrained(
        loaded.params["backbone"],
        {col: tree["backbone"] for col, tree in loaded.model_state.items() if "backbone" in tree},
        f"{loaded.source}, backbone")


def load_ssd_r34(path: str, conv_impl: str = "xla") -> pretrained.Pretrained:
    """The reference SSD-ResNet34 from a state-dict file (``torch.save(model.state_dict())``).

    Loaded with ``weights_only=True``: a pickled whole ``SSD_R34`` module (as the reference's own
    backend loads with ``torch.load(path, weights_only=False)``) is refused; re-save its
    ``state_dict()`` with the reference code importable, and load that.
    """
    state_dict = pretrained.torch_state_dict(path)
    converted = from_ssd_r34(state_dict, conv_impl)
    return dataclasses.replace(converted, source=f"{converted.source} from {path}")
