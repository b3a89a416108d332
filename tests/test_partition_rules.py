"""The (data, model) mesh and per-parameter partition rules (mlperf_jax/sharding.py).

In-process tests plan layouts on an ``AbstractMesh`` (only axis sizes matter there); the
multi-device checks (a real (4, 2) mesh: batch placement, and an NCF train step that must equal
the 1-device one) run tests/_mesh_check.py in a subprocess on 8 fake CPU devices.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from conftest import run_python
from mlperf_jax import sharding as S
from mlperf_jax.benchmarks import ncf
from mlperf_jax.models import ncf as ncf_model

MESH_42 = AbstractMesh((4, 2), ("data", "model"))
EMBEDS = ("mf_user_embed", "mf_item_embed", "mlp_user_embed", "mlp_item_embed")
BOTH = P(("data", "model"), None)


def ncf_abstract_state(variant="reference", **overrides):
    """The abstract {step, params, model_state, opt_state} of NCF under Adam (no memory used)."""
    b = ncf.BENCHMARK
    c = b.get_config(variant)
    for k, v in overrides.items():
        c[k] = v
    tx, _ = b.optimizer(c, 10)

    def init_fn(rng):
        params, model_state = b.init(c, rng)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
                "opt_state": tx.init(params)}

    return jax.eval_shape(init_fn, jax.eval_shape(lambda: jax.random.key(0)))


# ----------------------------------------------------------------------------- (a) placement
# Hand-written oracle for the reference NeuMF (tables 138496 / 26752 rows, MLP 256-256-128-64):
# what the FSDP fallback over data=4 gives each dense leaf (>= 4096 elements, largest dim first).
REFERENCE_FSDP = {"mlp_0_kernel": P("data", None), "mlp_1_kernel": P("data", None),
                  "mlp_2_kernel": P("data", None), "final_kernel": P(), "final_bias": P(),
                  "mlp_0_bias": P(), "mlp_1_bias": P(), "mlp_2_bias": P()}


@pytest.mark.parametrize("fsdp", [False, True])
def test_ncf_rules_place_params_and_adam_moments(fsdp):
    abstract = ncf_abstract_state()
    specs = S.path_dict(S.state_partition_specs(abstract, MESH_42, fsdp=fsdp,
                                                rules=ncf_model.PARTITION_RULES))
    shapes = {k: v.shape for k, v in S.path_dict(abstract).items()}
    assert set(specs) == set(shapes)
    seen = 0
    for path, spec in specs.items():
        name = path.rsplit("/", 1)[-1]
        if name in EMBEDS:
            assert path.split("/")[0] in ("params", "opt_state"), path
            assert spec == BOTH, (path, spec)
            seen += 1
        elif not shapes[path]:
            assert spec == P(), (path, spec)  # step, Adam's count
        else:
            assert spec == (REFERENCE_FSDP[name] if fsdp else P()), (path, spec)
    assert seen == 3 * len(EMBEDS)  # params, mu and nu of every table
    assert {"step", "opt_state/0/count", "opt_state/0/mu/mf_user_embed",
            "opt_state/0/nu/mlp_item_embed", "params/mlp_user_embed"} <= set(specs)


def test_rules_override_the_fsdp_fallback():
    abstract = ncf_abstract_state()
    plain = S.path_dict(S.state_partition_specs(abstract, MESH_42, fsdp=True))
    assert plain["params/mf_user_embed"] == P("data", None)  # the heuristic alone
    ruled = S.path_dict(S.state_partition_specs(
        abstract, MESH_42, fsdp=True, rules=[(r"(^|/)mf_user_embed$", P(None, "model"))]))
    assert ruled["params/mf_user_embed"] == P(None, "model")
    assert ruled["opt_state/0/nu/mf_user_embed"] == P(None, "model")
    assert ruled["params/mf_item_embed"] == P("data", None)  # unmatched: fallback


def test_first_match_wins_search_semantics_and_scalars():
    tree = {"params": {"dense": {"kernel": jax.ShapeDtypeStruct((64, 128), jnp.float32),
                                 "bias": jax.ShapeDtypeStruct((128,), jnp.float32)},
                       "big": jax.ShapeDtypeStruct((4096, 8), jnp.float32)},
            "count": jax.ShapeDtypeStruct((), jnp.int32)}
    rules = [(r"dense/kernel$", P(None, "model")),  # first: wins over the catch-all below
             (r"big", P()),  # explicit P() means replicated, even with fsdp on
             (r".", P("data"))]  # would shard everything else; scalars stay replicated
    got = S.path_dict(S.state_partition_specs(tree, MESH_42, fsdp=True, rules=rules))
    assert got == {"count": P(), "params/big": P(), "params/dense/bias": P("data"),
                   "params/dense/kernel": P(None, "model")}
    # re.search: an unanchored name matches inside longer paths too
    got = S.path_dict(S.state_partition_specs(tree, MESH_42, rules=[("ense/ker", P("data"))]))
    assert got["params/dense/kernel"] == P("data") and got["params/big"] == P()


def test_ncf_rules_on_other_meshes():
    abstract = ncf_abstract_state()
    for sizes in ((8, 1), (1, 8), (1, 1), (2, 32)):
        specs = S.path_dict(S.state_partition_specs(
            abstract, AbstractMesh(sizes, ("data", "model")), rules=ncf_model.PARTITION_RULES))
        assert specs["opt_state/0/mu/mlp_user_embed"] == BOTH
    specs = S.path_dict(S.state_partition_specs(
        abstract, MESH_42, rules=ncf_model.partition_rules("model")))
    assert specs["params/mf_item_embed"] == P("model", None)
    # the bare-params helper (kept for callers of the old API) follows the same rule
    params = abstract["params"]
    old = ncf_model.param_partition_specs(params)
    assert old["mf_user_embed"] == P("data", None) and old["final_bias"] == P()


def test_state_shardings_on_a_real_mesh_keeps_positional_fsdp():
    mesh = S.make_mesh()
    abstract = ncf_abstract_state("tiny")
    sh = S.state_shardings(abstract, mesh, True)  # positional, as train.compile_benchmark calls it
    leaves = jax.tree.leaves(sh, is_leaf=lambda x: isinstance(x, NamedSharding))
    assert len(leaves) == len(jax.tree.leaves(abstract))
    assert all(isinstance(s, NamedSharding) and s.mesh is mesh for s in leaves)
    ruled = S.path_dict(S.state_shardings(abstract, mesh, rules=ncf_model.PARTITION_RULES))
    assert ruled["params/mf_user_embed"].spec == BOTH


# ----------------------------------------------------------------------------- (d) clear errors
def test_rule_that_does_not_divide_names_the_leaf():
    abstract = ncf_abstract_state("tiny", num_users=1001, row_multiple=1)
    with pytest.raises(ValueError) as e:
        S.state_partition_specs(abstract, MESH_42, rules=ncf_model.PARTITION_RULES)
    msg = str(e.value)
    assert "mf_user_embed" in msg and "1001" in msg and "(1001, 16)" in msg and "8" in msg
    assert "\n" not in msg
    # with row_multiple=8 (the tiny config) the same rows are padded to 1008 and divide
    ok = ncf_abstract_state("tiny", num_users=1001)
    assert S.path_dict(ok)["params/mf_user_embed"].shape == (1008, 16)
    S.state_partition_specs(ok, MESH_42, rules=ncf_model.PARTITION_RULES)


@pytest.mark.parametrize("spec, words", [
    (P("model", None), ["params/w", "(1001, 16)", "1001", "model=2"]),  # does not divide
    (P(None, None, "data"), ["params/w", "3 entries", "rank-2"]),  # rank too high
    (P("tensor"), ["params/w", "'tensor'"]),  # no such axis
    (P("data", "data"), ["params/w", "twice"]),
])
def test_bad_rules_fail_with_one_clear_sentence(spec, words):
    tree = {"params": {"w": jax.ShapeDtypeStruct((1001, 16), jnp.float32)}}
    with pytest.raises(ValueError) as e:
        S.state_partition_specs(tree, MESH_42, rules=[("w$", spec)])
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg


def test_malformed_and_unused_rules():
    tree = {"params": {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32)}}
    with pytest.raises(ValueError, match="match no leaf"):
        S.state_partition_specs(tree, MESH_42, rules=[("embed_user", P("model"))])
    with pytest.raises(ValueError, match="bad regex"):
        S.state_partition_specs(tree, MESH_42, rules=[("w(", P())])
    with pytest.raises(ValueError, match="PartitionSpec"):
        S.state_partition_specs(tree, MESH_42, rules=[("w", ("data",))])
    with pytest.raises(ValueError, match="pair"):
        S.state_partition_specs(tree, MESH_42, rules=["w"])


def test_mesh_shape_resolution_and_errors():
    assert S.mesh_shape(8) == (8, 1)
    assert S.mesh_shape(8, -1, 2) == (4, 2)
    assert S.mesh_shape(8, 2, -1) == (2, 4)
    assert S.mesh_shape(8, 4, 2) == (4, 2)
    for args, words in (((8, 3, 1), "needs 3 devices, but there are 8"),
                        ((8, -1, 3), "model=3 does not divide the 8 devices"),
                        ((8, 0, 1), "data=0"), ((8, -1, -1), "at most one"),
                        ((8, 2.0, 4), "integers")):
        with pytest.raises(ValueError) as e:
            S.mesh_shape(*args)
        assert words in str(e.value)
    n = jax.device_count()
    with pytest.raises(ValueError, match=f"needs {n + 1} devices, but there are {n}"):
        S.make_mesh(n + 1)
    m = S.make_mesh()
    assert m.axis_names == ("data", "model") and dict(m.shape) == {"data": n, "model": 1}
    assert S.data_parallel_size(m) == n and S.MODEL_AXIS == "model" and S.DATA_AXIS == "data"


# ----------------------------------------------------------------------------- 8 fake devices
@pytest.fixture(scope="module")
def mesh_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("mesh_check")
    proc = run_python(["tests/_mesh_check.py", str(out)], devices=8, timeout=600)
    assert proc.returncode == 0 and "MESH-CHECK-OK" in proc.stdout, proc.stderr[-3000:]
    with open(os.path.join(out, "result.json")) as f:
        res = json.load(f)
    return res, np.load(os.path.join(out, "one.npz")), np.load(os.path.join(out, "mesh.npz"))


def test_eight_device_meshes(mesh_check):
    res, _, _ = mesh_check
    assert res["n_devices"] == 8
    m = res["meshes"]
    for key, shape in (("default", [8, 1]), ("model2", [4, 2]), ("4x2", [4, 2]),
                       ("old_signature", [1, 1]), ("explicit", [2, 1])):
        assert m[key]["shape"] == shape and m[key]["axis_names"] == ["data", "model"], key
        assert all("Auto" in t for t in m[key]["axis_types"]), m[key]
    assert sorted(i for row in m["4x2"]["device_ids"] for i in row) == list(range(8))
    assert m["explicit"]["device_ids"] == [[2], [3]]
    e = res["errors"]
    assert e["(3, 1)"] == "a (data=3, model=1) mesh needs 3 devices, but there are 8"
    assert e["(-1, 3)"] == "mesh size model=3 does not divide the 8 devices"
    assert e["(4, 4)"] == "a (data=4, model=4) mesh needs 16 devices, but there are 8"
    assert e["(16, -1)"] == "mesh size data=16 does not divide the 8 devices"
    assert all(v != "NO ERROR" for v in e.values()), e


def test_batch_splits_over_data_only(mesh_check):
    b = mesh_check[0]["batch"]
    assert b["shard_shape_1d"] == [256] and b["shard_shape_2d"] == [257, 3]
    assert b["data_parallel_size"] == 4 and b["global_shape"] == [1028, 3] and b["equal"]
    # 1028 divides by the data axis (4) though not by the 8 devices
    assert b["local_batch_size"] == 1028
    assert "1030" in b["local_batch_size_error"] and "size 4" in b["local_batch_size_error"]
    assert len(b["shards"]) == 8
    for s in b["shards"]:
        d, _ = s["coord"]  # the two model positions of a data position hold the same rows
        assert s["shape"] == [257, 3] and s["rows"] == [257 * d, 257 * d + 256], s


def test_ncf_state_really_placed_on_the_4x2_mesh(mesh_check):
    placed = mesh_check[0]["placed"]
    rows = {"mf_user_embed": 1000, "mlp_user_embed": 1000, "mf_item_embed": 2000,
            "mlp_item_embed": 2000}
    n = 0
    for path, p in placed.items():
        assert p["n_devices"] == 8
        name = path.rsplit("/", 1)[-1]
        if name in rows:
            assert p["spec"] == str(BOTH), (path, p)
            assert p["shard_shape"][0] == rows[name] // 8, (path, p)
            n += 1
        else:
            assert p["spec"] == "P()", (path, p)
    assert n == 12


def test_ncf_train_step_on_4x2_mesh_equals_one_device(mesh_check):
    _, one, mesh = mesh_check
    assert set(one.files) == set(mesh.files)
    np.testing.assert_allclose(mesh["losses"], one["losses"], rtol=1e-6)
    assert one["losses"][-1] < one["losses"][0]  # the steps did train
    for k in one.files:
        if k == "losses":
            continue
        if k.startswith("params/"):
            np.testing.assert_allclose(mesh[k], one[k], rtol=1e-5, atol=1e-7, err_msg=k)
        elif k.startswith("opt_state/") and one[k].ndim:
            scale = float(np.max(np.abs(one[k])))
            np.testing.assert_allclose(mesh[k], one[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)
        else:
            np.testing.assert_array_equal(mesh[k], one[k], err_msg=k)
