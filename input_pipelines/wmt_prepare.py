"""WMT English-German for the translation benchmarks: the one-time, untimed preparation.

- Data: TFDS ``wmt17_translate/de-en`` (Transformer) or ``wmt16_translate/de-en`` (GNMT) for
  training, ``wmt14_translate/de-en`` ``test`` (newstest2014) for evaluation, built in ``data_dir``
  beforehand (``tfds build``); this module never downloads.
- Preparation (``prepare``; ``python scripts/prepare_data.py --benchmark=transformer
  --data_dir=DIR``), one-time and untimed as the rules allow for reformatting the data, idempotent,
  everything in ``data_dir/wmt_vocab/``:
  1. one shared sentencepiece model trained from the training text (ids: 0 padding, 1 EOS,
     2 unknown; no BOS: the decoder starts from 0);
  2. the eval set tokenised once (sources and references truncated to ``max_eval_len``) with the
     raw reference strings, in an ``.npz``;
  3. one counting pass over the filtered training data per host layout (``process_count``):
     examples and packed rows of every host's shard;
  4. ``<vocab>.meta.json``, a small file saying what the other three hold.

The tokenisation (``tokenized_pairs``) and the packing (``pack_rows``) live here because the
counting pass must count exactly what training (``wmt.data_source``) feeds.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterator

import numpy as np

from mlperf_jax.input_pipelines.source import DatasetNotFoundError, read_json

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
META_VERSION = 1
#: config keys that change what preparation writes (and so belong in the command that redoes it)
PREPARE_KEYS = ("train_dataset", "eval_dataset", "eval_split", "source_language",
                "target_language", "vocab_size", "vocab_model_type", "max_len", "max_eval_len")


# ------------------------------------------------------------------------------ file layout
def vocab_path(data_dir: str, dataset: str, vocab_size: int) -> str:
    return os.path.join(data_dir, "wmt_vocab", f"{dataset.replace('/', '_')}.spm{vocab_size}.model")


def meta_path(data_dir: str, config) -> str:
    """The metadata JSON: the only file ``wmt.data_source`` reads."""
    return _prefix(data_dir, config) + ".meta.json"


def eval_path(data_dir: str, config) -> str:
    name = (f"{config.eval_dataset}.{_eval_split(config)}.len{_max_eval_len(config)}."
            f"{config.source_language}-{config.target_language}")
    return _prefix(data_dir, config) + ".eval." + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npz"


def _prefix(data_dir: str, config) -> str:
    return vocab_path(data_dir, config.train_dataset, int(config.vocab_size))[: -len(".model")]


def _eval_split(config) -> str:
    return str(config.get("eval_split", "test"))


def _max_eval_len(config) -> int:
    return int(config.get("max_eval_len", config.max_len))


def _eval_key(config) -> str:
    return (f"{config.eval_dataset}|{_eval_split(config)}|{_max_eval_len(config)}|"
            f"{config.source_language}-{config.target_language}")


def _train_key(config, process_count: int) -> str:
    return (f"{config.train_dataset}|{int(config.max_len)}|"
            f"{config.source_language}-{config.target_language}|{int(process_count)}")


def prepare_command(config, data_dir: str | None, process_count: int = 1) -> str:
    """The command that prepares what ``config`` needs: config keys that change the prepared files
    and differ from the benchmark's reference config are passed as ``--config.KEY=VALUE``."""
    bench = str(config.get("benchmark_name", "transformer"))
    extra = []
    try:
        import importlib
        ref = importlib.import_module(f"mlperf_jax.configs.{bench}").get_config("reference")
    except Exception:  # noqa: BLE001 - no reference to compare with: name every key
        ref = None
    for key in PREPARE_KEYS:
        if key in config and (ref is None or key not in ref or ref[key] != config[key]):
            extra.append(f" --config.{key}={config[key]}")
    if process_count != 1:
        extra.append(f" --process_count={process_count}")
    return (f"python scripts/prepare_data.py --benchmark={bench} --data_dir={data_dir or 'DIR'}"
            + "".join(extra))


def _tfds_hint(config, data_dir: str | None) -> str:
    d = data_dir or "DIR"
    return (f"`tfds build {config.train_dataset} --data_dir={d}` and `tfds build "
            f"{config.eval_dataset} --data_dir={d}`")



def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()



