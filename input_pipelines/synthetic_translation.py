"""A learnable synthetic translation task for the translation benchmarks' tiny track.

Source sentences come from a small English-like grammar; the target is a deterministic rewriting
into a German-like language that a model can only produce by learning real structure:

- **vocabulary mapping**: every source lemma has one target lemma;
- **agreement**: target determiners and adjective endings depend on the noun's gender (which the
  source never shows: it must be learnt per noun), its number, definiteness and case (subject =
  nominative, object = accusative); the verb form agrees with the subject's number;
- **reordering**: ``SUBJ VERB OBJ [ADV]`` becomes ``SUBJ [ADV] OBJ VERB`` (verb-final), so the verb
  must be carried across the object.

There are about 10^10 distinct sentences, so a model cannot memorise the training set; its BLEU on
held-out sentences measures how much of the rewriting it has learnt: a word-by-word mapping
scores about 35 BLEU, one that also reorders but gets no agreement right about 61; the tiny
track's target of 90 needs the agreement rules.

Ids: 0 = padding (and the decoder's start symbol), 1 = end of sentence, 2 = unknown; words after
that, shared between the two languages (as a shared subword vocabulary is for WMT).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

PAD, EOS, UNK = 0, 1, 2

N_NOUNS, N_ADJ, N_VERBS, N_ADV = 16, 8, 10, 6
GENDERS = ("m", "f", "n")

# determiner[definite][case][gender or 'pl']
_DET = {
    True: {"nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
           "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"}},
    False: {"nom": {"m": "ein", "f": "eine", "n": "ein", "pl": "einige"},
            "acc": {"m": "einen", "f": "eine", "n": "ein", "pl": "einige"}},
}
# adjective ending[definite][case][gender or 'pl']
_ADJ_END = {
    True: {"nom": {"m": "-e", "f": "-e", "n": "-e", "pl": "-en"},
           "acc": {"m": "-en", "f": "-e", "n": "-e", "pl": "-en"}},
    False: {"nom": {"m": "-er", "f": "-e", "n": "-es", "pl": "-e"},
            "acc": {"m": "-en", "f": "-e", "n": "-es", "pl": "-e"}},
}


@functools.lru_cache(maxsize=None)
def vocabulary() -> tuple[str, ...]:
    words = ["<pad>", "</s>", "<unk>", "the", "a", "some"]
    words += [f"noun{i}" for i in range(N_NOUNS)] + [f"noun{i}s" for i in range(N_NOUNS)]
    words += [f"adj{i}" for i in range(N_ADJ)]
    words += [f"verb{i}s" for i in range(N_VERBS)] + [f"verb{i}" for i in range(N_VERBS)]
    words += [f"adv{i}" for i in range(N_ADV)]
    dets = sorted({w for d in _DET.values() for c in d.values() for w in c.values()})
    ends = sorted({w for d in _ADJ_END.values() for c in d.values() for w in c.values()})
    words += dets + ends
    words += [f"Nomen{i}" for i in range(N_NOUNS)] + [f"Nomen{i}en" for i in range(N_NOUNS)]
    words += [f"adjektiv{i}" for i in range(N_ADJ)]
    words += [f"verb{i}t" for i in range(N_VERBS)] + [f"verb{i}en" for i in range(N_VERBS)]
    words += [f"adverb{i}" for i in range(N_ADV)]
    assert len(set(words)) == len(words)
    return tuple(words)


VOCAB_SIZE = 160  # >= len(vocabulary()), rounded up for friendly shapes


@functools.lru_cache(maxsize=None)
def _ids() -> dict[str, int]:
    return {w: i for i, w in enumerate(vocabulary())}


_GENDER_OF_NOUN = "mfnnmffnmnfmnfmn"   # fixed and arbitrary; never visible in the source


def _gender(noun: int) -> str:
    return _GENDER_OF_NOUN[noun]


def _noun_phrase(rng: np.random.Generator):
    definite = bool(rng.integers(2))
    plural = bool(rng.integers(2))
    noun = int(rng.integers(N_NOUNS))
    adjs = [int(a) for a in rng.choice(N_ADJ, size=int(rng.integers(3)), replace=False)]
    return definite, plural, noun, adjs


def _src_np(np_) -> list[str]:
    definite, plural, noun, adjs = np_
    det = "the" if definite else ("some" if plural else "a")
    return [det] + [f"adj{a}" for a in adjs] + [f"noun{noun}s" if plural else f"noun{noun}"]


def _tgt_np(np_, case: str) -> list[str]:
    definite, plural, noun, adjs = np_
    key = "pl" if plural else _gender(noun)
    out = [_DET[definite][case][key]]
    for a in adjs:
        out += [f"adjektiv{a}", _ADJ_END[definite][case][key]]
    out.append(f"Nomen{noun}en" if plural else f"Nomen{noun}")
    return out


def sentence_pair(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """One (source words, target words) pair."""
    subj, obj = _noun_phrase(rng), _noun_phrase(rng)
    verb = int(rng.integers(N_VERBS))
    adv = int(rng.integers(N_ADV)) if rng.integers(2) else None
    subj_plural = subj[1]
    src = _src_np(subj) + [f"verb{verb}" if subj_plural else f"verb{verb}s"] + _src_np(obj)
    tgt = _tgt_np(subj, "nom")
    if adv is not None:
        src.append(f"adv{adv}")
        tgt.append(f"adverb{adv}")
    tgt += _tgt_np(obj, "acc") + [f"verb{verb}en" if subj_plural else f"verb{verb}t"]
    return src, tgt


MAX_SRC_LEN = 11   # 10 words + EOS
MAX_TGT_LEN = 15   # 14 words + EOS


def encode(words: list[str]) -> list[int]:
    ids = _ids()
    return [ids.get(w, UNK) for w in words] + [EOS]


def decode(ids) -> str:
    """Ids -> text, stopping at EOS (or padding)."""
    vocab = vocabulary()
    out = []
    for i in ids:
        i = int(i)
        if i in (PAD, EOS):
            break
        out.append(vocab[i] if i < len(vocab) else "<unk>")
    return " ".join(out)


@dataclasses.dataclass
class SyntheticTranslation:
    """A fixed dataset of ``num_examples`` pairs generated from ``data_seed``, as numpy arrays.

    ``inputs`` [N, max_src_len] and ``targets`` [N, max_tgt_len], right-padded with 0, EOS
    included; ``references`` holds the target text (what BLEU is computed against).
    """

    num_examples: int
    data_seed: int = 0
    max_src_len: int = 16
    max_tgt_len: int = 16

    def __post_init__(self):
        assert self.max_src_len >= MAX_SRC_LEN and self.max_tgt_len >= MAX_TGT_LEN
        rng = np.random.default_rng(self.data_seed)
        self.inputs = np.zeros((self.num_examples, self.max_src_len), np.int32)
        self.targets = np.zeros((self.num_examples, self.max_tgt_len), np.int32)
        self.references = []
        for n in range(self.num_examples):
            src, tgt = sentence_pair(rng)
            s, t = encode(src), encode(tgt)
            self.inputs[n, : len(s)] = s
            self.targets[n, : len(t)] = t
            self.references.append(" ".join(tgt))
