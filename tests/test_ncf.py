"""NCF benchmark: HR@10/NDCG@10, NeuMF, configs, sharded embeddings, tiny track, MLLOG structure."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlperf_jax import benchmarks
from mlperf_jax.benchmarks import ncf
from mlperf_jax.configs import ncf as ncf_config
from mlperf_jax.input_pipelines.source import DatasetNotFoundError
from mlperf_jax.models import ncf as ncf_model


def _brute_force(scores: np.ndarray, mask: np.ndarray, k: int):
    """Rank all 1 + n candidates by score with a stable sort, the positive listed last (as the
    reference's heapq.nlargest over negatives + [positive]); hit if it is in the top k."""
    hits, ndcgs = 0.0, 0.0
    for row, m in zip(scores, mask):
        cand = np.concatenate([row[1:], row[:1]])  # positive last
        order = np.argsort(-cand, kind="stable")
        top = list(order[:k])
        pos_index = len(cand) - 1
        if pos_index in top:
            hits += m
            ndcgs += m * np.log(2) / np.log(top.index(pos_index) + 2)
    return hits, ndcgs


@pytest.mark.parametrize("levels", [None, 7])
def test_hit_rate_and_ndcg_match_brute_force(levels):
    rng = np.random.default_rng(0 if levels is None else 1)
    scores = rng.standard_normal((200, 1000)).astype(np.float32)
    scores[:, 0] += rng.uniform(0, 4, 200).astype(np.float32)  # spread the positive's rank
    if levels:  # heavy ties
        scores = np.round(scores * levels / 4) / levels
    mask = (rng.uniform(size=200) > 0.1).astype(np.float32)
    out = jax.jit(ncf.ranking_sums, static_argnums=2)(jnp.asarray(scores), jnp.asarray(mask), 10)
    hits, ndcg = _brute_force(scores, mask, 10)
    assert 0 < hits < mask.sum()
    assert float(out["hits"]) == hits
    np.testing.assert_allclose(float(out["ndcg"]), ndcg, rtol=1e-5)
    assert float(out["count"]) == mask.sum()
    hr = ncf.BENCHMARK.eval_metric(ncf_config.get_config("tiny"), [jax.device_get(out)], None)
    assert hr["hr@10"] == pytest.approx(hits / mask.sum())


def test_hit_rate_and_ndcg_on_hand_made_scores():
    """Five users, the positive in column 0 among 99 negatives; the ranks are set by hand."""
    scores = np.zeros((5, 100), np.float32)
    scores[0, 0] = 5.0                             # above every negative: rank 0, hit
    scores[1, 0], scores[1, 1:10] = 1.0, 2.0       # 9 negatives above: rank 9, hit
    scores[2, 0], scores[2, 1:11] = 1.0, 2.0       # 10 negatives above: rank 10, miss
    scores[3, 0], scores[3, 1:10], scores[3, 50] = 1.0, 2.0, 1.0  # 9 above + 1 tie: tie loses, miss
    scores[4, 0] = 5.0                             # a hit, but a padded row (mask 0)
    mask = np.array([1, 1, 1, 1, 0], np.float32)
    out = jax.device_get(ncf.ranking_sums(jnp.asarray(scores), jnp.asarray(mask), 10))
    assert float(out["hits"]) == 2.0 and float(out["count"]) == 4.0
    np.testing.assert_allclose(float(out["ndcg"]), 1.0 + np.log(2) / np.log(11), rtol=1e-6)
    assert ncf.BENCHMARK.eval_metric(ncf_config.get_config("tiny"), [out], None)["hr@10"] == 0.5


def test_neumf_shapes_init_and_ranking_mode():
    z = jnp.zeros((1,), jnp.int32)
    ref = ncf_model.NeuMF(num_users=100, num_items=300, mf_dim=64,
                          mlp_layer_sizes=(256, 256, 128, 64), row_multiple=64)
    shapes = jax.eval_shape(lambda: ref.init(jax.random.key(0), z, z)["params"])
    assert shapes["mf_user_embed"].shape == (128, 64) and shapes["mlp_item_embed"].shape == (320, 128)
    assert shapes["mlp_0_kernel"].shape == (256, 256) and shapes["mlp_2_kernel"].shape == (128, 64)
    assert shapes["final_kernel"].shape == (128, 1)
    model = ncf_model.NeuMF(num_users=100, num_items=300, mf_dim=64, mlp_layer_sizes=(64, 128, 32),
                            row_multiple=8)
    params = jax.jit(model.init)(jax.random.key(0), z, z)["params"]
    assert abs(float(jnp.std(params["mf_item_embed"])) - 0.01) < 0.001  # N(0, 0.01)
    lim = np.sqrt(6 / (128 + 32))  # Glorot uniform bound of the 128 -> 32 layer
    assert float(jnp.max(jnp.abs(params["mlp_1_kernel"]))) <= lim
    assert float(jnp.max(jnp.abs(params["final_kernel"]))) <= np.sqrt(3 / (64 + 32))  # LeCun
    # make the outputs non-trivial, then compare (b, n) ranking mode with flat pairs
    params = jax.jit(lambda p: jax.tree.map(
        lambda x: x * 30 if x.ndim == 2 and x.shape[1] != 1 else x, p))(params)
    users = jnp.arange(8, dtype=jnp.int32)
    items = jax.random.randint(jax.random.key(1), (8, 50), 0, 300)
    apply = jax.jit(model.apply)
    ranked = apply({"params": params}, users, items)
    flat = apply({"params": params}, jnp.repeat(users, 50), items.reshape(-1))
    assert ranked.shape == (8, 50)
    np.testing.assert_allclose(np.asarray(ranked).reshape(-1), np.asarray(flat), rtol=2e-4,
                               atol=2e-4)
    assert float(jnp.std(ranked)) > 0.01


def test_configs_and_contract():
    assert benchmarks.get("ncf") is ncf.BENCHMARK
    assert benchmarks.config_file("ncf").endswith("ncf.py")
    ref, tiny = ncf_config.get_config("reference"), ncf_config.get_config("tiny")
    b = ncf.BENCHMARK
    for c in (ref, tiny):
        b.check_config(c)
        for key in ("target", "target_metric", "global_batch_size", "num_epochs", "eval_every_epochs",
                    "eval_offset_epochs", "eval_batch_size", "dtype", "dataset", "num_runs",
                    "division"):
            assert key in c
    assert b.target(ref).thresholds == {"hr@10": 0.635}  # ncf's round is v0.5
    assert (0.635, ref.learning_rate, ref.global_batch_size, ref.adam_beta1, ref.adam_beta2,
            ref.mf_dim, tuple(ref.mlp_layer_sizes)) == (0.635, 0.0005, 2048, 0.9, 0.999, 64,
                                                       (256, 256, 128, 64))
    assert (ref.num_runs, ref.converged_runs_scored) == (100, 50)
    tuned = ncf_config.get_config("reference")  # the tunable hyperparameters may change ...
    tuned.learning_rate, tuned.global_batch_size = 2 * ref.learning_rate, 2 * ref.global_batch_size
    assert b.closed_division_violations(tuned, ref) == []
    tuned.mf_dim = 32  # ... a fixed one may not
    violations = b.closed_division_violations(tuned, ref)
    assert len(violations) == 1 and "mf_dim" in violations[0], violations
    assert tiny.division == "open" and tiny.dataset == "synthetic"
    assert b.closed_division_violations(tiny, ref)  # the tiny model differs from the reference
    with pytest.raises(ValueError):
        ncf_config.get_config("huge")
    bad = ncf_config.get_config("tiny")
    bad.num_eval_negatives = 5000
    with pytest.raises(ValueError, match="num_eval_negatives"):
        b.check_config(bad)
    with pytest.raises(DatasetNotFoundError, match="--data_dir"):
        b.data_source(ref, None, seed=0, process_index=0, process_count=1)
    fake = b.fake_train_batch(ref, np.random.default_rng(0))
    assert {k: (v.shape, v.dtype) for k, v in fake.items()} == {
        "user": ((2048,), np.int32), "item": ((2048,), np.int32),
        "label": ((2048,), np.float32), "weight": ((2048,), np.float32)}
    assert fake["user"].max() < ref.num_users and 0.1 < fake["label"].mean() < 0.3
    keys = b.hparams_to_log(ref, 10)
    assert keys["opt_name"] == "adam" and keys["input_hp_num_neg"] == 4
    assert keys["eval_hp_num_neg"] == 999 and keys["opt_adam_epsilon"] == 1e-8


def test_one_train_step_and_eval_on_tiny():
    import optax

    b, c = ncf.BENCHMARK, ncf_config.get_config("tiny")
    c.num_users, c.num_items, c.num_eval_negatives = 300, 600, 99
    data = b.data_source(c, None, seed=0, process_index=0, process_count=1)
    batch = next(iter(data.train_epoch(1, 0)))
    assert {k: v.shape for k, v in batch.items()} == {k: s.shape for k, s in data.train_spec.items()}
    params, state = jax.jit(lambda r: b.init(c, r))(jax.random.key(0))
    tx, _ = b.optimizer(c, data.steps_per_epoch)
    opt = jax.jit(tx.init)(params)

    @jax.jit
    def step(params, opt, batch):
        (loss, _), g = jax.value_and_grad(lambda p: b.loss_fn(c, p, state, batch, None),
                                          has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    losses = []
    for _ in range(30):
        params, opt, loss = step(params, opt, batch)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    ev = jax.jit(lambda p, e: b.eval_step(c, p, state, e))
    scores_fn = jax.jit(lambda p, e: b.model(c).apply({"params": p}, e["user"], e["items"]))
    outs, hits, count = [], 0.0, 0.0
    for e in data.eval_batches():
        outs.append(jax.device_get(ev(params, e)))
        h, _ = _brute_force(np.asarray(scores_fn(params, e)), np.asarray(e["mask"]), int(c.top_k))
        hits, count = hits + h, count + float(np.sum(e["mask"]))
    assert sum(float(o["count"]) for o in outs) == data.num_eval_samples == count
    assert 0 < hits < count  # neither all hits nor none: the comparison below can tell them apart
    assert b.eval_metric(c, outs, None)["hr@10"] == pytest.approx(hits / count, abs=1e-12)


SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from mlperf_jax.benchmarks import ncf
    from mlperf_jax.configs import ncf as ncf_config
    from mlperf_jax.models import ncf as ncf_model
    b, c = ncf.BENCHMARK, ncf_config.get_config("tiny")
    c.num_users, c.num_items, c.row_multiple, c.num_eval_negatives = 300, 600, 4, 99
    data = b.data_source(c, None, seed=0, process_index=0, process_count=1)
    batch = next(iter(data.train_epoch(1, 0)))
    ev = next(iter(data.eval_batches()))
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    params, state = jax.jit(lambda r: b.init(c, r))(jax.random.key(0))
    tx, _ = b.optimizer(c, 1)
    def step(params, opt, batch):
        (loss, _), g = jax.value_and_grad(lambda p: b.loss_fn(c, p, state, batch, None), has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss
    def run(specs):
        psh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
        p = jax.device_put(params, psh)
        o = jax.jit(tx.init)(p)
        bsh = NamedSharding(mesh, P("data"))
        bt = {k: jax.device_put(v, bsh) for k, v in batch.items()}
        f = jax.jit(step)
        for _ in range(2):
            p, o, loss = f(p, o, bt)
        e = jax.jit(lambda p, x: b.eval_step(c, p, state, x))(p, {k: jax.device_put(v, bsh) for k, v in ev.items()})
        return p, float(loss), jax.device_get(e)
    specs = ncf_model.param_partition_specs(params)
    assert specs["mf_user_embed"] == P("data", None) and specs["final_bias"] == P()
    p1, l1, e1 = run(specs)
    assert len(p1["mlp_item_embed"].sharding.device_set) == 4
    assert p1["mlp_item_embed"].addressable_shards[0].data.shape[0] == p1["mlp_item_embed"].shape[0] // 4
    p0, l0, e0 = run(jax.tree.map(lambda _: P(), specs))
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    for k in p0:
        np.testing.assert_allclose(np.asarray(p0[k]), np.asarray(p1[k]), rtol=1e-4, atol=1e-6)
    assert float(e0["hits"]) == float(e1["hits"])
    print("SHARDED-OK")
""")


def test_embedding_tables_sharded_over_mesh():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=300,
                       env=env)
    assert "SHARDED-OK" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------------------------ tiny track through the driver
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mlperf_jax import train
    workdir = str(tmp_path_factory.mktemp("ncf_tiny"))
    config = ncf_config.get_config("tiny")
    opts = train.RunOptions(workdir=workdir, num_runs=1, checkpoint=False, progress=False,
                            config_name="tiny")
    result = train.train("ncf", config, opts, print_fn=lambda *_: None)
    return result, workdir


def test_tiny_track_reaches_target(tiny_run):
    result, _ = tiny_run
    (run,) = result.runs
    assert run.status == "success" and run.metric >= ncf_config.get_config("tiny").target
    assert run.epochs <= ncf_config.get_config("tiny").num_epochs


@pytest.mark.parametrize("ruleset", ["0.7.0", "6.0.0"])
def test_log_passes_checker_common_rules(tiny_run, ruleset, tmp_path):
    _, workdir = tiny_run
    log = os.path.join(workdir, "result_0.txt")
    valid, messages = ncf.check_log(log, ruleset)
    assert valid, messages
    text = open(log).read()
    # the checker catches what it should: a missing key ...
    broken = tmp_path / "no_train_samples.txt"
    broken.write_text("".join(l for l in text.splitlines(True) if '"key": "train_samples"' not in l))
    assert not ncf.check_log(str(broken), ruleset)[0]
    # ... and a tiny-track log claiming the closed division fails the NCF closed rules
    closed = tmp_path / "closed.txt"
    closed.write_text(text.replace('"key": "submission_division", "value": "open"',
                                   '"key": "submission_division", "value": "closed"'))
    valid, messages = ncf.check_log(str(closed), ruleset)
    assert not valid and any("model_hp_mf_dim" in m or "eval_accuracy" in m for m in messages)


def test_reference_data_source_from_csv_and_cache(tmp_path):
    """The real-data path of the benchmark: ratings.csv -> cache -> batches of the reference spec."""
    rng = np.random.default_rng(0)
    d = tmp_path / "ml-20m"
    d.mkdir()
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, 41):
        for i in rng.choice(np.arange(1, 400), 25, replace=False):
            rows.append(f"{u},{i},3.5,{rng.integers(10 ** 9)}")
    (d / "ratings.csv").write_text("\n".join(rows) + "\n")
    b, c = ncf.BENCHMARK, ncf_config.get_config("reference")
    c.num_eval_negatives = 99
    with pytest.raises(DatasetNotFoundError, match="prepare"):  # preparation is its own step
        b.data_source(c, str(tmp_path), seed=3, process_index=0, process_count=1)
    assert "40 users" in b.prepare_data(c, str(tmp_path))
    src = b.data_source(c, str(tmp_path), seed=3, process_index=0, process_count=1)
    assert src.num_eval_samples == 40 and src.num_train_samples == 40 * 24 * 5
    assert os.listdir(tmp_path / "ncf_cache")
    batch = next(iter(src.train_epoch(1, 0)))
    assert batch["user"].shape == (2048,) and src.train_spec["item"].shape == (2048,)
    ev = next(iter(src.eval_batches()))
    assert ev["items"].shape == (1024, 100) and ev["mask"].sum() == 40
    (d / "ratings.csv").unlink()  # the second data source starts from the cache
    src2 = b.data_source(c, str(tmp_path), seed=3, process_index=0, process_count=1)
    np.testing.assert_array_equal(next(iter(src2.eval_batches()))["items"], ev["items"])
