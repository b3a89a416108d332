"""The Transformer and GNMT benchmark definitions: configs, logged hyperparameters against the
0.7.0 compliance rules, BLEU on the tiny track, one train step on 8 fake devices == 1 device, and
the time-to-train driver end to end on a shrunk tiny track."""
import importlib
import itertools
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import sacrebleu
import yaml

import mlperf_logging
from mlperf_jax import benchmarks
from mlperf_jax.benchmarks import gnmt as gb
from mlperf_jax.benchmarks import transformer as tb
from mlperf_jax.input_pipelines import synthetic_translation as synth
from conftest import run_python

NAMES = ["transformer", "gnmt"]
RULES = os.path.join(os.path.dirname(mlperf_logging.__file__), "compliance_checker", "training_0.7.0")


@pytest.mark.parametrize("name", NAMES)
def test_registry_and_configs(name):
    bench = benchmarks.get(name)
    assert bench is sys.modules[f"mlperf_jax.benchmarks.{name}"].BENCHMARK
    assert bench.mlperf_name == name
    module = importlib.import_module(f"mlperf_jax.configs.{name}")
    ref, tiny = module.get_config("reference"), module.get_config("tiny")
    for c in (ref, tiny):
        bench.check_config(c)
        for key in ("target", "target_metric", "global_batch_size", "num_epochs",
                    "eval_every_epochs", "eval_offset_epochs", "eval_batch_size", "dtype",
                    "dataset", "num_runs", "division"):
            assert key in c, key
    assert ref.division == "closed" and ref.dataset == "tfds" and ref.num_runs == 10
    assert ref.target is None  # the round's target
    assert bench.target(ref).thresholds == {"bleu": {"transformer": 0.25, "gnmt": 0.24}[name]}
    assert bench.target(ref, "v0.5").thresholds["bleu"] == {"transformer": 0.25,
                                                            "gnmt": 0.218}[name]
    assert tiny.division == "open" and tiny.dataset == "synthetic" and tiny.target >= 0.25
    # ... and the comparison can tell: a tunable hyperparameter may change, a fixed one may not
    tuned = module.get_config("reference")
    tuned.learning_rate, tuned.global_batch_size = 2 * ref.learning_rate, 2 * ref.global_batch_size
    assert bench.closed_division_violations(tuned, ref) == []
    tuned.vocab_size = ref.vocab_size + 1
    violations = bench.closed_division_violations(tuned, ref)
    assert len(violations) == 1 and "vocab_size" in violations[0], violations
    with pytest.raises(ValueError):
        module.get_config("huge")


def _check_rules(path, logged):
    """Evaluate the checker's CHECK expressions of a closed_<bench>.yaml on our values."""
    with open(path) as f:
        rules = yaml.safe_load(f)
    for rule in rules:
        key = rule["KEY"]
        name = key["NAME"]
        if name in ("global_batch_size", "eval_accuracy"):
            continue  # logged by the driver
        assert name in logged, f"{name} not logged"
        value = logged[name]
        md = {}
        if isinstance(value, tuple):
            value, md = value
        checks = key.get("CHECK") or []
        for check in [checks] if isinstance(checks, str) else checks:
            assert eval(check, {}, {"v": {"value": value, "metadata": md}}), (name, check)


@pytest.mark.parametrize("name", NAMES)
def test_hparams_satisfy_closed_rules(name):
    bench = benchmarks.get(name)
    config = bench.get_config("reference")
    logged = bench.hparams_to_log(config, steps_per_epoch=1000)
    _check_rules(os.path.join(RULES, f"closed_{name}.yaml"), logged)
    assert logged["opt_name"] == "adam"