# ------------------------------------------------------------------------------ vocabulary
def train_vocab(data_dir: str, dataset: str, vocab_size: int, *, source_language: str = "en",
                target_language: str = "de", max_sentences: int = 2_000_000,
                model_type: str = "unigram", hard_vocab_limit: bool = True) -> str:
    """Train the shared sentencepiece model on up to ``max_sentences`` training sentences of each
    language (sentencepiece samples them) and cache it; returns the model path."""
    import sentencepiece as spm
    import tensorflow as tf

    path = vocab_path(data_dir, dataset, vocab_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds = _load(dataset, "train", data_dir)
    text_path = path[: -len(".model")] + ".train.txt"
    n = 0
    with open(text_path, "w", encoding="utf-8") as f:
        for ex in ds.take(max_sentences).as_numpy_iterator():
            for lang in (source_language, target_language):
                line = ex[lang].decode("utf-8").replace("\n", " ").strip()
                if line:
                    f.write(line + "\n")
                    n += 1
    if n == 0:
        raise DatasetNotFoundError(f"no training text in {dataset} under {data_dir}")
    tmp_prefix = path[: -len(".model")] + f".tmp{os.getpid()}"
    spm.SentencePieceTrainer.train(
        input=text_path, model_prefix=tmp_prefix, vocab_size=vocab_size, model_type=model_type,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, character_coverage=1.0,
        input_sentence_size=2 * max_sentences, shuffle_input_sentence=True,
        hard_vocab_limit=hard_vocab_limit, minloglevel=2)
    tf.io.gfile.rename(tmp_prefix + ".model", path, overwrite=True)
    for suffix in (".vocab",):
        if os.path.exists(tmp_prefix + suffix):
            os.replace(tmp_prefix + suffix, path[: -len(".model")] + suffix)
    os.remove(text_path)
    return path


def load_vocab(path: str):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=path)


# ------------------------------------------------------------------------------ tf.data
def _load(name: str, split, data_dir: str | None):
    import tensorflow_datasets as tfds
    try:
        return tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False)
    except (AssertionError, FileNotFoundError, ValueError) as e:
        where = data_dir or "the default TFDS data dir (~/tensorflow_datasets)"
        raise DatasetNotFoundError(
            f"TFDS dataset {name} (split {split}) not found in {where}; build it with "
            f"`tfds build {name} --data_dir={data_dir or 'DIR'}`") from e


def _tokenize_fn(sp, max_len: int | None, truncate: bool):
    """numpy function: batch of strings -> (flat ids, row lengths), EOS appended."""
    def fn(texts: np.ndarray):
        ids = sp.encode([t.decode("utf-8") for t in texts])
        out = []
        for row in ids:
            row = list(row) + [EOS_ID]
            if truncate and max_len is not None and len(row) > max_len:
                row = row[: max_len - 1] + [EOS_ID]
            out.append(row)
        lengths = np.asarray([len(r) for r in out], np.int64)
        flat = np.asarray([i for r in out for i in r], np.int32)
        return flat, lengths
    return fn


def tokenized_pairs(ds, sp, source_language: str, target_language: str, max_len: int,
                    *, chunk: int = 1024):
    """tf.data of {'inputs': int32[len], 'targets': int32[len]} (EOS included), pairs with either
    side longer than ``max_len`` discarded."""
    import tensorflow as tf
    fn = _tokenize_fn(sp, None, truncate=False)

    def tok(texts):
        flat, lengths = tf.numpy_function(fn, [texts], [tf.int32, tf.int64], stateful=False)
        flat.set_shape([None])
        lengths.set_shape([None])
        return tf.RaggedTensor.from_row_lengths(flat, lengths)

    def both(ex):
        return {"inputs": tok(ex[source_language]), "targets": tok(ex[target_language])}

    ds = ds.batch(chunk).map(both, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    return ds.filter(lambda ex: (tf.size(ex["inputs"]) <= max_len)
                     & (tf.size(ex["targets"]) <= max_len))


def pack_rows(examples: Iterator[dict], length: int) -> Iterator[dict]:
    """Greedy packing: append pairs to the current row while both sides fit, else start a row.

    Yields {'inputs', 'targets', 'inputs_segmentation', 'targets_segmentation',
    'inputs_position', 'targets_position'} int32[length]; segment ids count from 1, 0 = padding.
    """
    def empty():
        return {k: np.zeros((length,), np.int32) for k in (
            "inputs", "targets", "inputs_segmentation", "targets_segmentation",
            "inputs_position", "targets_position")}

    row, used_in, used_tg, seg = empty(), 0, 0, 0
    for ex in examples:
        src, tgt = np.asarray(ex["inputs"]), np.asarray(ex["targets"])
        if seg and (used_in + len(src) > length or used_tg + len(tgt) > length):
            yield row
            row, used_in, used_tg, seg = empty(), 0, 0, 0
        seg += 1
        for side, ids, used in (("inputs", src, used_in), ("targets", tgt, used_tg)):
            row[side][used:used + len(ids)] = ids
            row[side + "_segmentation"][used:used + len(ids)] = seg
            row[side + "_position"][used:used + len(ids)] = np.arange(len(ids))
        used_in += len(src)
        used_tg += len(tgt)
    if seg:
        yield row


# ------------------------------------------------------------------------------ preparation
def _host_split(split: str, process_index: int, process_count: int):
    if process_count == 1:
        return split
    import tensorflow_datasets as tfds
    return tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]


