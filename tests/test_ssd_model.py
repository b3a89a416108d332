"""The SSD networks (models/ssd.py): shapes and box counts of every named model (shapes only for the
big ones), hand-counted parameters, the box order of the flattened heads, torchvision ResNet-34
weights in the backbone against torchvision's own layer3, and one train step of the tiny model."""
import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from conftest import run_python
from mlperf_jax import pretrained
from mlperf_jax.models import ssd, ssd_boxes

# name: (feature map sides, boxes, classes)
EXPECTED = {
    "ssd300_resnet34": ((38, 19, 10, 5, 3, 1), 8732, 81),
    "ssd1200_resnet34": ((50, 25, 13, 7, 3, 3), 15130, 81),
    "ssd300_mobilenet_v1": ((19, 10, 5, 3, 2, 1), 1917, 91),
    "ssd_tiny": ((8, 4, 2), 336, 5),
}


def _shapes(model, batch=1):
    x = jnp.zeros((batch, model.input_size, model.input_size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _init(model):
    """Real initial variables, jitted, with an "rbg" key: XLA:CPU compiles threefry's hash for
    every parameter (about 0.6 s each on 2 cores, 7 s for ssd_tiny) and RngBitGenerator in a
    fraction of that."""
    x = jnp.zeros((1, model.input_size, model.input_size, 3))
    return jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x, train=False))()


def _count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_output_shapes_and_box_counts(name):
    sides, n, classes = EXPECTED[name]
    model, boxes = ssd.ssd_model(name)
    assert ssd.feature_sizes(model) == sides
    assert ssd.num_boxes(model) == n
    v = _shapes(model)
    x = jax.ShapeDtypeStruct((2, model.input_size, model.input_size, 3), jnp.float32)
    loc, logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, x)
    assert (loc.shape, logits.shape) == ((2, n, 4), (2, n, classes))
    assert loc.dtype == logits.dtype == jnp.float32
    assert ssd.default_box_count(boxes) == n
    if isinstance(boxes, ssd_boxes.BoxSpec):
        assert tuple(boxes.feature_sizes) == sides and boxes.num_boxes == n
        assert tuple(boxes.boxes_per_location) == model.boxes_per_location
        assert boxes.image_size == model.input_size
        boxes = ssd_boxes.default_boxes(boxes)
    assert boxes.shape == (n, 4)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model, _ = ssd.ssd_model("ssd300_resnet34", dtype=jnp.bfloat16)
    v = _shapes(model)
    assert {x.dtype for x in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 300, 300, 3)), train=False), v)
    assert {o.dtype for o in out} == {jnp.dtype(jnp.float32)}


def test_resnet34_trunk_is_38x38x256_at_300():
    model, _ = ssd.ssd_model("ssd300_resnet34")
    trunk = ssd.backbone_module(model)
    x = jnp.zeros((1, 300, 300, 3))
    v = jax.eval_shape(lambda: trunk.init(jax.random.key(0), x, train=False))
    (out,) = jax.eval_shape(lambda v: trunk.apply(v, x, train=False), v)
    assert out.shape == (1, 38, 38, 256)
    # 1200x1200 (the inference model): 150x150x256
    x = jnp.zeros((1, 1200, 1200, 3))
    (out,) = jax.eval_shape(lambda v: trunk.apply(v, x, train=False), v)
    assert out.shape == (1, 150, 150, 256)


def _conv(k, cin, cout):
    return k * k * cin * cout + cout  # kernel + bias


