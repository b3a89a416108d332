"""WMT English-German for the translation benchmarks: tf.data over TFDS.

- Data: TFDS ``wmt17_translate/de-en`` (Transformer) or ``wmt16_translate/de-en`` (GNMT) for
  training, ``wmt14_translate/de-en`` ``test`` (newstest2014) for evaluation, prepared in
  ``data_dir`` beforehand (``tfds build`` or ``tfds.load(..., download=True)``); this module never
  downloads.
- Vocabulary: one shared sentencepiece model trained from the training text by
  ``scripts/prepare_wmt_vocab.py`` and cached in ``data_dir/wmt_vocab/`` (ids: 0 padding, 1 EOS,
  2 unknown; no BOS: the decoder starts from 0).
- Training: per-host shard of the split, shuffle (seeded by run seed and epoch), tokenisation in
  the pipeline (sentencepiece over batches of strings), pairs longer than ``max_len`` tokens
  (EOS included) discarded (the ``max_sequence_length`` ``discard`` method), then either padded
  to ``max_len`` or packed several to a row with segment ids and positions, batched, prefetched.
- Eval: the whole test set tokenised once (sources truncated to ``max_eval_len``) and served in
  fixed-size batches with ``mask`` and ``index``; the raw references go to BLEU untouched.

An epoch is ``steps_per_epoch`` global batches, computed by one counting pass over the filtered
training data (cached next to the vocabulary): all of it when padding; when packing, 98% of the
rows a pass packs in file order (a shuffled pass packs a little differently, so the epoch stops
at that count and the remaining rows of the pass are dropped).
"""
from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np

from mlperf_jax.benchmarks.base import DataSource, DatasetNotFoundError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
PACK_EPOCH_FRACTION = 0.98
PREPARE_HINT = ("prepare it with `tfds build {name} --data_dir={data_dir}` (or tfds.load(..., "
                "download=True)), then run `python scripts/prepare_wmt_vocab.py "
                "--benchmark={benchmark} --data_dir={data_dir}`")


# ------------------------------------------------------------------------------ vocabulary
def vocab_path(data_dir: str, dataset: str, vocab_size: int) -> str:
    return os.path.join(data_dir, "wmt_vocab", f"{dataset.replace('/', '_')}.spm{vocab_size}.model")


def train_vocab(data_dir: str, dataset: str, vocab_size: int, *, source_language: str = "en",
                target_language: str = "de", max_sentences: int = 2_000_000,
                model_type: str = "unigram", hard_vocab_limit: bool = True) -> str:
    """Train the shared sentencepiece model on up to ``max_sentences`` training sentences of each
    language (sentencepiece samples them) and cache it; returns the model path."""
    import sentencepiece as spm
    import tensorflow as tf

    path = vocab_path(data_dir, dataset, vocab_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds = _load(dataset, "train", data_dir, benchmark="transformer")
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
def _load(name: str, split: str, data_dir: str | None, *, benchmark: str):
    import tensorflow_datasets as tfds
    try:
        return tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False)
    except (AssertionError, FileNotFoundError, ValueError) as e:
        where = data_dir or "the default TFDS data dir (~/tensorflow_datasets)"
        raise DatasetNotFoundError(
            f"TFDS dataset {name} (split {split}) not found in {where}; "
            + PREPARE_HINT.format(name=name, data_dir=data_dir or "DIR", benchmark=benchmark)
        ) from e


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


def pad_rows(examples: Iterator[dict], length: int) -> Iterator[dict]:
    for ex in examples:
        row = {}
        for side in ("inputs", "targets"):
            a = np.zeros((length,), np.int32)
            ids = np.asarray(ex[side])
            a[: len(ids)] = ids
            row[side] = a
        yield row


def _batches(rows: Iterator[dict], batch: int) -> Iterator[dict]:
    buf = []
    for r in rows:
        buf.append(r)
        if len(buf) == batch:
            yield {k: np.stack([b[k] for b in buf]) for k in buf[0]}
            buf = []


