"""BLEU of a GNMT accuracy run (``mlperf_log_accuracy.json``, ours or the official LoadGen's).

Reading, as the v0.5 reference's ``process_accuracy.py``: entries are deduplicated by ``qsl_idx``
(the first one wins) and translation ``qsl_idx`` is scored against reference sentence ``qsl_idx``.
A response is the translation's int32 token ids (``np.frombuffer(bytes.fromhex(data), np.int32)``,
EOS and anything after it ignored), turned into text with the vocabulary the model was trained
with; the score is sacrebleu's ``corpus_bleu`` of those texts against the raw references of the
same samples, in qsl order (``13a`` tokenisation on newstest2014, as the MLPerf GNMT training
reference and this project's training eval; ``none`` on the tiny synthetic task).

Where this differs from v0.5: the reference harness answered UTF-8 text (BPE merged, still
Moses-tokenised) and scored it with the TF ``nmt`` tokenised BLEU against the tokenised
references; the v0.5 quality bound is 99% of the FP32 reference's 23.9 BLEU, i.e. 23.661.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Sequence

import numpy as np

FP32_BLEU = 23.9
FRACTION = 0.99


def target_bleu() -> float:
    """The v0.5 quality bound: 99% of the FP32 reference's 23.9 BLEU."""
    return FP32_BLEU * FRACTION


def read_log(path: str) -> list[dict]:
    """The accuracy log's entries; ValueError when it is not a json list."""
    with open(path) as f:
        try:
            entries = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid json ({e})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a json list of accuracy entries")
    return entries


def decode_response(hex_data: str) -> np.ndarray:
    """A response's hex string -> int32 token ids."""
    raw = bytes.fromhex(hex_data)
    if len(raw) % 4:
        raise ValueError(f"a response of {len(raw)} bytes is not int32 token ids")
    return np.frombuffer(raw, np.int32)


def translations(entries: Iterable[dict], detokenize: Callable[[Sequence[int]], str],
                 num_references: int) -> dict[int, str]:
    """qsl_idx -> detokenised translation, first entry of each index."""
    out: dict[int, str] = {}
    for e in entries:
        idx = int(e["qsl_idx"])
        if idx in out:
            continue
        if not 0 <= idx < num_references:
            raise ValueError(f"qsl_idx {idx} is outside the {num_references} reference sentences")
        try:
            ids = decode_response(e["data"])
        except ValueError as err:
            raise ValueError(f"qsl_idx {idx}: {err}") from None
        out[idx] = detokenize(ids)
    return out


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU (0-100)."""
    import sacrebleu
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score)


def evaluate(entries: Iterable[dict], references: Sequence[str],
             detokenize: Callable[[Sequence[int]], str], tokenize: str) -> tuple[float, int]:
    """(BLEU 0-100, sentences scored) over the samples the log answered."""
    got = translations(entries, detokenize, len(references))
    order = sorted(got)
    return corpus_bleu([got[i] for i in order], [references[i] for i in order], tokenize), len(order)


def verdict(bleu: float) -> str:
    """``target 23.661 (99% of FP32 23.9): PASS`` or ``FAIL``."""
    t = target_bleu()
    return f"target {t:.3f} ({FRACTION:.0%} of FP32 {FP32_BLEU}): {'PASS' if bleu >= t else 'FAIL'}"
