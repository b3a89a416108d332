"""Pretrained backbone weights: load them, then put them into a freshly initialised model.

SSD starts from an ImageNet-trained ResNet-34 and Mask R-CNN from a ResNet-50, as their MLPerf
reference definitions require. The weights come either from this project's own orbax training
checkpoints or from a torchvision ResNet state dict (``.pth``), converted here to the layout of
``mlperf_jax.models.resnet``. Everything is host numpy and pure; the training driver calls::

    loaded = pretrained.load(path)  # orbax checkpoint directory or torchvision .pth
    params, model_state, unused = pretrained.restore_subtree(
        params, model_state, loaded, subtree="backbone")
    logging.info("pretrained %s; unused: %s", loaded.source, unused)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from mlperf_jax import checkpoint

PyTree = Any

# torchvision ResNet: block type and blocks per stage (layer1..layer4).
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """Loaded weights as nested dicts of numpy arrays, in the Flax layout of our models."""

    params: dict
    model_state: dict  # collections other than params, e.g. {"batch_stats": {...}}
    source: str  # where they came from, for logs and error messages


def load(path: str, arch: str | None = None, conv_impl: str = "xla") -> Pretrained:
    """Orbax checkpoint if ``path`` is a directory, else a PyTorch state dict file: the MLPerf
    inference SSD-ResNet34's (``pretrained_ssd.from_ssd_r34``, the whole detector) or a
    torchvision ResNet's.

    ``arch`` only matters for torchvision files (see ``load_torchvision``), ``conv_impl`` for both.
    """
    if os.path.isdir(path):
        return load_orbax(path)
    if os.path.isfile(path):
        state_dict = torch_state_dict(path)
        from mlperf_jax import pretrained_ssd  # imports this module
        if pretrained_ssd.is_ssd_r34(state_dict):  # the MLPerf inference SSD-ResNet34, whole
            converted = pretrained_ssd.from_ssd_r34(state_dict, conv_impl)
        else:
            converted = from_torchvision(state_dict, arch, conv_impl)
        return dataclasses.replace(converted, source=f"{converted.source} from {path}")
    raise FileNotFoundError(f"no pretrained weights at {os.path.abspath(path)}")


def load_orbax(path: str, step: int | None = None) -> Pretrained:
    """``params`` and model state from one of our training checkpoints.

    ``path`` is a run's ``checkpoints/`` directory (newest step unless ``step`` is given) or one
    step directory inside it (``checkpoints/1200``).
    """
    path = os.path.abspath(path)
    base = os.path.basename(path)
    if step is None and base.isdigit() and os.path.isdir(os.path.join(path, "state")):
        path, step = os.path.dirname(path), int(base)
    variables = checkpoint.restore_variables(path, step)
    variables = {k: _to_numpy(v) for k, v in variables.items()}
    params = variables.pop("params")
    return Pretrained(params, variables, f"orbax checkpoint {path}"
                      + (f" step {step}" if step is not None else ""))


def load_torchvision(path: str, arch: str | None = None, conv_impl: str = "xla") -> Pretrained:
    """A torchvision ResNet state dict (``.pth``) converted to our Flax layout.

    Needs torch (an optional dependency). ``arch`` ("resnet34", "resnet50", ...) is checked
    against the file, or inferred from it when None.
    """
    converted = from_torchvision(torch_state_dict(path), arch, conv_impl)
    return dataclasses.replace(converted, source=f"{converted.source} from {path}")


def torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict file (``torch.save(model.state_dict())``) as names -> numpy arrays.

    Needs torch (an optional dependency); loads with ``weights_only=True`` (no pickled code).
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError("loading PyTorch weights needs PyTorch: pip install torch") from e
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} is not a PyTorch state dict (a mapping of names to tensors)")
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state_dict.items()}


def torchvision_names(arch: str, conv_impl: str = "xla") -> dict[str, str]:
    """The conversion table: torchvision state-dict name -> Flax '/'-path, collection first.

    Our ``ResNet`` names its unnamed submodules by class and call order: blocks are numbered
    across stages (``BottleneckBlock_0`` .. ``_15``), convolutions and norms within a block
    (``Conv_0``/``BatchNorm_0`` are torchvision's ``conv1``/``bn1``); the downsampling shortcut is
    ``proj_conv``/``proj_bn`` and the classifier ``Dense_0``. ``conv_impl="matmul"`` names the
    convolutions ``MatmulConv_i`` instead (same shapes, different names).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHS)}")
    if conv_impl not in ("xla", "matmul"):
        raise ValueError(f"conv_impl must be xla or matmul, got {conv_impl!r}")
    kind, stages = ARCHS[arch]
    block = "BottleneckBlock" if kind == "bottleneck" else "BasicBlock"
    conv = "MatmulConv" if conv_impl == "matmul" else "Conv"
    convs_per_block = 3 if kind == "bottleneck" else 2

    table: dict[str, str] = {"conv1.weight": "params/conv_init/kernel"}
    table.update(_bn("bn1", "bn_init"))
    b = 0
    for s, n_blocks in enumerate(stages):
        for j in range(n_blocks):
            tv, fx = f"layer{s + 1}.{j}", f"{block}_{b}"
            for k in range(convs_per_block):
                table[f"{tv}.conv{k + 1}.weight"] = f"params/{fx}/{conv}_{k}/kernel"
                table.update(_bn(f"{tv}.bn{k + 1}", f"{fx}/BatchNorm_{k}"))
            if j == 0 and (s > 0 or kind == "bottleneck"):  # channels or stride change
                table[f"{tv}.downsample.0.weight"] = f"params/{fx}/proj_conv/kernel"
                table.update(_bn(f"{tv}.downsample.1", f"{fx}/proj_bn"))
            b += 1
    table["fc.weight"] = "params/Dense_0/kernel"
    table["fc.bias"] = "params/Dense_0/bias"
    return table


