"""The MLPerf inference PyTorch SSD-ResNet34's weights in our Flax SSD: the converted model gives
the reference layout's (locs, confs) on the same image."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import run_python
from mlperf_jax import pretrained, pretrained_ssd
from mlperf_jax.models import ssd

# The smallest input at which the 1200 model's layers all apply (the last extra block's 3x3
# "valid" conv needs a 3x3 map): 385 -> trunk 49 -> extras 25/13/7/3/1, heads (stride 3) 17/9/5/3/
# 1/1 (at 1200: 150 -> 75/38/19/9/7, heads 50/25/13/7/3/3).
SIZE = 385
SIDES = (17, 9, 5, 3, 1, 1)


def _shapes(model, size):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                             train=False))


@pytest.mark.parametrize("conv_impl", ["xla", "matmul"])
def test_table_names_every_variable_of_our_ssd1200_once(conv_impl):
    model, _ = ssd.ssd_model("ssd1200_resnet34", conv_impl=conv_impl)
    v = _shapes(model, 1200)
    table = pretrained_ssd.ssd_r34_names(conv_impl)
    assert len(set(table.values())) == len(table)
    ours = {f"{col}/{'/'.join(k)}" for col in ("params", "batch_stats")
            for k in traverse_util.flatten_dict(v[col])}
    assert set(table.values()) == ours
    assert table["model.layer2.0.0.downsample.0.weight"].startswith("params/backbone/")
    assert table["additional_blocks.4.2.bias"] == "params/extra4_3x3/bias"


def test_loc_permutation_swaps_coordinate_blocks():
    k = 3
    w = np.arange(4 * k * 2, dtype=np.float32).reshape(4 * k, 2, 1, 1)  # blocks x, y, w, h
    got = pretrained_ssd._permute_loc(w).reshape(4, k, 2)
    blocks = w.reshape(4, k, 2)
    np.testing.assert_array_equal(got, blocks[[1, 0, 3, 2]])  # y, x, h, w


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference layout's state dict and (locs, confs) on a random SIZE x SIZE image, from a
    fresh interpreter (torchvision's model code pulls in triton, which crashes next to TF)."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (the torch extra: pip install -e '.[torch]')")
    out = tmp_path_factory.mktemp("ssd_r34")
    proc = run_python(["tests/_ssd_r34_ref.py", str(SIZE), "81", str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tuple(np.load(out / "sides.npy")) == SIDES
    return (str(out / "ssd_r34.pth"), np.load(out / "input.npy"), np.load(out / "locs.npy"),
            np.load(out / "confs.npy"))


def test_reference_weights_give_reference_outputs(reference):
    path, x, ref_locs, ref_confs = reference
    loaded = pretrained.load(path)  # dispatches on the names: the SSD, not a torchvision ResNet
    assert loaded.source == f"MLPerf SSD-ResNet34 (81 classes) from {path}"
    assert pretrained_ssd.num_classes(loaded) == 81
    model, _ = ssd.ssd_model("ssd1200_resnet34", input_size=SIZE)
    assert ssd.feature_sizes(model) == SIDES
    init = _shapes(model, SIZE)
    params, model_state, unused = pretrained.restore_subtree(
        init["params"], {"batch_stats": init["batch_stats"]}, loaded)
    assert unused == []
    loc, logits = jax.jit(model.apply, static_argnames="train")(
        {"params": params, **model_state}, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
    n = sum(s * s * k for s, k in zip(SIDES, model.boxes_per_location))
    assert loc.shape == (1, n, 4) and logits.shape == (1, n, 81)
    # ours [B, N, (y, x, h, w)] vs the reference's [B, (x, y, w, h), N]; same box order ("khw")
    want_loc = ref_locs.transpose(0, 2, 1)[..., [1, 0, 3, 2]]
    want_logits = ref_confs.transpose(0, 2, 1)
    for got, want in ((loc, want_loc), (logits, want_logits)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max())
    # the trunk alone restores too (here into the training SSD300, whose trunk is the same)
    model300, _ = ssd.ssd_model("ssd300_resnet34")
    init = _shapes(model300, 300)
    trunk = pretrained_ssd.backbone(loaded)
    p300, s300, unused = pretrained.restore_subtree(
        init["params"], {"batch_stats": init["batch_stats"]}, trunk, subtree="backbone")
    assert unused == [] and trunk.source.endswith(", backbone")
    np.testing.assert_array_equal(p300["backbone"]["conv_init"]["kernel"],
                                  params["backbone"]["conv_init"]["kernel"])
    np.testing.assert_array_equal(s300["batch_stats"]["backbone"]["BasicBlock_12"]["BatchNorm_1"]
                                  ["var"], model_state["batch_stats"]["backbone"]["BasicBlock_12"]
                                  ["BatchNorm_1"]["var"])


def test_load_ssd_r34_and_bad_state_dicts(reference):
    path = reference[0]
    loaded = pretrained_ssd.load_ssd_r34(path, conv_impl="matmul")
    assert "MatmulConv_0" in loaded.params["backbone"]["BasicBlock_0"]
    sd = pretrained.torch_state_dict(path)
    assert pretrained_ssd.is_ssd_r34(sd)
    assert pretrained_ssd.is_ssd_r34({f"module.{k}": v for k, v in sd.items()})  # DataParallel
    pretrained_ssd.from_ssd_r34({f"module.{k}": v for k, v in sd.items()})
    with pytest.raises(ValueError, match="lacks 'conf.5.bias'"):
        pretrained_ssd.from_ssd_r34({k: v for k, v in sd.items() if k != "conf.5.bias"})
    with pytest.raises(ValueError, match="unexpected tensor 'model.layer3.0.conv1.weight'"):
        pretrained_ssd.from_ssd_r34({**sd, "model.layer3.0.conv1.weight": np.zeros(1)})