def _prefetch(it: Iterator, size: int = 4) -> Iterator:
    """Run a host iterator in a background thread (host packing overlaps the train step)."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer went away: let the thread end

    def work():
        try:
            for x in it:
                if not put(x):
                    return
        except BaseException as e:  # surfaced in the consumer
            put(e)
        finally:
            put(done)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()


# ------------------------------------------------------------------------------ data source
@dataclasses.dataclass
class WmtSource:
    source: DataSource
    references: list[str]
    detokenize: Callable[[np.ndarray], str]


def _host_split(split: str, process_index: int, process_count: int) -> str:
    if process_count == 1:
        return split
    import tensorflow_datasets as tfds
    return tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]


def _count_stats(config, data_dir, sp, process_index, process_count) -> dict:
    """{'examples': n, 'rows': packed rows} for this host's shard, cached in the vocab dir."""
    vpath = vocab_path(data_dir, config.train_dataset, int(config.vocab_size))
    stats_path = vpath[: -len(".model")] + ".stats.json"
    key = f"{config.train_dataset}|{int(config.max_len)}|{process_count}|{process_index}"
    stats = {}
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
        if key in stats:
            return stats[key]
    ds = _load(config.train_dataset, _host_split("train", process_index, process_count), data_dir,
               benchmark=config.get("benchmark_name", "transformer"))
    pairs = tokenized_pairs(ds, sp, config.source_language, config.target_language,
                            int(config.max_len))
    n = 0

    def counted(it):
        nonlocal n
        for ex in it:
            n += 1
            yield ex

    rows = sum(1 for _ in pack_rows(counted(pairs.as_numpy_iterator()), int(config.max_len)))
    stats[key] = {"examples": n, "rows": rows}
    try:
        tmp = stats_path + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(stats, f, indent=1)
        os.replace(tmp, stats_path)
    except OSError:
        pass  # read-only data dir: recount next time
    return stats[key]


