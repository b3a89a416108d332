"""MLPerf GNMT (translation, recurrent): the ``rnn_translator`` reference model on WMT16
English-German, target 24.0 SacreBLEU (logged as 0.24) on newstest2014, evaluated every epoch.

Variants: ``reference`` (closed division, TFDS data) and ``tiny`` (the synthetic task; open
division, labelled as the tiny track). Hyperparameters from the MLPerf reference
(mlcommons/training ``rnn_translator/pytorch``, ``train.py`` defaults).
"""
from __future__ import annotations

import ml_collections

from mlperf_jax.configs import translation

VARIANTS = ("reference", "tiny")


def get_config(variant: str = "reference") -> ml_collections.ConfigDict:
    c = translation.common("gnmt", variant)
    c.adam_beta1 = 0.9
    c.adam_beta2 = 0.999
    c.adam_epsilon = 1e-8
    c.grad_clip_norm = 5.0
    # WarmupMultiStepLR of the reference: exponential warm-up from 1% of the rate, constant until
    # remain_steps (a fraction of all steps), then decay_steps halvings, decay_interval apart
    c.learning_rate = 2.0e-3
    c.warmup_steps = 200
    c.remain_steps = 0.666
    c.decay_steps = 4
    c.decay_factor = 0.5
    c.beam_size = 5
    c.length_penalty_alpha = 0.6
    c.length_penalty_const = 5.0
    c.coverage_penalty = 0.1
    c.model = ml_collections.ConfigDict(dict(hidden=1024, num_layers=4, dropout_rate=0.2,
                                             init_scale=0.1))
    if variant == "reference":
        c.train_dataset = "wmt16_translate/de-en"  # the reference's WMT16 training data
        c.vocab_size = 32000
        c.vocab_model_type = "bpe"    # the reference's subwords are BPE (32k merges, shared)
        c.max_len = 50              # training pairs longer than this are discarded
        c.max_eval_len = 150
        c.max_decode_len = 150
        c.pack = False              # the reference batches sentences (no packing)
        c.global_batch_size = 128
        c.eval_batch_size = 128
        c.num_epochs = 8
    elif variant == "tiny":
        translation.tiny(c)
        c.beam_size = 4
        c.learning_rate = 1.0e-2
        c.warmup_steps = 50
        # uniform(-0.3, 0.3) instead of the reference's 0.1: at this width the small init leaves
        # the attention without gradient for several epochs
        c.model = ml_collections.ConfigDict(dict(hidden=128, num_layers=2, dropout_rate=0.0,
                                                 init_scale=0.3))
    else:
        raise ValueError(f"unknown gnmt config {variant!r}; known: {', '.join(VARIANTS)}")
    return c
