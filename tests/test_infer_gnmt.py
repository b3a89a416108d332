"""GNMT inference (``--benchmark=gnmt``): the length-bucketed SUT, the newstest2014 QSL layouts, the
accuracy script against sacrebleu, and the infer CLI on the tiny GNMT (CPU).

Oracles: the official ``mlperf_loadgen`` (it issues the Offline query and writes the accuracy log),
sacrebleu on texts built here, sentencepiece's own encode/decode, brute-force batch cuts, and the
BLEU the tiny training run logs for the same 256 held-out sentences.
"""

import array
import json
import os
import re
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from mlperf_jax.inference import translation_accuracy as ta
from mlperf_jax.inference.translation_qsl import TranslationQSL, wmt_qsl
from mlperf_jax.inference.translation_sut import TranslationSUT, length_buckets
from mlperf_jax.input_pipelines import synthetic_translation as synth
from mlperf_jax.loadgen import QuerySample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "accuracy_translation.py")


def echo(variables, src):
    """A fake translator: answers its (padded) source, so a response shows which sample it got."""
    return src * variables["one"]


def varied_qsl(n: int, seed: int = 0) -> TranslationQSL:
    rng = np.random.default_rng(seed)
    sources = [np.append(rng.integers(3, 100, int(k) - 1), 1) for k in rng.integers(1, 21, n)]
    return TranslationQSL(sources, [""] * n, detokenize=str, bleu_tokenize="none", name="VariedQSL")


def _wait(cond, seconds=60.0):
    end = time.time() + seconds
    while not cond():
        assert time.time() < end, "timed out waiting for the SUT"
        time.sleep(0.01)


def test_length_buckets():
    assert length_buckets(150) == [16, 32, 64, 128, 150]
    assert length_buckets(11) == [11]
    assert length_buckets(16) == [16]
    assert length_buckets(17) == [16, 17]


def test_offline_sorts_by_length_cuts_batches_and_answers_each_sample_once():
    n = 45
    qsl = varied_qsl(n)
    qsl.load_samples_to_ram(range(n))
    got = []
    issued = [QuerySample(1000 + k, int(i)) for k, i in enumerate(np.random.default_rng(1).permutation(n))]
    with TranslationSUT(echo, {"one": jnp.int32(1)}, qsl, batch_sizes=(2, 8),
                        src_lengths=length_buckets(qsl.max_source_length), complete=got.extend, record_batches=True) as sut:
        sut.issue_queries(issued)  # Offline: the whole set in one call
        _wait(lambda: len(got) == n)
        time.sleep(0.05)
    assert sut.error is None
    assert sorted(r.id for r in got) == [s.id for s in issued]  # every sample answered once
    index_of = {s.id: s.index for s in issued}
    for r in got:
        np.testing.assert_array_equal(np.frombuffer(r.payload(), np.int32), qsl.sources[index_of[r.id]])
    # brute force: issued samples stably sorted by source length, cut in batches of 8, each batch in
    # the smallest compiled batch size and length bucket that hold it
    order = sorted(issued, key=lambda s: len(qsl.sources[s.index]))
    expected = []
    for k in range(0, n, 8):
        chunk = [s.index for s in order[k:k + 8]]
        longest = max(len(qsl.sources[i]) for i in chunk)
        expected.append((2 if len(chunk) <= 2 else 8, 16 if longest <= 16 else 20, chunk))
    assert sut.batch_log == expected


def test_server_dynamic_batching_answers_each_sample_once():
    n = 30
    qsl = varied_qsl(n, seed=2)
    qsl.load_samples_to_ram(range(n))
    got = []
    with TranslationSUT(echo, {"one": jnp.int32(1)}, qsl, batch_sizes=(1, 4), src_lengths=(20,),
                        batch_timeout_ms=20, complete=got.extend, record_batches=True) as sut:
        for i in range(n):  # one sample a query, as Server issues them
            sut.issue_queries([QuerySample(i, i)])
            if i % 3 == 2:
                time.sleep(0.03)  # past the timeout: a partial batch goes
        _wait(lambda: len(got) == n)
    assert sorted(r.id for r in got) == list(range(n))
    for r in got:
        np.testing.assert_array_equal(np.frombuffer(r.payload(), np.int32), qsl.sources[r.id])
    assert sum(len(ix) for _, _, ix in sut.batch_log) == n
    assert 1 < len(sut.batch_log) < n  # batched, not one by one


