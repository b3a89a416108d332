"""The GNMT inference system for ``python -m mlperf_jax.infer --benchmark=gnmt``: which model, which
weights, which QSL, and the accuracy report.

Which GNMT: a training run records no config file (only ``config_digest.txt`` and, in
``results.json``, the variant's name), so the inference side takes

- the architecture from the checkpoint itself: ``vocab_size`` and ``hidden`` from the embedding's
  shape, ``num_layers`` from the ``decoder_*`` layers, so any ``--config.model.*`` override of the
  run is followed;
- everything else from the config variant that goes with the data: ``tiny`` (the synthetic task)
  without ``--data_dir``, ``reference`` (newstest2014) with it; decoding follows that variant as
  training's evaluation does (reference: beam 5, length penalty 0.6 with constant 5, coverage
  penalty 0.1, at most 150 tokens; tiny: beam 4, at most 16).

A checkpoint whose vocabulary does not go with the data (a 160-id tiny model on newstest2014, a WMT
model on the synthetic task) is refused in one line.
"""

from __future__ import annotations

import os
import re
from typing import Callable

import numpy as np

from mlperf_jax.inference import translation_accuracy
from mlperf_jax.inference.translation_qsl import NEWSTEST2014_COUNT, TranslationQSL, synthetic_qsl, wmt_qsl
from mlperf_jax.inference.translation_sut import TranslationSUT, length_buckets
from mlperf_jax.input_pipelines import synthetic_translation as synth


class GNMTSetupError(Exception):
    """A user mistake (missing data or checkpoint, mismatched model): one line for the CLI."""


def model_shape(params: dict) -> dict[str, int]:
    """``vocab_size``, ``hidden``, ``num_layers`` of GNMT parameters (models/gnmt.py names)."""
    if "embedding" not in params:
        raise GNMTSetupError("the checkpoint holds no GNMT parameters (no 'embedding'); is it a GNMT run's?")
    if "target_embedding" in params:
        raise GNMTSetupError("the checkpoint's GNMT has separate target embeddings; this harness "
                             "builds the shared-embedding GNMT that training runs")
    vocab, hidden = (int(d) for d in np.shape(params["embedding"]))
    layers = sum(1 for k in params if re.fullmatch(r"decoder_\d+", k))
    return {"vocab_size": vocab, "hidden": hidden, "num_layers": layers}


def gnmt_config(variant: str, shape: dict[str, int] | None, dtype: str):
    """The config variant with the checkpoint's architecture and the compute dtype."""
    from mlperf_jax.configs import gnmt as gnmt_configs
    c = gnmt_configs.get_config(variant)
    if shape is not None:
        c.vocab_size = shape["vocab_size"]
        c.model.hidden = shape["hidden"]
        c.model.num_layers = shape["num_layers"]
    c.dtype = dtype
    return c


def translate_fn(config) -> Callable:
    """``translate(variables, src [B, S]) -> best beam [B, max_decode_len]`` for the GNMT of
    ``config`` (``benchmarks.gnmt.gnmt_beam_search``: the decoding training's eval runs)."""
    from mlperf_jax.benchmarks.gnmt import gnmt_beam_search

    def translate(variables, src):
        seqs, _ = gnmt_beam_search(config, variables["params"], src)
        return seqs[:, 0].astype(np.int32)
    return translate


def _restore(checkpoint_dir: str) -> dict:
    from absl import logging as absl_logging

    from mlperf_jax import checkpoint
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO chatter would bury a one-line error
    try:
        variables = checkpoint.restore_variables(checkpoint_dir)
    except FileNotFoundError as e:
        raise GNMTSetupError(f"--checkpoint_dir: {e}") from None
    finally:
        absl_logging.set_verbosity(verbosity)
    return {"params": variables["params"]}


def _check_model_fits_data(shape: dict[str, int], synthetic: bool) -> None:
    v = shape["vocab_size"]
    if synthetic and v != synth.VOCAB_SIZE:
        raise GNMTSetupError(f"the checkpoint's GNMT has a {v}-id vocabulary, not the tiny task's "
                             f"{synth.VOCAB_SIZE}: give --data_dir with newstest2014 for a WMT model")
    if not synthetic and v == synth.VOCAB_SIZE:
        raise GNMTSetupError(f"the checkpoint is a tiny-track GNMT ({v}-id synthetic vocabulary): it "
                             "translates the synthetic task; run it without --data_dir")


