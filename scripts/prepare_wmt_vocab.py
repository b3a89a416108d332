"""Train the shared sentencepiece vocabulary for a translation benchmark and cache it in the data dir.

    python scripts/prepare_wmt_vocab.py --benchmark=transformer --data_dir=/data/tfds
    python scripts/prepare_wmt_vocab.py --benchmark=gnmt --data_dir=/data/tfds

Needs the TFDS training set already prepared in ``--data_dir`` (for example
``tfds build wmt17_translate/de-en --data_dir=/data/tfds``). Writes
``DATA_DIR/wmt_vocab/<dataset>.spm<size>.model`` and, by one counting pass over the filtered training
data, the epoch statistics the input pipeline needs (``.stats.json``), so that the first timed run
does not pay for them.
"""
from __future__ import annotations

import sys
import time

from absl import app, flags

flags.DEFINE_enum("benchmark", "transformer", ["transformer", "gnmt"], "which benchmark's vocabulary")
flags.DEFINE_string("data_dir", None, "TFDS data dir holding the prepared WMT datasets", required=True)
flags.DEFINE_integer("max_sentences", 2_000_000, "training sentences per language to learn from")
flags.DEFINE_boolean("count", True, "also count the epoch statistics (one pass over the data)")
flags.DEFINE_boolean("force", False, "retrain even when the vocabulary exists")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import os

    from mlperf_jax import benchmarks
    from mlperf_jax.benchmarks.base import DatasetNotFoundError
    from mlperf_jax.input_pipelines import wmt

    bench = benchmarks.get(FLAGS.benchmark)
    config = bench.get_config("reference")
    path = wmt.vocab_path(FLAGS.data_dir, config.train_dataset, int(config.vocab_size))
    try:
        if FLAGS.force or not os.path.exists(path):
            t0 = time.time()
            wmt.train_vocab(FLAGS.data_dir, config.train_dataset, int(config.vocab_size),
                            source_language=config.source_language,
                            target_language=config.target_language,
                            max_sentences=FLAGS.max_sentences,
                            model_type=config.get("vocab_model_type", "unigram"))
            print(f"vocabulary: {path} ({time.time() - t0:.0f} s)")
        else:
            print(f"vocabulary exists: {path}")
        if FLAGS.count:
            t0 = time.time()
            src = wmt.data_source(config, FLAGS.data_dir, seed=0, process_index=0, process_count=1)
            print(f"{src.source.description}: {src.source.steps_per_epoch} steps per epoch of "
                  f"{config.global_batch_size}, {src.source.num_eval_samples} eval sentences "
                  f"({time.time() - t0:.0f} s)")
    except DatasetNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