def test_official_loadgen_offline_accuracy_log_holds_the_ids():
    """Under the official LoadGen (Offline, accuracy): one query with every sample; its accuracy
    log has each qsl_idx once and decodes to that sample's ids."""
    mlperf_loadgen = pytest.importorskip("mlperf_loadgen")
    import tempfile
    n = 40
    qsl = varied_qsl(n, seed=3)

    def complete(responses):
        bufs = [array.array("B", r.payload()) for r in responses]
        mlperf_loadgen.QuerySamplesComplete([
            mlperf_loadgen.QuerySampleResponse(r.id, b.buffer_info()[0] if len(b) else 0, len(b))
            for r, b in zip(responses, bufs)])

    with tempfile.TemporaryDirectory() as out, \
            TranslationSUT(echo, {"one": jnp.int32(1)}, qsl, batch_sizes=(16,), src_lengths=(8, 20),
                           complete=complete, record_batches=True) as sut:
        settings = mlperf_loadgen.TestSettings()
        settings.scenario = mlperf_loadgen.TestScenario.Offline
        settings.mode = mlperf_loadgen.TestMode.AccuracyOnly
        log = mlperf_loadgen.LogSettings()
        log.log_output.outdir = out
        log.enable_trace = False
        s = mlperf_loadgen.ConstructSUT(sut.issue_queries, sut.flush_queries)
        q = mlperf_loadgen.ConstructQSL(n, n, qsl.load_samples_to_ram, qsl.unload_samples_from_ram)
        mlperf_loadgen.StartTestWithLogSettings(s, q, settings, log)
        mlperf_loadgen.DestroyQSL(q)
        mlperf_loadgen.DestroySUT(s)
        entries = json.loads(open(os.path.join(out, "mlperf_log_accuracy.json")).read())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(n))
    for e in entries:
        np.testing.assert_array_equal(ta.decode_response(e["data"]), qsl.sources[e["qsl_idx"]])
    # three batches of 16 sorted sentences: lengths never go down from one batch to the next
    lens = [[len(qsl.sources[i]) for i in ix] for _, _, ix in sut.batch_log]
    assert [len(x) for x in lens] == [16, 16, 8]
    assert all(max(a) <= min(b) for a, b in zip(lens, lens[1:]))


# ---------------------------------------------------------------------------- accuracy script
def _log(path, items):
    """Accuracy log of (qsl_idx, int32 ids) items, in the LoadGen's json layout."""
    path.write_text(json.dumps([{"seq_id": k, "qsl_idx": int(i), "data": np.asarray(ids, np.int32).tobytes().hex()}
                                for k, (i, ids) in enumerate(items)]))
    return str(path)


def _script(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)