def _tokenize_eval(config, data_dir: str, sp) -> dict[str, np.ndarray]:
    """The eval set in file order: inputs and targets int32[n, max_eval_len] (truncated, EOS
    kept) and the raw references."""
    ds = _load(config.eval_dataset, _eval_split(config), data_dir)
    srcs, refs = [], []
    for ex in ds.as_numpy_iterator():
        srcs.append(ex[config.source_language])
        refs.append(ex[config.target_language].decode("utf-8"))
    length = _max_eval_len(config)
    enc = _tokenize_fn(sp, length, truncate=True)
    out = {"inputs": np.zeros((len(srcs), length), np.int32),
           "targets": np.zeros((len(srcs), length), np.int32),
           "references": np.asarray(refs, dtype=np.str_)}
    if srcs:
        for key, texts in (("inputs", srcs), ("targets", [r.encode() for r in refs])):
            flat, lengths = enc(np.asarray(texts, dtype=object))
            offs = np.concatenate([[0], np.cumsum(lengths)])
            for i, n in enumerate(lengths):
                out[key][i, :n] = flat[offs[i]:offs[i + 1]]
    return out


def _count_host(config, data_dir: str, sp, process_index: int, process_count: int
                ) -> tuple[int, int]:
    """(filtered examples, packed rows) of one host's shard, in file order."""
    ds = _load(config.train_dataset, _host_split("train", process_index, process_count), data_dir)
    pairs = tokenized_pairs(ds, sp, config.source_language, config.target_language,
                            int(config.max_len))
    n = 0

    def counted(it):
        nonlocal n
        for ex in it:
            n += 1
            yield ex

    rows = sum(1 for _ in pack_rows(counted(pairs.as_numpy_iterator()), int(config.max_len)))
    return n, rows


def _legacy_counts(data_dir: str, config, process_count: int) -> dict | None:
    """Counts from the ``.stats.json`` earlier versions wrote (one key per host), if complete."""
    old = read_json(_prefix(data_dir, config) + ".stats.json") or {}
    keys = [f"{config.train_dataset}|{int(config.max_len)}|{process_count}|{i}"
            for i in range(process_count)]
    if not all(k in old for k in keys):
        return None
    return {"examples": [int(old[k]["examples"]) for k in keys],
            "rows": [int(old[k]["rows"]) for k in keys]}


def prepare(config, data_dir: str | None, *, process_count: int = 1,
            max_sentences: int = 2_000_000, force: bool = False) -> str:
    """One-time, untimed preparation of what ``wmt.data_source(config, data_dir, ...)`` needs,
    for a run on ``process_count`` hosts (module docstring). Keeps what exists unless ``force``.
    Returns one line saying what it did."""
    if not data_dir:
        raise DatasetNotFoundError(f"WMT preparation needs --data_dir: the TFDS data dir holding "
                                   f"{config.train_dataset} and {config.eval_dataset}")
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    vsize = int(config.vocab_size)
    vpath = vocab_path(data_dir, config.train_dataset, vsize)
    done = []
    if force or not os.path.exists(vpath):
        train_vocab(data_dir, config.train_dataset, vsize, source_language=config.source_language,
                    target_language=config.target_language, max_sentences=max_sentences,
                    model_type=config.get("vocab_model_type", "unigram"))
        done.append("trained the vocabulary")
    sp = load_vocab(vpath)
    pieces = sp.get_piece_size()
    if pieces > vsize:
        raise ValueError(f"vocabulary {vpath} has {pieces} pieces, more than "
                         f"config.vocab_size={vsize}")
    digest = _sha256(vpath)
    mpath = meta_path(data_dir, config)
    meta = read_json(mpath) or {}
    if force or meta.get("version") != META_VERSION or meta.get("vocab_sha256") != digest:
        meta = {"version": META_VERSION, "vocab": os.path.basename(vpath),
                "vocab_bytes": os.path.getsize(vpath), "vocab_sha256": digest,
                "vocab_pieces": pieces, "eval": {}, "train": {}}

    ekey, epath = _eval_key(config), eval_path(data_dir, config)
    if ekey not in meta["eval"] or not os.path.isfile(epath):
        arrays = _tokenize_eval(config, data_dir, sp)
        tmp = f"{epath}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, epath)
        meta["eval"][ekey] = {"file": os.path.basename(epath),
                              "num_examples": int(arrays["inputs"].shape[0])}
        _write_json(mpath, meta)  # keep the eval set even if the count below is interrupted
        done.append("tokenised the eval set")

    tkey = _train_key(config, process_count)
    if tkey not in meta["train"]:
        counts = None if force else _legacy_counts(data_dir, config, process_count)
        if counts is None:
            per_host = [_count_host(config, data_dir, sp, i, process_count)
                        for i in range(process_count)]
            counts = {"examples": [e for e, _ in per_host], "rows": [r for _, r in per_host]}
            done.append(f"counted the training data for {process_count} host(s)")
        else:
            done.append("took the training counts from the older .stats.json")
        meta["train"][tkey] = counts
    _write_json(mpath, meta)

    counts = meta["train"][tkey]
    return (f"{config.train_dataset} -> {config.eval_dataset}/{_eval_split(config)}: "
            f"{'; '.join(done) or 'already prepared'}; sentencepiece {pieces} pieces, "
            f"{meta['eval'][ekey]['num_examples']} eval sentences, {sum(counts['examples'])} "
            f"training pairs of <= {int(config.max_len)} tokens ({sum(counts['rows'])} packed "
            f"rows) over {process_count} host(s); metadata {mpath}")