def _bn(tv: str, fx: str) -> dict[str, str]:
    """A torchvision BatchNorm2d's four tensors (``num_batches_tracked`` is dropped)."""
    return {f"{tv}.weight": f"params/{fx}/scale", f"{tv}.bias": f"params/{fx}/bias",
            f"{tv}.running_mean": f"batch_stats/{fx}/mean",
            f"{tv}.running_var": f"batch_stats/{fx}/var"}


def infer_arch(state_dict: Mapping[str, Any]) -> str:
    """The ``ARCHS`` name of a torchvision ResNet state dict, from its block types and counts."""
    kind = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    stages = tuple(len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{s}.")})
                   for s in range(1, 5))
    for name, spec in ARCHS.items():
        if spec == (kind, stages):
            return name
    raise ValueError(f"state dict is no known torchvision ResNet ({kind} blocks {stages}; "
                     f"known: {', '.join(ARCHS)})")


def from_torchvision(state_dict: Mapping[str, Any], arch: str | None = None,
                     conv_impl: str = "xla") -> Pretrained:
    """Convert a torchvision ResNet state dict (names -> numpy arrays) to our Flax layout.

    Convolutions go from torch's OIHW to Flax's HWIO, the classifier from [out, in] to [in, out];
    BatchNorm weight/bias/running_mean/running_var become scale/bias/mean/var.
    """
    found = infer_arch(state_dict)
    if arch is not None and arch != found:
        raise ValueError(f"state dict holds a {found}, not the requested {arch}")
    table = torchvision_names(found, conv_impl)
    for name in state_dict:
        if name not in table and not name.endswith("num_batches_tracked"):
            raise ValueError(f"unexpected tensor {name!r} in a {found} state dict")
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for name, path in table.items():
        if name not in state_dict:
            raise ValueError(f"{found} state dict lacks {name!r}")
        w = np.asarray(state_dict[name], np.float32)
        if path.endswith("/kernel"):
            w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
        flat[tuple(path.split("/"))] = np.ascontiguousarray(w)
    tree = traverse_util.unflatten_dict(flat)
    params = tree.pop("params")
    return Pretrained(params, tree, f"torchvision {found}")


def restore_subtree(params: PyTree, model_state: PyTree, loaded: Pretrained,
                    subtree: str = "") -> tuple[dict, dict, list[str]]:
    """Copy ``loaded`` into the ``subtree`` ('/'-separated, "" for all) of each collection.

    Every leaf of the target subtree must be in ``loaded`` with the same shape (else ValueError
    naming the first path); it takes the target's dtype. Returns new ``params`` and
    ``model_state`` (leaves outside the subtree untouched, inputs not modified) and the sorted
    paths of ``loaded`` that the target has no place for (e.g. the classifier of a detection
    backbone), for the log.
    """
    prefix = tuple(p for p in subtree.split("/") if p)
    targets = {"params": _unfreeze(params), **_unfreeze(model_state)}
    sources = {"params": loaded.params, **loaded.model_state}
    used: set[str] = set()
    for col, tree in targets.items():
        node = tree
        for p in prefix:
            if not isinstance(node, Mapping) or p not in node:
                node = None
                break
            node = node[p]
        if node is None:
            if col in sources:
                raise ValueError(f"the model's {col} have no subtree {subtree!r} to restore into")
            continue  # a model-state collection that the pretrained model does not have
        if not isinstance(node, Mapping):
            raise ValueError(f"subtree {subtree!r} names a single array, not a subtree")
        src = traverse_util.flatten_dict(sources.get(col, {}), sep="/")
        dst = traverse_util.flatten_dict(node, sep="/")
        new = {}
        for key in sorted(dst):
            where = "/".join((col, *prefix, key))
            if key not in src:
                raise ValueError(f"pretrained weights ({loaded.source}) have nothing for {where}")
            if np.shape(src[key]) != np.shape(dst[key]):
                raise ValueError(f"shape mismatch at {where}: the model has {np.shape(dst[key])}, "
                                 f"the pretrained weights {np.shape(src[key])}")
            new[key] = np.asarray(src[key], dtype=dst[key].dtype)
            used.add(f"{col}/{key}")
        targets[col] = _replace(tree, prefix, traverse_util.unflatten_dict(new, sep="/"))
    unused = sorted(f"{col}/{key}" for col, tree in sources.items()
                    for key in traverse_util.flatten_dict(tree, sep="/")
                    if f"{col}/{key}" not in used)
    new_params = targets.pop("params")
    return new_params, targets, unused


def _replace(tree: dict, prefix: tuple[str, ...], value: Any) -> Any:
    """A copy of ``tree`` with the node at ``prefix`` replaced (copies only along the path)."""
    if not prefix:
        return value
    return {**tree, prefix[0]: _replace(tree[prefix[0]], prefix[1:], value)}


def _unfreeze(tree: PyTree) -> dict:
    """Plain nested dicts (flax FrozenDicts and other mappings included)."""
    if isinstance(tree, Mapping):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree


def _to_numpy(tree: PyTree) -> PyTree:
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