@pytest.mark.parametrize("name", NAMES)
def test_tiny_bleu_and_loss(name):
    bench = benchmarks.get(name)
    config = bench.get_config("tiny")
    config.synthetic.num_train, config.synthetic.num_eval = 256, 20
    config.eval_batch_size = 16
    ds = bench.data_source(config, None, seed=0, process_index=0, process_count=1)
    evals = list(ds.eval_batches())
    assert ds.num_eval_samples == 20 and evals[-1]["mask"].sum() == 4
    # perfect predictions score 1.0; padded rows (mask 0) do not count
    perfect = [{"predictions": e["targets"], "targets": e["targets"], "mask": e["mask"],
                "index": e["index"]} for e in evals]
    ctx = ds.eval_context()
    assert bench.eval_metric(config, perfect, ctx) == {"bleu": pytest.approx(1.0)}
    empty = [dict(p, predictions=np.zeros_like(p["predictions"])) for p in perfect]
    assert bench.eval_metric(config, empty, ctx) == {"bleu": 0.0}
    # partial credit, against sacrebleu on the texts: every other example loses its second
    # word, padded rows hold junk that must not count, and the batches arrive out of order
    vocab = synth.vocabulary()

    def text(row):  # the synthetic task's words, up to EOS or padding
        return " ".join(vocab[int(i)] for i in itertools.takewhile(lambda i: i not in (synth.PAD, synth.EOS), row))

    hyps, refs, damaged = {}, {}, []
    for p in perfect:
        pred = np.array(p["predictions"])
        for r, (m, i) in enumerate(zip(p["mask"], p["index"])):
            if not m:
                pred[r] = 3 + (np.arange(pred.shape[1]) % 5)  # junk in a padded row
                continue
            if int(i) % 2:
                pred[r] = np.concatenate([pred[r, :1], pred[r, 2:], [0]])
            hyps[int(i)], refs[int(i)] = text(pred[r]), text(p["targets"][r])
        damaged.append(dict(p, predictions=pred))
    order = sorted(hyps)
    assert order == list(range(20)) and sum(hyps[i] != refs[i] for i in order) == 10
    want = sacrebleu.corpus_bleu([hyps[i] for i in order], [[refs[i] for i in order]],
                                 tokenize=str(config.bleu_tokenize)).score / 100
    assert 0.2 < want < 0.95  # a real partial score, not a corner case
    assert bench.eval_metric(config, damaged[::-1], ctx)["bleu"] == pytest.approx(want, rel=1e-9)
    # the loss is the label-smoothed cross-entropy minus its minimum, i.e. the mean over real
    # target tokens of KL(smoothed one-hot || softmax(logits)); computed here in float64
    params, state = bench.init(config, jax.random.key(0))
    batch = next(ds.train_epoch(1, 0))
    loss, (_, metrics) = bench.loss_fn(config, params, state, batch, jax.random.key(1))
    logits = np.asarray(bench.logits(config, params, batch, jax.random.key(1), train=True), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    v, ls = logits.shape[-1], float(config.label_smoothing)
    q = np.full(logits.shape, ls / (v - 1))
    np.put_along_axis(q, np.asarray(batch["targets"])[..., None], 1 - ls, axis=-1)
    kl = (q * (np.log(q) - logp)).sum(-1)
    real = np.asarray(batch["targets"]) > 0
    np.testing.assert_allclose(float(loss), kl[real].mean(), rtol=1e-4)
    nll = -np.take_along_axis(logp, np.asarray(batch["targets"])[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(metrics["nll"]), nll[real].mean(), rtol=1e-4)
    assert bench.throughput_units(config, batch) == ("tokens", int((batch["targets"] > 0).sum()))
    # the learning rate at the first step and at the end of warm-up, by the references' formulas
    tx, sched = bench.optimizer(config, ds.steps_per_epoch)
    base, w = float(config.learning_rate), int(config.warmup_steps)
    if name == "transformer":  # base * d^-0.5 * min(1, s/w) * max(s, w)^-0.5, s = step + 1
        d = int(config.model.d_model)
        expected = {0: base * d ** -0.5 / w ** 1.5, w - 1: base * d ** -0.5 * w ** -0.5,
                    4 * w - 1: base * d ** -0.5 * (4 * w) ** -0.5}
    else:  # GNMT: exponential warm-up from 1% of the base rate, then constant until the decay
        expected = {0: 0.01 * base, w: base}
    for step, lr in expected.items():
        np.testing.assert_allclose(float(sched(step)), lr, rtol=1e-5, err_msg=str(step))


MULTI_DEVICE = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from mlperf_jax import benchmarks
    assert jax.device_count() == 8
    for name in ("transformer", "gnmt"):
        bench = benchmarks.get(name)
        config = bench.get_config("tiny")
        config.synthetic.num_train, config.synthetic.num_eval = 64, 16
        config.global_batch_size, config.eval_batch_size = 16, 16
        # exercise dropout too: the rng must not depend on the sharding
        if name == "transformer":
            config.model.dropout_rate = 0.1
            config.model.attention_dropout_rate = 0.1
        else:
            config.model.dropout_rate = 0.2
        ds = bench.data_source(config, None, seed=0, process_index=0, process_count=1)
        batch = next(ds.train_epoch(1, 0))
        tx, _ = bench.optimizer(config, ds.steps_per_epoch)
        params, ms = bench.init(config, jax.random.key(0))
        opt = tx.init(params)
        rng = jax.random.key(7)

        def step(params, opt, batch):
            (loss, _), g = jax.value_and_grad(
                lambda p: bench.loss_fn(config, p, ms, batch, rng), has_aux=True)(params)
            u, opt = tx.update(g, opt, params)
            return optax.apply_updates(params, u), loss

        def run(devices):
            mesh = Mesh(np.asarray(devices), ("data",))
            rep, bs = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
            f = jax.jit(step, in_shardings=(rep, rep, {k: bs for k in batch}),
                        out_shardings=(rep, rep))
            b = {k: jax.device_put(v, bs) for k, v in batch.items()}
            return f(jax.device_put(params, rep), jax.device_put(opt, rep), b)

        p1, l1 = run(jax.devices()[:1])
        p8, l8 = run(jax.devices())
        np.testing.assert_allclose(l1, l8, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), p1, p8)
        if name == "gnmt":
            print(name, "ok", float(l1))
            continue  # the sharded beam search is checked once (the decoder is shared)
        # eval (beam search) sharded over 8 devices == 1 device
        eb = next(ds.eval_batches())
        outs = []
        for devices in (jax.devices()[:1], jax.devices()):
            mesh = Mesh(np.asarray(devices), ("data",))
            bs = NamedSharding(mesh, P("data"))
            f = jax.jit(lambda p, b: bench.eval_step(config, p, ms, b),
                        in_shardings=(NamedSharding(mesh, P()), {k: bs for k in eb}))
            outs.append(np.asarray(f(p1, {k: jax.device_put(v, bs) for k, v in eb.items()})
                                   ["predictions"]))
        np.testing.assert_array_equal(outs[0], outs[1])
        print(name, "ok", float(l1))
""")


def test_train_step_on_8_fake_devices_equals_1_device():
    r = run_python(["-c", MULTI_DEVICE], devices=8, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "transformer ok" in r.stdout and "gnmt ok" in r.stdout


def test_driver_tiny_track_end_to_end(tmp_path):
    """The real driver on a shrunk tiny Transformer track: reaches its (lowered) target, stops,
    and writes a log the 0.7.0 checker accepts."""
    from mlperf_jax import train as T
    config = tb.BENCHMARK.get_config("tiny")
    config.synthetic.num_train, config.synthetic.num_eval = 2048, 64
    config.eval_batch_size = 64
    config.beam_size = 2
    config.target = 0.30
    config.num_epochs = 6
    config.num_runs = 1
    opts = T.RunOptions(workdir=str(tmp_path), progress=False, config_name="tiny",
                        checkpoint=False, num_runs=1)
    result = T.train("transformer", config, opts, print_fn=lambda s: None)
    run = result.runs[0]
    assert run.status == "success", run.reason
    assert run.metric >= 0.30 and run.throughput_unit == "tokens"
    r = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                        "training", "--ruleset", "0.7.0", run.log_path], capture_output=True,
                       text=True, cwd=str(tmp_path))
    assert "SUCCESS" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    keys = [json.loads(line[9:])["key"] for line in open(run.log_path) if line.startswith(":::MLLOG")]
    for key in ("opt_adam_epsilon", "max_sequence_length", "eval_accuracy", "train_samples"):
        assert key in keys
