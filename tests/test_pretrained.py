"""Pretrained backbone loading: torchvision ResNets against torch's own forward pass, and orbax
round trips through the training checkpointer."""
import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import run_python
from mlperf_jax import pretrained
from mlperf_jax.models import resnet


def _flax_resnet(arch, **kw):
    if arch == "resnet50":
        return resnet.ResNet50(**kw)
    stages = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}[arch]
    return resnet.ResNet(stage_sizes=stages, block_cls=resnet.BasicBlock, **kw)


def _paths(tree, prefix):
    return {f"{prefix}/{'/'.join(k)}" for k in _flat(tree)}


def _flat(tree):
    from flax import traverse_util
    return traverse_util.flatten_dict(tree)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("conv_impl", ["xla", "matmul"])
def test_table_names_every_variable_of_our_resnet_once(arch, conv_impl):
    model = _flax_resnet(arch, conv_impl=conv_impl)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                          train=False))
    table = pretrained.torchvision_names(arch, conv_impl)
    assert len(set(table.values())) == len(table)
    assert set(table.values()) == _paths(v["params"], "params") | _paths(v["batch_stats"],
                                                                         "batch_stats")


def _random_torchvision(arch, tmp_path, size):
    """A torchvision ResNet with random weights and random BatchNorm statistics, in eval mode,
    saved as a state dict the way torchvision publishes its weights, and its logits on a random
    image. Built in a fresh interpreter: torchvision's model code pulls in triton, which crashes
    a process that has loaded TensorFlow (as the test process has)."""
    if importlib.util.find_spec("torchvision") is None:  # found, not imported (see above)
        pytest.skip("torchvision is not installed (the torch extra: pip install -e '.[torch]')")
    proc = run_python(["tests/_torchvision_ref.py", arch, str(size), str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    x = np.load(tmp_path / f"{arch}_{size}_input.npy")
    ref = np.load(tmp_path / f"{arch}_{size}_logits.npy")
    return str(tmp_path / f"{arch}.pth"), x, ref


def _logits(x, flax_model, variables):
    apply = jax.jit(flax_model.apply, static_argnames="train")
    out = apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
    return np.asarray(out)


# Odd sizes: every stride-2 layer then sees an odd input, where Flax's "SAME" padding equals
# torch's symmetric padding (65 -> 33 -> 17 -> 9 -> 5 -> 3; 33 -> 17 -> 9 -> 5 -> 3 -> 2).
@pytest.mark.parametrize("arch,conv_impl,size", [("resnet34", "xla", 65), ("resnet50", "xla", 65),
                                                 ("resnet50", "matmul", 33)])
def test_torchvision_weights_give_torchvision_logits(arch, conv_impl, size, tmp_path):
    path, x, ref = _random_torchvision(arch, tmp_path, size)
    loaded = pretrained.load(path)  # the arch comes from the file
    assert loaded.source == f"torchvision {arch} from {path}"
    flax_model = _flax_resnet(arch, conv_impl=conv_impl)
    # Shapes are enough for a target; the driver passes initialised arrays (tested below).
    init = jax.eval_shape(lambda: flax_model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                                  train=False))
    loaded = pretrained.load(path, arch=arch, conv_impl=conv_impl)
    params, model_state, unused = pretrained.restore_subtree(
        init["params"], {"batch_stats": init["batch_stats"]}, loaded)
    assert unused == []
    out = _logits(x, flax_model, {"params": params, **model_state})
    # float32 through 34-50 layers, summed in different orders: relative to the logits' scale.
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    other = "resnet50" if arch == "resnet34" else "resnet34"
    with pytest.raises(ValueError, match=f"holds a {arch}, not the requested {other}"):
        pretrained.load(path, arch=other)


# Even sizes: Flax's "SAME" pads a stride-2 window (0, 1) there, torch pads (1, 1); pad_mode="torch"
# pads as torch does (64 -> 32 -> 16 -> 8 -> 4 -> 2: every strided layer sees an even input).
def test_torchvision_logits_at_even_image_size_with_torch_padding(tmp_path):
    path, x, ref = _random_torchvision("resnet34", tmp_path, 64)
    loaded = pretrained.load(path)
    out = _logits(x, _flax_resnet("resnet34", pad_mode="torch"),
                  {"params": loaded.params, **loaded.model_state})
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    # The default ("same", TF's windows) is what the MLPerf TF ResNet-50 uses, and differs here.
    same = _logits(x, _flax_resnet("resnet34"), {"params": loaded.params, **loaded.model_state})
    assert not np.allclose(same, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_pad_mode_is_checked():
    with pytest.raises(ValueError, match="pad_mode must be one of same, torch, got 'valid'"):
        _flax_resnet("resnet18", pad_mode="valid").init(jax.random.key(0),
                                                        jnp.zeros((1, 32, 32, 3)), train=False)


def test_torchvision_without_torch_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match="pip install torch"):
        pretrained.load(str(path))


def test_missing_path_and_unknown_arch():
    with pytest.raises(FileNotFoundError, match="no pretrained weights at"):
        pretrained.load("/nonexistent/weights.pth")
    with pytest.raises(ValueError, match="unknown arch 'resnet9'"):
        pretrained.torchvision_names("resnet9")


def _tiny(seed, num_filters=8):
    """A tiny ResNet's params and model state, random numbers everywhere (the model's own init
    has zero BatchNorm scales and unit variances, which would compare equal whatever happens)."""
    model = resnet.ResNet(stage_sizes=[1, 1], block_cls=resnet.BasicBlock, num_filters=num_filters,
                          num_classes=5, small_stem=True)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                                               train=False))
    rng = np.random.default_rng(seed)
    v = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
    return v["params"], {"batch_stats": v["batch_stats"]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny ResNet's train state, saved at step 7 by the training checkpointer."""
    from mlperf_jax import checkpoint
    from mlperf_jax.driver.compile import TrainState  # what the training driver saves
    params, model_state = _tiny(seed=0)
    tx = optax.sgd(0.1, momentum=0.9)
    state = TrainState(step=jnp.asarray(7, jnp.int32), params=params, model_state=model_state,
                       opt_state=tx.init(params))
    directory = str(tmp_path_factory.mktemp("run") / "checkpoints")
    ckpt = checkpoint.Checkpointer(directory)
    ckpt.save(7, state, {"train_time_s": 1.0})
    ckpt.close()
    return directory, params, model_state


def _assert_tree_equal(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def test_orbax_checkpoint_round_trip(saved):
    directory, params, model_state = saved
    for path in (directory, f"{directory}/7"):  # a run's checkpoints/ or one step in it
        loaded = pretrained.load(path)
        _assert_tree_equal(loaded.params, params)
        _assert_tree_equal(loaded.model_state, model_state)
        fresh_params, fresh_state = jax.tree.map(jnp.asarray, _tiny(seed=5))  # as init gives
        new_params, new_state, unused = pretrained.restore_subtree(fresh_params, fresh_state,
                                                                   loaded)
        assert unused == []
        _assert_tree_equal(new_params, params)
        _assert_tree_equal(new_state, model_state)
        assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(new_params))
    assert "step 7" in pretrained.load(f"{directory}/7").source


def test_subtree_restore_leaves_the_rest_alone_and_reports_extras(saved):
    directory, params, model_state = saved
    loaded = pretrained.load(directory)
    backbone, backbone_state = _tiny(seed=3)
    del backbone["Dense_0"]
    before = np.array(backbone["conv_init"]["kernel"])  # a detection backbone has no classifier
    head = {"kernel": np.full((8, 4), 2.0, np.float32), "bias": np.zeros((4,), np.float32)}
    target = {"backbone": backbone, "head": head}
    target_state = {"batch_stats": {"backbone": backbone_state["batch_stats"]}}
    new_params, new_state, unused = pretrained.restore_subtree(target, target_state, loaded,
                                                               subtree="backbone")
    assert unused == ["params/Dense_0/bias", "params/Dense_0/kernel"]
    assert new_params["head"]["kernel"] is head["kernel"] and new_params["head"]["bias"] is \
        head["bias"]
    expected = dict(params)
    del expected["Dense_0"]
    _assert_tree_equal(new_params["backbone"], expected)
    _assert_tree_equal(new_state["batch_stats"]["backbone"], model_state["batch_stats"])
    np.testing.assert_array_equal(target["backbone"]["conv_init"]["kernel"], before)  # pure


def test_shape_mismatch_missing_weights_and_missing_subtree_name_the_path(saved):
    loaded = pretrained.load(saved[0])
    wide, wide_state = _tiny(seed=0, num_filters=16)
    with pytest.raises(ValueError, match="shape mismatch at params/backbone/BasicBlock_0/"
                                         r"BatchNorm_0/bias: the model has \(16,\)"):
        pretrained.restore_subtree({"backbone": wide},
                                   {"batch_stats": {"backbone": wide_state["batch_stats"]}},
                                   loaded, subtree="backbone")
    params, model_state = _tiny(seed=0)
    params["extra"] = {"kernel": np.zeros((3, 3), np.float32)}
    with pytest.raises(ValueError, match="have nothing for params/extra/kernel"):
        pretrained.restore_subtree(params, model_state, loaded)
    with pytest.raises(ValueError, match="have no subtree 'backbone'"):
        pretrained.restore_subtree(params, model_state, loaded, subtree="backbone")
