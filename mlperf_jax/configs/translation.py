"""Fields the two translation benchmarks (Transformer, GNMT) share: WMT En-De data, BLEU on
newstest2014, and the synthetic tiny track. ``transformer.py`` and ``gnmt.py`` start from these."""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

#: the synthetic task's vocabulary size (input_pipelines/synthetic_translation.py: VOCAB_SIZE)
SYNTHETIC_VOCAB_SIZE = 160  # tests check it equals synthetic_translation.VOCAB_SIZE


def common(benchmark: str, variant: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.benchmark_name = benchmark
    c.target = placeholder(float)  # None: the round's target (mlperf_jax/rounds.py)
    c.target_metric = "bleu"         # sacrebleu corpus BLEU as a fraction, as the log wants it
    c.eval_every_epochs = 1
    c.eval_offset_epochs = 0
    c.num_runs = 10
    c.dtype = "float32"
    c.label_smoothing = 0.1
    c.bleu_tokenize = "13a"
    c.eval_dataset = "wmt14_translate/de-en"   # its test split is newstest2014
    c.eval_split = "test"
    c.source_language, c.target_language = "en", "de"
    c.division = "closed"
    c.dataset = "tfds"
    return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The tiny track: a synthetic translation task with agreement and reordering rules."""
    c.division = "open"
    c.dataset = "synthetic"
    c.vocab_size = SYNTHETIC_VOCAB_SIZE
    c.max_len = 16
    c.max_decode_len = 16
    c.pack = False
    # BLEU/100 on held-out sentences: a word-by-word mapping scores about 0.35 and one that
    # also reorders (but gets no agreement right) about 0.61; 0.90 needs the agreement rules.
    c.target = 0.90
    c.bleu_tokenize = "none"
    c.global_batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = 20
    c.num_runs = 3
    c.synthetic = ml_collections.ConfigDict(dict(
        num_train=8192, num_eval=256, train_data_seed=0, eval_data_seed=1))
    return c