def build_gnmt_sut(*, data_dir: str | None, checkpoint_dir: str | None, batch_sizes: list[int],
                   batch_timeout_ms: float, dtype: str, count: int | None, name: str,
                   say: Callable[[str], None]) -> tuple[TranslationSUT, TranslationQSL, str, str]:
    """(sut, qsl, qsl description, weights description); raises GNMTSetupError (before any warning
    is printed, so that a mistake is one line)."""
    import jax
    synthetic = not data_dir
    variant = "tiny" if synthetic else "reference"
    variables = _restore(checkpoint_dir) if checkpoint_dir else None
    shape = model_shape(variables["params"]) if variables is not None else None
    if shape is not None:
        _check_model_fits_data(shape, synthetic)
    config = gnmt_config(variant, shape, dtype)
    if synthetic:
        qsl = synthetic_qsl(count or NEWSTEST2014_COUNT, seed=int(config.synthetic.eval_data_seed),
                            max_len=int(config.max_len))
        qsl_desc = "synthetic"
    else:
        try:
            qsl, qsl_desc = wmt_qsl(data_dir, config, count)
        except (FileNotFoundError, ValueError) as e:
            raise GNMTSetupError(f"--data_dir: {e}") from None
        if qsl.vocab_pieces > int(config.vocab_size):
            raise GNMTSetupError(f"--data_dir: the vocabulary has {qsl.vocab_pieces} pieces, more than "
                                 f"the model's {int(config.vocab_size)} ids")
    if synthetic:
        say("WARNING: no --data_dir: using the SYNTHETIC translation QSL of the tiny track (tiny GNMT, "
            "not newstest2014); BLEU is not an MLPerf result.")
    if variables is None:
        say("WARNING: no --checkpoint_dir: using RANDOM weights; accuracy results are meaningless.")
        from mlperf_jax.benchmarks.gnmt import BENCHMARK
        variables = {"params": jax.jit(lambda k: BENCHMARK.init(config, k)[0])(jax.random.key(0))}
        var_desc = "random init"
    else:
        var_desc = f"checkpoint {os.path.abspath(checkpoint_dir)}"
    m = config.model
    var_desc += (f" (GNMT {variant}: hidden {int(m.hidden)}, {int(m.num_layers)} layers, vocab "
                 f"{int(config.vocab_size)}; beam {int(config.beam_size)}, max {int(config.max_decode_len)} tokens)")
    sut = TranslationSUT(translate_fn(config), variables, qsl, batch_sizes=batch_sizes,
                         src_lengths=length_buckets(qsl.max_source_length),
                         batch_timeout_ms=batch_timeout_ms, name=name)
    print(f"infer: gnmt buckets: batch sizes {sut.batch_sizes} x source lengths {sut.src_lengths} "
          f"({len(sut.batch_sizes) * len(sut.src_lengths)} programs, {sut.compile_seconds:.1f} s)", flush=True)
    return sut, qsl, qsl_desc, var_desc


def report_accuracy(path: str, qsl: TranslationQSL, *, random_weights: bool = False) -> float:
    """Print the BLEU line of an accuracy run (what scripts/accuracy_translation.py computes)."""
    entries = translation_accuracy.read_log(path)
    bleu, n = translation_accuracy.evaluate(entries, qsl.references, qsl.detokenize, qsl.bleu_tokenize)
    notes = [w for w, on in (("tiny synthetic task, not newstest2014", qsl.name.startswith("Synthetic")),
                             ("random weights: meaningless", random_weights)) if on]
    print(f"infer: BLEU: {bleu:.2f} over {n} sentences (sacrebleu, tokenize={qsl.bleu_tokenize}); "
          f"{translation_accuracy.verdict(bleu)}" + (f" ({'; '.join(notes)})" if notes else ""))
    return bleu
