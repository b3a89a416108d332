"""MLPerf Transformer (translation, non-recurrent): Transformer big on WMT English-German, target
25.0 BLEU (logged as 0.25) on newstest2014, evaluated every epoch.

Variants: ``reference`` (closed division, TFDS data) and ``tiny`` (the synthetic task; open
division, labelled as the tiny track). Hyperparameters from the MLPerf reference
(mlcommons/training ``translation/tensorflow/transformer``, ``model_params.BIG_PARAMS``).
"""
from __future__ import annotations

import ml_collections

from mlperf_jax.configs import translation

VARIANTS = ("reference", "tiny")


def get_config(variant: str = "reference") -> ml_collections.ConfigDict:
    c = translation.common("transformer", variant)
    c.adam_beta1 = 0.9
    c.adam_beta2 = 0.997
    c.adam_epsilon = 1e-9
    c.beam_size = 4
    c.length_penalty_alpha = 0.6
    c.model = ml_collections.ConfigDict(dict(
        d_model=1024, num_heads=16, num_layers=6, d_ff=4096, dropout_rate=0.1,
        attention_dropout_rate=0.1, relu_dropout_rate=0.1))
    if variant == "reference":
        c.train_dataset = "wmt17_translate/de-en"
        c.vocab_size = 33708          # the reference's shared subword vocabulary size
        c.vocab_model_type = "unigram"
        c.max_len = 256               # training sequences longer than this are discarded
        c.max_eval_len = 256          # eval sources are truncated to this (none is longer)
        c.max_decode_len = 256
        c.pack = True                 # training examples packed into rows of max_len tokens
        c.global_batch_size = 128     # packed rows of 256 tokens (about 27k target tokens)
        c.eval_batch_size = 128
        c.num_epochs = 10
        c.learning_rate = 2.0         # the reference's scale constant
        c.warmup_steps = 16000
    elif variant == "tiny":
        translation.tiny(c)
        c.learning_rate = 2.0
        c.warmup_steps = 200
        c.model = ml_collections.ConfigDict(dict(
            d_model=64, num_heads=4, num_layers=2, d_ff=128, dropout_rate=0.0,
            attention_dropout_rate=0.0, relu_dropout_rate=0.0))
    else:
        raise ValueError(f"unknown transformer config {variant!r}; known: {', '.join(VARIANTS)}")
    return c
