"""WMT English-German for the translation benchmarks: tf.data over TFDS, from what
``wmt_prepare.prepare`` wrote (``python scripts/prepare_data.py --benchmark=transformer
--data_dir=DIR``, once, untimed).

- ``data_source`` reads only the metadata JSON (and stats the files it names), so it touches no
  data before the clock. Inside the clock the vocabulary is loaded on first use, the eval arrays on
  the first ``eval_batches()`` / ``eval_context()``, and the training text is streamed every epoch.
- Training: per-host shard of the split, shuffle (seeded by run seed and epoch), tokenisation in
  the pipeline (sentencepiece over batches of strings), pairs longer than ``max_len`` tokens
  (EOS included) discarded (the ``max_sequence_length`` ``discard`` method), then either padded
  to ``max_len`` or packed several to a row with segment ids and positions, batched, prefetched.
- Eval: fixed-size batches with ``mask`` and ``index``; ``eval_context()`` gives BLEU the raw
  references (dataset order) and the detokeniser.

An epoch is ``steps_per_epoch`` global batches: all the filtered examples when padding; when
packing, 98% of the rows a pass packs in file order (a shuffled pass packs a little differently,
so the epoch stops at that count and the remaining rows of the pass are dropped). With several
hosts the smallest shard sets the count, so that every host runs the same number of steps.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from mlperf_jax.input_pipelines.source import (DataSource, DatasetNotFoundError, Once, global_spec,
                                               prefetch, read_json)
# the preparation's names, also used from here (wmt.prepare, wmt.vocab_path, ...)
from mlperf_jax.input_pipelines.wmt_prepare import (  # noqa: F401
    EOS_ID, META_VERSION, PAD_ID, PREPARE_KEYS, UNK_ID, _eval_key, _eval_split, _host_split, _load,
    _max_eval_len, _tfds_hint, _train_key, eval_path, load_vocab, meta_path,
    pack_rows, prepare, prepare_command, tokenized_pairs, train_vocab, vocab_path)

PACK_EPOCH_FRACTION = 0.98


# ------------------------------------------------------------------------------ rows
# (``pack_rows`` is in wmt_prepare: the counting pass packs too)
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


# ------------------------------------------------------------------------------ data source
def data_source(config, data_dir: str | None, *, seed: int, process_index: int,
                process_count: int) -> DataSource:
    """This host's WMT data, from what ``prepare`` wrote. Reads only the metadata JSON: the
    vocabulary, the eval arrays and the training text are read inside the clock, on first use."""
    import tensorflow as tf

    cmd = prepare_command(config, data_dir, process_count)
    if not data_dir:
        raise DatasetNotFoundError(
            f"no --data_dir given for {config.train_dataset}: pass the TFDS data dir where "
            f"{_tfds_hint(config, None)} were run and then `{cmd}`")
    mpath = meta_path(data_dir, config)
    vpath = vocab_path(data_dir, config.train_dataset, int(config.vocab_size))
    meta = read_json(mpath)
    if meta is None or meta.get("version") != META_VERSION:
        raise DatasetNotFoundError(
            f"WMT preparation not found ({mpath} is missing or out of date): run `{cmd}` once, "
            f"untimed (after {_tfds_hint(config, data_dir)})")
    if not os.path.isfile(vpath) or os.path.getsize(vpath) != meta["vocab_bytes"]:
        raise DatasetNotFoundError(
            f"vocabulary {vpath} is missing or not the one {mpath} was prepared with: run `{cmd}`")
    ekey, epath = _eval_key(config), eval_path(data_dir, config)
    if ekey not in meta["eval"] or not os.path.isfile(epath):
        raise DatasetNotFoundError(f"tokenised eval set {epath} not prepared: run `{cmd}`")
    counts = meta["train"].get(_train_key(config, process_count))
    if counts is None:
        raise DatasetNotFoundError(
            f"{mpath} has no training counts for {config.train_dataset} with max_len "
            f"{int(config.max_len)} on {process_count} host(s): run `{cmd}`")
    pieces = int(meta["vocab_pieces"])
    if pieces > int(config.vocab_size):
        raise ValueError(f"vocabulary {vpath} has {pieces} pieces, more than "
                         f"config.vocab_size={config.vocab_size}")

    gb, eb = int(config.global_batch_size), int(config.eval_batch_size)
    if gb % process_count or eb % process_count:
        raise ValueError(f"batch sizes {gb}/{eb} are not divisible by {process_count} hosts")
    per_host, eval_per_host = gb // process_count, eb // process_count
    max_len, pack = int(config.max_len), bool(config.pack)
    max_eval_len = _max_eval_len(config)
    if pack:
        steps = min(int(r * PACK_EPOCH_FRACTION) for r in counts["rows"]) // per_host
    else:
        steps = min(int(e) for e in counts["examples"]) // per_host
    if steps <= 0:
        raise DatasetNotFoundError(
            f"{config.train_dataset} in {data_dir} has too little training data after filtering "
            f"to {max_len} tokens ({counts}) for one batch of {per_host} rows per host")
    n_eval = int(meta["eval"][ekey]["num_examples"])

    # ---- read inside the clock, on first use
    vocab = Once(lambda: load_vocab(vpath))

    def _eval_arrays():
        with np.load(epath) as z:
            arrays = {k: z[k] for k in ("inputs", "targets", "references")}
        if arrays["inputs"].shape != (n_eval, max_eval_len):
            raise ValueError(f"{epath} holds {arrays['inputs'].shape} eval rows, {mpath} says "
                             f"({n_eval}, {max_eval_len}): run `{cmd} --force`")
        return arrays
    eval_arrays = Once(_eval_arrays)

    def eval_batches() -> Iterator[dict]:
        a = eval_arrays()
        sl = slice(process_index * eval_per_host, (process_index + 1) * eval_per_host)
        for start in range(0, n_eval, eb):
            idx = np.arange(start, start + eb)
            mask = idx < n_eval
            idx = np.where(mask, idx, 0)
            yield {"inputs": a["inputs"][idx][sl], "targets": a["targets"][idx][sl],
                   "mask": mask[sl].astype(np.int32), "index": idx[sl].astype(np.int32)}

    def detokenize(ids) -> str:
        ids = [int(i) for i in ids]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        return vocab().decode([i for i in ids if i > EOS_ID])

    def eval_context() -> dict:
        """What BLEU needs: the raw references (dataset order) and the detokeniser."""
        return {"references": [str(r) for r in eval_arrays()["references"]],
                "detokenize": detokenize}

    shuffle_buffer = int(config.get("shuffle_buffer", 1 << 16))
    host_split = _host_split("train", process_index, process_count)

    def train_epoch(epoch: int, skip_steps: int = 0) -> Iterator[dict]:
        ds = _load(config.train_dataset, host_split, data_dir)
        opts = tf.data.Options()
        opts.deterministic = True
        ds = ds.with_options(opts)
        ds = ds.shuffle(shuffle_buffer, seed=int(seed) * 100003 + int(epoch),
                        reshuffle_each_iteration=False)
        pairs = tokenized_pairs(ds, vocab(), config.source_language, config.target_language,
                                max_len)
        pairs = pairs.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        rows = pack_rows(pairs, max_len) if pack else pad_rows(pairs, max_len)

        def gen():
            for step, batch in enumerate(_batches(rows, per_host)):
                if step >= steps:
                    return
                if step >= skip_steps:
                    yield batch
        return prefetch(gen(), name="wmt-batches")

    train_keys = (("inputs", "targets", "inputs_segmentation", "targets_segmentation",
                   "inputs_position", "targets_position") if pack else ("inputs", "targets"))
    i32 = np.dtype(np.int32)
    return DataSource(
        num_train_samples=steps * gb, num_eval_samples=n_eval, steps_per_epoch=steps,
        train_epoch=train_epoch, eval_batches=eval_batches,
        # global shapes: the driver compiles ahead of time without touching the data
        train_spec=global_spec({k: ((per_host, max_len), i32) for k in train_keys}, process_count),
        eval_spec=global_spec({"inputs": ((eval_per_host, max_eval_len), i32),
                               "targets": ((eval_per_host, max_eval_len), i32),
                               "mask": ((eval_per_host,), i32), "index": ((eval_per_host,), i32)},
                              process_count),
        description=(f"{config.train_dataset} -> {config.eval_dataset}/{_eval_split(config)}, "
                     f"sentencepiece {pieces}, {'packed' if pack else 'padded'} rows of {max_len}"),
        eval_context=eval_context)
