"""Query sample library for GNMT inference: English source sentences as token ids.

The MLPerf v0.5 GNMT harness (mlcommons/inference ``v0.5/translation/gnmt/tensorflow``) indexes
newstest2014 by line: qsl index ``i`` is sentence ``i`` of the 3,003-line En-De test set, and the
accuracy script scores translation ``i`` against German reference line ``i``.  Its mlperf.conf sets
``gnmt.*.performance_sample_count_override = 3903900``: the performance-mode input file
(``newstest2014.tok.bpe.32000.en.large``) is 3,903,900 = 1,300 x 3,003 lines, i.e. the test set
repeated (an inference from the count; the harness itself passes ``min(total, 3003)``).  Repeating
the same sentences changes nothing in what is measured, so this QSL holds the 3,003 sentences once:
``total_sample_count = performance_sample_count = 3003`` (LoadGen caps a larger override at the
QSL size).

Sources, from ``--data_dir``, always tokenised with this project's sentencepiece vocabulary (the one
the GNMT training run used; ``input_pipelines/wmt_prepare.py`` trains it):

1. the WMT preparation's eval set (``wmt_vocab/<train set>.spm<V>.eval.*.npz``: newstest2014 from
   TFDS ``wmt14_translate/de-en`` test, tokenised and truncated to ``max_eval_len``, plus the raw
   German references), or
2. the raw test set as the reference harness starts from it: ``newstest2014.en`` and
   ``newstest2014.de`` (one sentence a line), tokenised here the same way.

Without ``--data_dir``: the tiny track's synthetic task (``input_pipelines/synthetic_translation``,
the held-out seed training evaluates on), for the tiny GNMT model.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from mlperf_jax.input_pipelines import synthetic_translation as synth

NEWSTEST2014_COUNT = 3003
V05_PERFORMANCE_SAMPLE_COUNT = 3_903_900  # v0.5 mlperf.conf: 1,300 copies of newstest2014
RAW_FILES = ("newstest2014.en", "newstest2014.de")


class TranslationQSL:
    """Token-id sources (EOS included, no padding) with what accuracy needs: ``references`` (text,
    qsl order), ``detokenize(ids) -> text`` and sacrebleu's ``bleu_tokenize``."""

    def __init__(self, sources: Sequence[np.ndarray], references: Sequence[str], *,
                 detokenize: Callable[[Sequence[int]], str], bleu_tokenize: str, name: str,
                 performance_sample_count: int | None = None):
        if not sources:
            raise ValueError("the translation QSL has no sentences")
        if len(sources) != len(references):
            raise ValueError(f"{len(sources)} sources but {len(references)} references")
        self.name = name
        self.sources = [np.asarray(s, np.int32) for s in sources]
        self.lengths = np.asarray([len(s) for s in self.sources], np.int32)
        self.references = list(references)
        self.detokenize = detokenize
        self.bleu_tokenize = bleu_tokenize
        self.total_sample_count = len(self.sources)
        self.performance_sample_count = min(performance_sample_count or self.total_sample_count,
                                            self.total_sample_count)
        self.max_source_length = int(self.lengths.max())
        self._ram: dict[int, np.ndarray] = {}

    # ---- LoadGen QSL protocol
    def load_samples_to_ram(self, indices) -> None:
        for i in indices:
            self._ram[int(i)] = self.sources[int(i)]

    def unload_samples_from_ram(self, indices) -> None:
        for i in indices:
            self._ram.pop(int(i), None)

    # ---- what the SUT reads
    def get(self, indices) -> list[np.ndarray]:
        """The loaded sources of ``indices`` (KeyError for one LoadGen did not load)."""
        return [self._ram[int(i)] for i in indices]

    def source_length(self, index: int) -> int:
        return int(self.lengths[int(index)])


# ---------------------------------------------------------------------------- synthetic
def synthetic_qsl(count: int = NEWSTEST2014_COUNT, seed: int = 1, max_len: int = 16) -> TranslationQSL:
    """The tiny track's task: ``count`` held-out pairs from ``seed`` (the tiny config's
    ``eval_data_seed``: the first 256 are the sentences training evaluates on)."""
    data = synth.SyntheticTranslation(int(count), data_seed=int(seed), max_src_len=max_len,
                                      max_tgt_len=max_len)
    sources = [row[row > 0] for row in data.inputs]
    return TranslationQSL(sources, data.references, detokenize=synth.decode, bleu_tokenize="none",
                          name="SyntheticTranslationQSL")