def test_parameter_counts_by_hand():
    model, _ = ssd.ssd_model("ssd300_resnet34")
    params = _shapes(model)["params"]
    # Extras: (in, 1x1 mid, 3x3 out), the reference's out_chan = [256, 512, 512, 256, 256, 256].
    extras = [(256, 256, 512), (512, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256)]
    for i, (cin, mid, out) in enumerate(extras):
        assert _count(params[f"extra{i}_1x1"]) == _conv(1, cin, mid)
        assert _count(params[f"extra{i}_3x3"]) == _conv(3, mid, out)
    assert sum(_count(params[f"extra{i}_{s}"]) for i in range(5) for s in ("1x1", "3x3")) \
        == 3_574_400
    heads = 0
    for i, (cin, k) in enumerate(zip((256, 512, 512, 256, 256, 256), (4, 6, 6, 6, 4, 4))):
        assert _count(params[f"loc{i}"]) == _conv(3, cin, 4 * k)
        assert _count(params[f"conf{i}"]) == _conv(3, cin, 81 * k)
        heads += _conv(3, cin, 85 * k)  # loc and conf: 4 + 81 outputs per box
    assert sum(_count(params[f"{h}{i}"]) for h in ("loc", "conf") for i in range(6)) == heads \
        == 8_227_830
    # ResNet-34 through layer3: stem 7x7 conv + BN; layer1 3 blocks of 2 3x3 64->64 convs + 2 BNs;
    # layer2/layer3 the same at 128/256 with a 1x1 projection (+ BN) in the first block.
    def block(cin, c, proj):
        return 9 * cin * c + 9 * c * c + 4 * c + (cin * c + 2 * c if proj else 0)
    backbone = (49 * 3 * 64 + 128 + 3 * block(64, 64, False)
                + block(64, 128, True) + 3 * block(128, 128, False)
                + block(128, 256, True) + 5 * block(256, 256, False))
    assert _count(params["backbone"]) == backbone == 8_170_304
    assert _count(params) == backbone + 3_574_400 + 8_227_830 == 19_972_534
    # The 1200 model has the same parameters (only strides differ): reference weights fit both.
    big, _ = ssd.ssd_model("ssd1200_resnet34")
    assert jax.tree.map(lambda s: s.shape, _shapes(big)["params"]) == \
        jax.tree.map(lambda s: s.shape, params)


def test_mobilenet_extras_and_heads_by_hand():
    model, _ = ssd.ssd_model("ssd300_mobilenet_v1")
    params = _shapes(model)["params"]
    for i, (cin, mid, out) in enumerate([(1024, 256, 512), (512, 128, 256), (256, 128, 256),
                                         (256, 64, 128)]):
        assert _count(params[f"extra{i}_1x1"]) == _conv(1, cin, mid)
        assert _count(params[f"extra{i}_3x3"]) == _conv(3, mid, out)
    for i, (cin, k) in enumerate(zip((512, 1024, 512, 256, 256, 128), (3, 6, 6, 6, 6, 6))):
        assert _count(params[f"loc{i}"]) == _conv(1, cin, 4 * k)  # 1x1 heads, as TF's
        assert _count(params[f"conf{i}"]) == _conv(1, cin, 91 * k)
    # The backbone is MobileNet-v1's stem and 13 blocks, named as models/mobilenet.py names them.
    from mlperf_jax.models import mobilenet
    cls = jax.eval_shape(lambda: mobilenet.MobileNetV1().init(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))["params"]
    del cls["classifier"]
    assert jax.tree.map(lambda s: s.shape, params["backbone"]) == \
        jax.tree.map(lambda s: s.shape, cls)


def _codes(h, w, k, d, order):
    """A head output whose channel for (kind, coordinate) at (i, j) holds the number i*1e4 +
    j*1e2 + kind*10 + coordinate, laid out as ``order`` says."""
    i, j, kind, coord = np.meshgrid(np.arange(h), np.arange(w), np.arange(k), np.arange(d),
                                    indexing="ij")
    code = (i * 10_000 + j * 100 + kind * 10 + coord).astype(np.float32)  # [h, w, k, d]
    if order == "khw":  # channel = coordinate * k + kind
        code = code.transpose(0, 1, 3, 2)
    return code.reshape(1, h, w, k * d)


@pytest.mark.parametrize("order", ["khw", "hwk"])
def test_flatten_order(order):
    h, w, k, d = 3, 4, 6, 5
    out = np.asarray(ssd.flatten_head(jnp.asarray(_codes(h, w, k, d, order)), k, d, order))[0]
    n = np.arange(h * w * k)
    if order == "khw":  # box n = kind * h*w + i * w + j
        kind, i, j = n // (h * w), n // w % h, n % w
    else:  # box n = (i * w + j) * k + kind
        i, j, kind = n // (w * k), n // k % w, n % k
    expected = i[:, None] * 10_000 + j[:, None] * 100 + kind[:, None] * 10 + np.arange(d)
    np.testing.assert_array_equal(out, expected)