def _script_here(capsys, *args):
    """The script's main() in this process (saves an interpreter start): (status, stdout, stderr)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("accuracy_translation", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        rc = mod.main(list(args))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_accuracy_script_reference_ids_give_100(tmp_path):
    data = synth.SyntheticTranslation(30, data_seed=1)
    log = _log(tmp_path / "acc.json", [(i, t[t > 0]) for i, t in enumerate(data.targets)])
    p = _script(f"--mlperf-accuracy-file={log}")
    assert p.returncode == 0, p.stderr
    assert "BLEU: 100.00" in p.stdout and "PASS" in p.stdout


def test_accuracy_script_matches_sacrebleu_on_a_partial_log(tmp_path, capsys):
    data = synth.SyntheticTranslation(30, data_seed=1)
    hyps = {}
    for i, ref in enumerate(data.references):
        words = ref.split()
        if i % 3 == 1:
            words = words[:-2]                    # shorter
        elif i % 3 == 2:
            words = words[::-1]                   # scrambled
        hyps[i] = " ".join(words)
    del hyps[5]  # a sample the log does not hold is not scored
    items = [(i, synth.encode(h.split())) for i, h in hyps.items()]
    items.append((7, synth.encode(["Nomen1"])))  # a second answer for sample 7: the first counts
    rc, out, _ = _script_here(capsys, f"--mlperf-accuracy-file={_log(tmp_path / 'acc.json', items)}")
    order = sorted(hyps)
    want = sacrebleu.corpus_bleu([hyps[i] for i in order], [[data.references[i] for i in order]],
                                 tokenize="none").score
    assert 30 < want < 95
    assert f"BLEU: {want:.2f}" in out, out
    assert "29 sentences scored" in out
    assert ("PASS" in out) == (want >= 23.9 * 0.99) and rc == (0 if want >= 23.661 else 1)


def test_accuracy_script_fail_below_target(tmp_path, capsys):
    items = [(i, synth.encode(["Nomen3", "verb1t"])) for i in range(20)]
    rc, out, _ = _script_here(capsys, f"--mlperf-accuracy-file={_log(tmp_path / 'acc.json', items)}")
    want = sacrebleu.corpus_bleu(["Nomen3 verb1t"] * 20,
                                 [synth.SyntheticTranslation(20, data_seed=1).references], tokenize="none").score
    assert f"BLEU: {want:.2f}" in out and "FAIL" in out and rc == 1


@pytest.mark.parametrize("case,needle", [
    ("missing", "no file at"),
    ("badhex", "qsl_idx 0"),
    ("odd", "not int32 token ids"),
    ("notlist", "expected a json list"),
    ("nodata", "no newstest2014 under"),
])
def test_accuracy_script_errors_are_one_line(tmp_path, capsys, case, needle):
    log = tmp_path / "acc.json"
    args = [f"--mlperf-accuracy-file={log}"]
    if case == "badhex":
        log.write_text(json.dumps([{"qsl_idx": 0, "data": "zz"}]))
    elif case == "odd":
        log.write_text(json.dumps([{"qsl_idx": 0, "data": "010203"}]))
    elif case == "notlist":
        log.write_text("{}")
    elif case == "nodata":
        _log(log, [(0, [5, 1])])
        os.makedirs(tmp_path / "wmt_vocab")
        (tmp_path / "wmt_vocab" / "wmt16_translate_de-en.spm32000.model").write_bytes(b"x")
        args.append(f"--data_dir={tmp_path}")
    rc, _, err = _script_here(capsys, *args)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------- newstest2014 layouts
EN = ["The cat sat on the mat.", "A dog barks at the moon tonight.", "Where is the station?",
      "I would like a cup of coffee, please.", "The weather is nice today and tomorrow.",
      "Our house is small but the garden is large."]
DE = ["Die Katze sass auf der Matte.", "Ein Hund bellt heute Nacht den Mond an.", "Wo ist der Bahnhof?",
      "Ich haette gern eine Tasse Kaffee, bitte.", "Das Wetter ist heute und morgen schoen.",
      "Unser Haus ist klein, aber der Garten ist gross."]


def _gnmt_reference_config(vocab_size: int = 32000):
    from mlperf_jax.configs import gnmt
    c = gnmt.get_config("reference")
    c.vocab_size = vocab_size
    return c


@pytest.fixture(scope="module")
def wmt_dir(tmp_path_factory):
    """A data dir with a small sentencepiece vocabulary where the WMT preparation puts GNMT's
    (ids 0 pad, 1 EOS, 2 unknown, as wmt_prepare trains it) and the raw newstest2014 files."""
    import sentencepiece as spm
    from mlperf_jax.input_pipelines import wmt
    d = tmp_path_factory.mktemp("wmt")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join((EN + DE) * 5) + "\n")
    vpath = wmt.vocab_path(str(d), "wmt16_translate/de-en", 256)
    os.makedirs(os.path.dirname(vpath))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=vpath[:-len(".model")], vocab_size=250,
                                   model_type="bpe", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    (d / "newstest2014.en").write_text("\n".join(EN) + "\n")
    (d / "newstest2014.de").write_text("\n".join(DE) + "\n")
    return d, spm.SentencePieceProcessor(model_file=vpath)


def test_wmt_qsl_reads_raw_and_prepared_layouts(wmt_dir, tmp_path):
    from mlperf_jax.input_pipelines import wmt
    d, sp = wmt_dir
    config = _gnmt_reference_config(256)
    qsl, desc = wmt_qsl(str(d), config)
    assert "newstest2014.en" in desc and qsl.total_sample_count == len(EN) == qsl.performance_sample_count
    assert qsl.references == DE and qsl.bleu_tokenize == "13a"
    for src, text in zip(qsl.sources, EN):
        assert list(src) == sp.encode(text) + [1]
    assert qsl.detokenize(sp.encode(DE[3]) + [1, 7, 7]) == sp.decode(sp.encode(DE[3]))
    # the preparation's eval set (what `prepare_data.py --benchmark=gnmt` writes) wins over raw files
    inputs = np.zeros((2, 150), np.int32)
    for i, text in enumerate(EN[:2]):
        ids = sp.encode(text) + [1]
        inputs[i, :len(ids)] = ids
    np.savez(wmt.eval_path(str(d), config), inputs=inputs, targets=inputs,
             references=np.asarray(DE[:2], dtype=np.str_))
    try:
        qsl2, desc2 = wmt_qsl(str(d), config)
    finally:
        os.remove(wmt.eval_path(str(d), config))
    assert "prepared" in desc2 and qsl2.references == DE[:2]
    assert [list(s) for s in qsl2.sources] == [list(s) for s in qsl.sources[:2]]
    with pytest.raises(FileNotFoundError, match="newstest2014.de missing"):
        os.makedirs(tmp_path / "wmt_vocab")
        os.link(wmt.vocab_path(str(d), "wmt16_translate/de-en", 256),
                wmt.vocab_path(str(tmp_path), "wmt16_translate/de-en", 256))
        (tmp_path / "newstest2014.en").write_text("x\n")
        wmt_qsl(str(tmp_path), config)


def _infer(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mlperf_jax.infer", "--benchmark=gnmt", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _save_checkpoint(path, config, seed):
    """Random GNMT parameters of ``config``'s shapes (uniform in +-init_scale, as the model's own
    initialiser; eager ``init`` takes seconds) saved as a training checkpoint."""
    import jax
    from mlperf_jax.benchmarks import gnmt as gb
    from mlperf_jax.checkpoint import Checkpointer
    shapes = jax.eval_shape(lambda k: gb.BENCHMARK.init(config, k)[0], jax.random.key(0))
    rng = np.random.default_rng(seed)
    scale = float(config.model.init_scale)
    params = jax.tree.map(lambda a: rng.uniform(-scale, scale, a.shape).astype(np.float32), shapes)
    ck = Checkpointer(str(path))
    ck.save(1, {"params": params})
    ck.close()
    return params


@pytest.fixture(scope="module")
def small_wmt_checkpoint(tmp_path_factory):
    """A small GNMT (hidden 16, 2 layers) over the 256-id vocabulary of ``wmt_dir``."""
    config = _gnmt_reference_config(256)
    config.model.hidden, config.model.num_layers = 16, 2
    path = tmp_path_factory.mktemp("ckpt") / "wmt"
    return path, config, _save_checkpoint(path, config, 3)


@pytest.mark.parametrize("case,needle", [
    ("no_vocab", "no GNMT vocabulary at"),
    ("tiny_on_wmt", "tiny-track GNMT (160-id synthetic vocabulary)"),
    ("wmt_on_synthetic", "256-id vocabulary, not the tiny task's 160"),
])
def test_cli_user_errors_are_one_line(wmt_dir, small_wmt_checkpoint, tmp_path, case, needle):
    args = ["--mode=accuracy", f"--outdir={tmp_path / 'out'}"]
    if case == "no_vocab":
        args.append(f"--data_dir={tmp_path}")
    elif case == "tiny_on_wmt":
        from mlperf_jax.configs import gnmt
        _save_checkpoint(tmp_path / "tiny", gnmt.get_config("tiny"), 0)
        args += [f"--data_dir={wmt_dir[0]}", f"--checkpoint_dir={tmp_path / 'tiny'}"]
    else:
        args.append(f"--checkpoint_dir={small_wmt_checkpoint[0]}")
    p = _infer(*args)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr
    assert lines[0].startswith("infer: error: ")
    if case == "no_vocab":
        assert "prepare_data.py --benchmark=gnmt" in lines[0]


def test_cli_newstest_layout_small_checkpoint(wmt_dir, small_wmt_checkpoint, tmp_path):
    """A small GNMT checkpoint (vocab 256) on the raw newstest2014 layout: the harness reads the
    architecture from the checkpoint, answers what one unbucketed beam search over the padded set
    gives, and its BLEU line is sacrebleu (13a) of the sentencepiece-decoded answers."""
    import jax
    from mlperf_jax.benchmarks import gnmt as gb
    d, sp = wmt_dir
    ckpt, config, params = small_wmt_checkpoint
    out = tmp_path / "out"
    p = _infer(f"--data_dir={d}", f"--checkpoint_dir={ckpt}", "--scenario=Offline",
               "--mode=accuracy", "--batch_sizes=4", f"--outdir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "hidden 16, 2 layers, vocab 256" in p.stdout
    entries = json.loads((out / "mlperf_log_accuracy.json").read_text())
    got = {e["qsl_idx"]: ta.decode_response(e["data"]) for e in entries}
    assert sorted(got) == list(range(len(EN)))
    ids = [sp.encode(text) + [1] for text in EN]
    src = np.zeros((len(EN), max(map(len, ids))), np.int32)
    for i, row in enumerate(ids):
        src[i, :len(row)] = row
    want = np.asarray(jax.jit(lambda p, x: gb.gnmt_beam_search(config, p, x)[0][:, 0])(params, src))
    for i in range(len(EN)):
        np.testing.assert_array_equal(got[i], np.trim_zeros(want[i], "b"))
    hyps = [sp.decode([t for t in got[i].tolist() if t > 1]) for i in range(len(EN))]
    bleu = sacrebleu.corpus_bleu(hyps, [DE], tokenize="13a").score
    assert re.search(rf"infer: BLEU: {bleu:.2f} over {len(EN)} sentences \(sacrebleu, tokenize=13a\)", p.stdout), p.stdout


def _eval_bleu(result_log: str) -> float:
    vals = [json.loads(ln.split(":::MLLOG ", 1)[1])["value"] for ln in open(result_log)
            if '"key": "eval_accuracy"' in ln]
    return 100 * vals[-1]


def test_cli_tiny_gnmt_offline_accuracy_prints_a_bleu_line(tmp_path):
    """`infer --benchmark=gnmt --scenario=Offline --mode=accuracy` without data or checkpoint: the
    tiny GNMT (random weights) on the synthetic QSL; every sample answered once, and the BLEU line
    is what the accuracy script computes from the log."""
    out = tmp_path / "out"
    p = _infer("--scenario=Offline", "--mode=accuracy", "--total_sample_count=64", "--batch_sizes=32",
               f"--outdir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "SYNTHETIC translation QSL" in p.stderr and "RANDOM weights" in p.stderr
    assert "hidden 128, 2 layers, vocab 160; beam 4, max 16 tokens" in p.stdout
    m = re.search(r"infer: BLEU: ([\d.]+) over 64 sentences \(sacrebleu, tokenize=none\); target 23.661", p.stdout)
    assert m, p.stdout
    entries = json.loads((out / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(64))
    s = _script(f"--mlperf-accuracy-file={out / 'mlperf_log_accuracy.json'}")
    assert f"BLEU: {m.group(1)}" in s.stdout, s.stdout + s.stderr


@pytest.mark.slow
def test_cli_tiny_trained_gnmt_offline_accuracy(tmp_path):
    """Train the tiny GNMT (about 20 s on a CPU), then `infer --benchmark=gnmt --scenario=Offline
    --mode=accuracy` on its checkpoint: the BLEU line over the first 256 synthetic sentences (the
    held-out set training evaluates on) equals the BLEU the training run logged."""
    work = tmp_path / "run"
    t = subprocess.run([sys.executable, "-m", "mlperf_jax.train", "--benchmark=gnmt", "--num_runs=1",
                        f"--workdir={work}", "--noprogress"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert t.returncode == 0, t.stderr[-3000:]
    logged = _eval_bleu(str(work / "result_0.txt"))
    out = tmp_path / "out"
    p = _infer(f"--checkpoint_dir={work / 'run_0' / 'checkpoints'}", "--scenario=Offline", "--mode=accuracy",
               "--total_sample_count=256", "--batch_sizes=64", f"--outdir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    m = re.search(r"infer: BLEU: ([\d.]+) over 256 sentences", p.stdout)
    assert m, p.stdout
    assert float(m.group(1)) == pytest.approx(logged, abs=0.006)
    s = _script(f"--mlperf-accuracy-file={out / 'mlperf_log_accuracy.json'}")
    assert f"BLEU: {m.group(1)}" in s.stdout