# ---------------------------------------------------------------------------- WMT newstest2014
def _vocab_decoder(sp) -> Callable[[Sequence[int]], str]:
    from mlperf_jax.input_pipelines import wmt_prepare as wmt

    pieces = sp.get_piece_size()

    def detokenize(ids) -> str:
        ids = [int(i) for i in ids]
        if wmt.EOS_ID in ids:
            ids = ids[: ids.index(wmt.EOS_ID)]
        # ids past the vocabulary (a model's unused rows) read as unknown, as sentencepiece's own
        return sp.decode([i if i < pieces else wmt.UNK_ID for i in ids if i > wmt.EOS_ID])
    return detokenize


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def wmt_sources(data_dir: str, config) -> tuple[str, str | None, str]:
    """(vocabulary path, prepared eval .npz or None for the raw files, description); raises
    FileNotFoundError naming what is missing and how to make it."""
    from mlperf_jax.input_pipelines import wmt_prepare as wmt
    vpath = wmt.vocab_path(data_dir, config.train_dataset, int(config.vocab_size))
    epath = wmt.eval_path(data_dir, config)
    raw = [os.path.join(data_dir, f) for f in RAW_FILES]
    cmd = wmt.prepare_command(config, data_dir)
    if not os.path.isfile(vpath):
        raise FileNotFoundError(
            f"no GNMT vocabulary at {vpath} (the sentencepiece model GNMT training used): run `{cmd}`")
    if os.path.isfile(epath):
        return vpath, epath, f"newstest2014 prepared in {epath}"
    if all(os.path.isfile(p) for p in raw):
        return vpath, None, f"newstest2014 from {raw[0]} + {RAW_FILES[1]}"
    missing = [p for p in raw if not os.path.isfile(p)]
    raise FileNotFoundError(
        f"no newstest2014 under {os.path.abspath(data_dir)}: neither the prepared eval set {epath} "
        f"(`{cmd}`) nor the raw test set ({', '.join(missing)} missing; one sentence a line)")


def wmt_qsl(data_dir: str, config, count: int | None = None) -> tuple[TranslationQSL, str]:
    """newstest2014 En->De from ``data_dir`` (module docstring), tokenised with the vocabulary of
    ``config`` (``train_dataset``, ``vocab_size``, ``max_eval_len``)."""
    from mlperf_jax.input_pipelines import wmt_prepare as wmt
    vpath, epath, desc = wmt_sources(data_dir, config)
    sp = wmt.load_vocab(vpath)
    if epath is not None:
        with np.load(epath) as z:
            inputs, refs = z["inputs"], [str(r) for r in z["references"]]
        sources = [row[row > 0] for row in inputs]
    else:
        src_text = _read_lines(os.path.join(data_dir, RAW_FILES[0]))
        refs = _read_lines(os.path.join(data_dir, RAW_FILES[1]))
        if len(src_text) != len(refs):
            raise ValueError(f"{RAW_FILES[0]} has {len(src_text)} lines but {RAW_FILES[1]} has "
                             f"{len(refs)} in {os.path.abspath(data_dir)}")
        enc = wmt._tokenize_fn(sp, int(config.get("max_eval_len", config.max_len)), truncate=True)
        flat, lengths = enc(np.asarray([t.encode("utf-8") for t in src_text], dtype=object))
        offs = np.concatenate([[0], np.cumsum(lengths)])
        sources = [flat[offs[i]:offs[i + 1]] for i in range(len(lengths))]
    if count:
        sources, refs = sources[:count], refs[:count]
    if len(sources) != NEWSTEST2014_COUNT and not count:
        desc += f" ({len(sources)} sentences, not newstest2014's {NEWSTEST2014_COUNT})"
    qsl = TranslationQSL(sources, refs, detokenize=_vocab_decoder(sp),
                         bleu_tokenize=str(config.get("bleu_tokenize", "13a")), name="Newstest2014QSL")
    qsl.vocab_pieces = sp.get_piece_size()
    return qsl, desc
