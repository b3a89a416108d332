"""BLEU of a GNMT accuracy run, checked against the MLPerf v0.5 quality target.

    python scripts/accuracy_translation.py --mlperf-accuracy-file OUT/mlperf_log_accuracy.json \
        [--data_dir DATA] [--vocab-size 32000]

Each response is the translation's int32 token ids; translation ``qsl_idx`` is scored against
newstest2014 German sentence ``qsl_idx`` (first entry per index, as the reference
``process_accuracy.py``).  ``--data_dir`` is what ``mlperf_jax.infer --data_dir`` read: the WMT
preparation's vocabulary and eval set, or the vocabulary plus ``newstest2014.en``/``.de``.  Without
it the references are the tiny track's synthetic task (``--synthetic-seed``, the seed the infer
harness uses).  Ids are detokenised with the vocabulary and scored with sacrebleu's ``corpus_bleu``
(``13a``; ``none`` on the synthetic task).  Prints ``BLEU: x`` and the target (99% of the FP32
23.9); exit status 0 if it is met, 1 if not, 2 on bad input.  Works on files written by
mlperf_jax.loadgen and by the official LoadGen.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_jax.cli import ArgumentParser  # noqa: E402
from mlperf_jax.inference import translation_accuracy as ta  # noqa: E402

PROG = "accuracy_translation"




def _references(a, entries):
    """(references, detokenize, sacrebleu tokenize, description)."""
    from mlperf_jax.inference import translation_qsl
    if a.data_dir:
        from mlperf_jax.configs import gnmt as gnmt_configs
        config = gnmt_configs.get_config("reference")
        config.vocab_size = a.vocab_size
        qsl, desc = translation_qsl.wmt_qsl(a.data_dir, config)
    else:
        n = 1 + max((int(e["qsl_idx"]) for e in entries), default=0)
        qsl = translation_qsl.synthetic_qsl(n, seed=a.synthetic_seed)
        desc = f"the tiny track's synthetic task (seed {a.synthetic_seed}): not newstest2014"
    return qsl.references, qsl.detokenize, qsl.bleu_tokenize, desc


def main(argv=None) -> int:
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--mlperf-accuracy-file", required=True, help="path to mlperf_log_accuracy.json")
    ap.add_argument("--data_dir", help="newstest2014 and the GNMT vocabulary (see above); "
                    "without it: the synthetic task's references")
    ap.add_argument("--vocab-size", type=int, default=32000, help="the GNMT vocabulary size "
                    "(names the prepared vocabulary file)")
    ap.add_argument("--synthetic-seed", type=int, default=1, help="seed of the synthetic references "
                    "(the tiny config's eval_data_seed)")
    a = ap.parse_args(argv)
    try:
        if not os.path.isfile(a.mlperf_accuracy_file):
            raise FileNotFoundError(f"--mlperf-accuracy-file: no file at {os.path.abspath(a.mlperf_accuracy_file)}")
        entries = ta.read_log(a.mlperf_accuracy_file)
        refs, detok, tokenize, desc = _references(a, entries)
        bleu, n = ta.evaluate(entries, refs, detok, tokenize)
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = str(e) if not isinstance(e, KeyError) else f"an accuracy entry lacks {e}"
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    print(f"references: {desc}; {n} sentences scored (sacrebleu corpus_bleu, tokenize={tokenize})")
    print(f"BLEU: {bleu:.2f}")
    print(ta.verdict(bleu))
    return 0 if bleu >= ta.target_bleu() else 1


if __name__ == "__main__":
    sys.exit(main())