def _flattened_positions(sides, per_location, order):
    """(level, kind, row, column) of every flattened box, read back from coded head outputs."""
    got = []
    for level, (f, k) in enumerate(zip(sides, per_location)):
        code = np.asarray(ssd.flatten_head(jnp.asarray(_codes(f, f, k, 1, order)), k, 1, order))
        code = code[0, :, 0].astype(np.int64)
        got.append(np.stack([np.full_like(code, level), code // 10 % 10, code // 10_000,
                             code // 100 % 100], axis=-1))
    return np.concatenate(got)


def test_heads_line_up_with_the_reference_default_box_order():
    """Box n of the flattened outputs sits at the box kind, row and column that the MLPerf
    reference's DefaultBoxes gives box n: for each level, each kind, each row i, each column j,
    centre ((i + 0.5) / fk, (j + 0.5) / fk) with fk = 300 / step."""
    sides, per_location = (38, 19, 10, 5, 3, 1), (4, 6, 6, 6, 4, 4)
    steps = (8, 16, 32, 64, 100, 300)
    ref = np.array([(level, kind, i, j) for level, (f, k) in enumerate(zip(sides, per_location))
                    for kind in range(k) for i in range(f) for j in range(f)])
    got = _flattened_positions(sides, per_location, "khw")
    assert got.shape == ref.shape == (8732, 4)
    np.testing.assert_array_equal(got, ref)
    model, _ = ssd.ssd_model("ssd300_resnet34")
    assert model.flatten_order == "khw"
    # The box utilities' own order, and their centres in [cy, cx, h, w]
    assert ssd_boxes.FLATTEN_ORDER == model.flatten_order
    anchors = np.asarray(ssd_boxes.default_boxes(ssd_boxes.SSD300))
    fk = 300 / np.asarray(steps, np.float64)[got[:, 0]]
    np.testing.assert_allclose(anchors[:, 0], np.clip((got[:, 2] + 0.5) / fk, 0, 1), atol=1e-6)
    np.testing.assert_allclose(anchors[:, 1], np.clip((got[:, 3] + 0.5) / fk, 0, 1), atol=1e-6)
    for level in range(6):  # one size per (level, kind)
        for kind in range(per_location[level]):
            sel = (got[:, 0] == level) & (got[:, 1] == kind)
            assert len(np.unique(anchors[sel, 2:], axis=0)) == 1


def test_mobilenet_heads_line_up_with_the_tf_anchor_order():
    """"hwk": per level, row, column, then the kind fastest, as the TF anchor generator."""
    model, boxes = ssd.ssd_model("ssd300_mobilenet_v1")
    assert model.flatten_order == "hwk"
    sides, per_location = (19, 10, 5, 3, 2, 1), (3, 6, 6, 6, 6, 6)
    got = _flattened_positions(sides, per_location, "hwk")
    ref = np.array([(level, kind, i, j) for level, (f, k) in enumerate(zip(sides, per_location))
                    for i in range(f) for j in range(f) for kind in range(k)])
    np.testing.assert_array_equal(got, ref)
    anchors = np.asarray(boxes)
    f = np.asarray(sides, np.float64)[got[:, 0]]
    np.testing.assert_allclose(anchors[:, 0], (got[:, 2] + 0.5) / f, atol=1e-6)
    np.testing.assert_allclose(anchors[:, 1], (got[:, 3] + 0.5) / f, atol=1e-6)
    for level in range(6):  # one size per (level, kind)
        for kind in range(per_location[level]):
            sel = (got[:, 0] == level) & (got[:, 1] == kind)
            assert len(np.unique(anchors[sel, 2:], axis=0)) == 1


def test_network_channel_layout_end_to_end():
    """Through the whole network: with zero head kernels, logits[n, c] is the conf bias of
    (kind of box n, class c) in the layout flatten_head assumes (channel = class * k + kind)."""
    model, _ = ssd.ssd_model("ssd_tiny")
    v = _init(model)
    params = jax.tree.map(np.asarray, v["params"])
    k, c = 4, model.num_classes
    for level in range(3):
        params[f"conf{level}"]["kernel"] = np.zeros_like(params[f"conf{level}"]["kernel"])
        kind, cls = np.meshgrid(np.arange(k), np.arange(c), indexing="ij")
        bias = (level * 100 + kind * 10 + cls).astype(np.float32)  # [k, c]
        params[f"conf{level}"]["bias"] = bias.T.reshape(-1)  # channel = class * k + kind
    x = jnp.asarray(np.random.RandomState(0).rand(2, 64, 64, 3), jnp.float32)
    _, logits = jax.jit(lambda v, x: model.apply(v, x, train=False))({**v, "params": params}, x)
    expected = [level * 100 + kind * 10 + np.arange(c)
                for level, f in enumerate((8, 4, 2)) for kind in range(k) for _ in range(f * f)]
    np.testing.assert_array_equal(np.asarray(logits[1]), np.array(expected, np.float32))


def test_initialisation_xavier_uniform_kernels_and_torch_biases():
    # The tiny trunk with one extra block, as the reference's extras (cheap to initialise).
    model = ssd.SSD(backbone="tiny", num_classes=81, boxes_per_location=(4, 6, 6),
                    extras=((128, 256, 2, 1),), input_size=64)
    params = _init(model)["params"]
    assert ssd.feature_sizes(model) == (4, 2, 1)
    for name in ("extra0_1x1", "extra0_3x3", "loc0", "conf2"):
        kern = np.asarray(params[name]["kernel"])
        kh, kw, cin, cout = kern.shape
        xavier = math.sqrt(6.0 / (kh * kw * (cin + cout)))  # torch's for a conv: fans x kh*kw
        assert xavier >= np.abs(kern).max() > 0.95 * xavier, name
        np.testing.assert_allclose(kern.std(), xavier / math.sqrt(3), rtol=0.1)
        bias = np.asarray(params[name]["bias"])  # torch's default: U(+-1/sqrt(fan_in))
        assert 1 / math.sqrt(kh * kw * cin) >= np.abs(bias).max() > 0, name


# The torchvision side, in its own interpreter (torchvision pulls in triton, which crashes a
# process that has loaded TensorFlow): a resnet34 with random weights and BatchNorm statistics,
# saved as a state dict, then layer3's output with the SSD's stride change (conv4_x's first block
# at stride 1: its conv1 and its downsample conv) on random images of the given sizes.
TORCH_SCRIPT = r"""
import sys
import numpy as np
import torch
import torchvision

sys.path.insert(0, "tests")
from _torchvision_ref import randomize_batchnorm

out, sizes = sys.argv[1], [int(s) for s in sys.argv[2:]]
torch.manual_seed(0)
model = randomize_batchnorm(torchvision.models.resnet34(weights=None))
with torch.no_grad():
    torch.save(model.state_dict(), f"{out}/resnet34.pth")
    model.layer3[0].conv1.stride = (1, 1)
    model.layer3[0].downsample[0].stride = (1, 1)
    trunk = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                                model.layer1, model.layer2, model.layer3)
    for size in sizes:
        x = np.random.RandomState(size).randn(1, 3, size, size).astype(np.float32)
        np.save(f"{out}/input_{size}.npy", x)
        np.save(f"{out}/layer3_{size}.npy", trunk(torch.from_numpy(x)).numpy())
"""

SIZES = (64, 76)  # all strided inputs even (64 -> 32 -> 16 -> 8); 76 -> 38 -> 19 -> 10 as 300's


@pytest.fixture(scope="module")
def torchvision_layer3(tmp_path_factory):
    if importlib.util.find_spec("torchvision") is None:  # found, not imported (see above)
        pytest.skip("torchvision is not installed (the torch extra: pip install -e '.[torch]')")
    out = tmp_path_factory.mktemp("tv")
    proc = run_python(["-c", TORCH_SCRIPT, str(out), *map(str, SIZES)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out / "resnet34.pth"), {s: (np.load(out / f"input_{s}.npy"),
                                           np.load(out / f"layer3_{s}.npy")) for s in SIZES}


@pytest.mark.parametrize("conv_impl,size", [("xla", 64), ("xla", 76), ("matmul", 64)])
def test_torchvision_resnet34_in_the_backbone_gives_its_layer3(torchvision_layer3, conv_impl,
                                                               size):
    path, data = torchvision_layer3
    model, _ = ssd.ssd_model("ssd300_resnet34", conv_impl=conv_impl)
    init = _shapes(model)  # shapes suffice as a target
    loaded = pretrained.load(path, arch="resnet34", conv_impl=conv_impl)
    params, state, unused = pretrained.restore_subtree(
        init["params"], {"batch_stats": init["batch_stats"]}, loaded, subtree="backbone")
    # What the SSD leaves out: layer4 (BasicBlock_13..15) and the classifier.
    table = pretrained.torchvision_names("resnet34", conv_impl)
    assert unused == sorted(v for k, v in table.items() if k.startswith(("layer4.", "fc.")))
    assert {f"params/{p}" for p in traverse_util.flatten_dict(params["backbone"], sep="/")} | \
        {f"batch_stats/{p}" for p in traverse_util.flatten_dict(state["batch_stats"]["backbone"],
                                                                sep="/")} == \
        {v for k, v in table.items() if not k.startswith(("layer4.", "fc."))}
    x, ref = data[size]
    trunk = ssd.backbone_module(model)
    (out,) = jax.jit(lambda v, x: trunk.apply(v, x, train=False))(
        {"params": params["backbone"], "batch_stats": state["batch_stats"]["backbone"]},
        jnp.asarray(x.transpose(0, 2, 3, 1)))
    out = np.asarray(out).transpose(0, 3, 1, 2)
    assert out.shape == ref.shape == (1, 256, -(-size // 8), -(-size // 8))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_tiny_train_step():
    model, boxes = ssd.ssd_model("ssd_tiny")
    assert ssd.default_box_count(boxes) == 336
    v = _init(model)
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(4, 64, 64, 3), jnp.float32)
    labels = jnp.asarray(rng.randint(0, model.num_classes, (4, 336)))
    tx = optax.sgd(0.1)

    def loss_fn(p, stats):
        (loc, logits), new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                         mutable=["batch_stats"])
        loss = jnp.mean(jnp.abs(loc)) + optax.softmax_cross_entropy_with_integer_labels(
            logits, labels).mean()
        return loss, new["batch_stats"]

    @jax.jit
    def step(p, stats):
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(p, stats)
        return optax.apply_updates(p, tx.update(g, tx.init(p))[0]), stats, loss, g

    p, stats, loss0, g = step(v["params"], v["batch_stats"])
    assert np.isfinite(float(loss0))
    assert all(np.abs(np.asarray(leaf)).sum() > 0 for leaf in jax.tree.leaves(g["backbone"])
               if leaf.ndim > 1)
    assert not np.allclose(np.asarray(stats["backbone"]["bn0_0"]["mean"]),
                           np.asarray(v["batch_stats"]["backbone"]["bn0_0"]["mean"]))
    for _ in range(3):
        p, stats, loss, _ = step(p, stats)
    assert float(loss) < float(loss0)
    # conv_impl="matmul": the same parameters and function
    fast, _ = ssd.ssd_model("ssd_tiny", conv_impl="matmul")
    a = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    b = jax.jit(lambda v, x: fast.apply(v, x, train=False))(v, x)
    for u, w in zip(a, b):
        np.testing.assert_allclose(np.asarray(u), np.asarray(w), rtol=1e-4, atol=1e-4)


def test_overrides_and_bad_input():
    spec = ssd.BoxSpec(96, (12, 6), (8, 16), (12, 24, 40), ((2, 3), (2,)))
    model, boxes = ssd.ssd_model("ssd_tiny", boxes=spec, tiny_channels=(8, 16, 16, 16),
                                 num_classes=3)
    assert boxes is spec and model.input_size == 96 and model.boxes_per_location == (6, 4)
    assert ssd.feature_sizes(model) == (12, 6) and ssd.num_boxes(model) == 12 * 12 * 6 + 36 * 4
    with pytest.raises(ValueError, match="unknown SSD model 'ssd512'"):
        ssd.ssd_model("ssd512")
    with pytest.raises(ValueError, match="unknown SSD option.*widht"):
        ssd.ssd_model("ssd_tiny", widht=2)
    model, _ = ssd.ssd_model("ssd_tiny")
    with pytest.raises(ValueError,
                       match=r"SSD expects images \[B, 64, 64, 3\], got \[1, 32, 32, 3\]"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with pytest.raises(ValueError, match="unknown SSD backbone 'vgg16'"):
        _shapes(ssd.SSD(backbone="vgg16"))
    with pytest.raises(ValueError, match="6 feature maps but boxes_per_location has 3 levels"):
        _shapes(ssd.SSD(boxes_per_location=(4, 4, 4)))