def data_source(config, data_dir: str | None, *, seed: int, process_index: int,
                process_count: int) -> WmtSource:
    import tensorflow as tf

    bench = config.get("benchmark_name", "transformer")
    if not data_dir:
        raise DatasetNotFoundError(
            f"no --data_dir given for {config.train_dataset}; "
            + PREPARE_HINT.format(name=config.train_dataset, data_dir="DIR", benchmark=bench))
    vpath = vocab_path(data_dir, config.train_dataset, int(config.vocab_size))
    if not os.path.exists(vpath):
        raise DatasetNotFoundError(
            f"sentencepiece vocabulary not found at {vpath}; run `python "
            f"scripts/prepare_wmt_vocab.py --benchmark={bench} --data_dir={data_dir}` "
            f"(after preparing TFDS {config.train_dataset} in {data_dir})")
    sp = load_vocab(vpath)
    if sp.get_piece_size() > int(config.vocab_size):
        raise ValueError(f"vocabulary {vpath} has {sp.get_piece_size()} pieces, more than "
                         f"config.vocab_size={config.vocab_size}")

    gb, eb = int(config.global_batch_size), int(config.eval_batch_size)
    if gb % process_count or eb % process_count:
        raise ValueError(f"batch sizes {gb}/{eb} are not divisible by {process_count} hosts")
    per_host, eval_per_host = gb // process_count, eb // process_count
    max_len, pack = int(config.max_len), bool(config.pack)

    # ---- eval set: tokenised once, in file order
    eval_ds = _load(config.eval_dataset, config.get("eval_split", "test"), data_dir, benchmark=bench)
    srcs, refs = [], []
    for ex in eval_ds.as_numpy_iterator():
        srcs.append(ex[config.source_language])
        refs.append(ex[config.target_language].decode("utf-8"))
    max_eval_len = int(config.get("max_eval_len", max_len))
    enc = _tokenize_fn(sp, max_eval_len, truncate=True)
    eval_inputs = np.zeros((len(srcs), max_eval_len), np.int32)
    eval_targets = np.zeros((len(srcs), max_eval_len), np.int32)
    if srcs:
        flat, lengths = enc(np.asarray(srcs, dtype=object))
        tflat, tlengths = enc(np.asarray([r.encode() for r in refs], dtype=object))
        for arr, fl, ln in ((eval_inputs, flat, lengths), (eval_targets, tflat, tlengths)):
            offs = np.concatenate([[0], np.cumsum(ln)])
            for i in range(len(ln)):
                arr[i, : ln[i]] = fl[offs[i]:offs[i + 1]]
    n_eval = len(srcs)

    def eval_batches():
        sl = slice(process_index * eval_per_host, (process_index + 1) * eval_per_host)
        for start in range(0, n_eval, eb):
            idx = np.arange(start, start + eb)
            mask = idx < n_eval
            idx = np.where(mask, idx, 0)
            yield {"inputs": eval_inputs[idx][sl], "targets": eval_targets[idx][sl],
                   "mask": mask[sl].astype(np.int32), "index": idx[sl].astype(np.int32)}

    # ---- training
    stats = _count_stats(config, data_dir, sp, process_index, process_count)
    if pack:
        steps = int(stats["rows"] * PACK_EPOCH_FRACTION) // per_host
    else:
        steps = int(stats["examples"]) // per_host
    if steps <= 0:
        raise DatasetNotFoundError(
            f"{config.train_dataset} in {data_dir} has too little training data after filtering "
            f"to {max_len} tokens ({stats}) for one batch of {per_host} rows per host")
    shuffle_buffer = int(config.get("shuffle_buffer", 1 << 16))
    host_split = _host_split("train", process_index, process_count)

    def train_epoch(epoch: int, skip_steps: int = 0, params: Any = None):
        ds = _load(config.train_dataset, host_split, data_dir, benchmark=bench)
        opts = tf.data.Options()
        opts.deterministic = True
        ds = ds.with_options(opts)
        ds = ds.shuffle(shuffle_buffer, seed=int(seed) * 100003 + int(epoch),
                        reshuffle_each_iteration=False)
        pairs = tokenized_pairs(ds, sp, config.source_language, config.target_language, max_len)
        pairs = pairs.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        rows = pack_rows(pairs, max_len) if pack else pad_rows(pairs, max_len)

        def gen():
            for step, batch in enumerate(_batches(rows, per_host)):
                if step >= steps:
                    return
                if step >= skip_steps:
                    yield batch
        return _prefetch(gen())

    def spec(shape_per_host, keys):
        import jax
        return {k: jax.ShapeDtypeStruct((shape_per_host[0] * process_count,) + shape_per_host[1:],
                                        np.int32) for k in keys}

    train_keys = (("inputs", "targets", "inputs_segmentation", "targets_segmentation",
                   "inputs_position", "targets_position") if pack else ("inputs", "targets"))
    src = DataSource(
        num_train_samples=steps * gb, num_eval_samples=n_eval, steps_per_epoch=steps,
        train_epoch=train_epoch, eval_batches=eval_batches,
        description=(f"{config.train_dataset} -> {config.eval_dataset}/"
                     f"{config.get('eval_split', 'test')}, sentencepiece {sp.get_piece_size()}, "
                     f"{'packed' if pack else 'padded'} rows of {max_len}"))
    # shapes for ahead-of-time compilation without touching the data before run_start
    src.train_spec = spec((per_host, max_len), train_keys)
    src.eval_spec = dict(spec((eval_per_host, max_eval_len), ("inputs", "targets", "mask", "index")))
    src.eval_spec["mask"] = type(src.eval_spec["mask"])((eb,), np.int32)
    src.eval_spec["index"] = type(src.eval_spec["index"])((eb,), np.int32)

    def detokenize(ids) -> str:
        ids = [int(i) for i in ids]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        return sp.decode([i for i in ids if i > EOS_ID])

    return WmtSource(source=src, references=refs, detokenize=detokenize)
