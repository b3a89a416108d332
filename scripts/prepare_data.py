"""One-time, untimed data preparation for the WMT and MovieLens benchmarks.

    python scripts/prepare_data.py --benchmark=transformer --data_dir=/data/tfds
    python scripts/prepare_data.py --benchmark=gnmt --data_dir=/data/tfds --process_count=4
    python scripts/prepare_data.py --benchmark=ncf --data_dir=/data/movielens

MLPerf allows reformatting the data once, off the clock; every run then reads the dataset inside
it. A run's data source reads only the small metadata file written here, and stops with the exact
command to run when it is missing.

- ``transformer``, ``gnmt``: the TFDS datasets must already be built in ``--data_dir``
  (``tfds build wmt17_translate/de-en --data_dir=DIR``; ``wmt16_translate/de-en`` for GNMT;
  ``wmt14_translate/de-en`` for the eval set). Writes into ``DIR/wmt_vocab/``: the sentencepiece
  vocabulary, the tokenised eval set with its raw references (``.npz``), the training-set counts
  for ``--process_count`` hosts (one pass over the data), and ``<vocab>.meta.json``.
- ``ncf``: ``DIR`` holds ``ml-20m/ratings.csv`` or TFDS ``movielens/20m-ratings``. Writes the
  preprocessed arrays (``.npz``) and their sizes (``.json``) into ``DIR/ncf_cache``
  (``--config.cache_dir`` to put them elsewhere).

Idempotent: what exists is kept (``--force`` redoes it). ``--config=VARIANT`` (default reference)
and ``--config.KEY=VALUE`` overrides work as in ``python -m mlperf_jax.train`` and must match the
training command's, since they change what is prepared. Errors: one line, exit code 2.
"""
from __future__ import annotations

import importlib
import sys
import time

from absl import app, flags
from ml_collections import config_flags

BENCHMARKS = ("transformer", "gnmt", "ncf")

flags.DEFINE_enum("benchmark", None, BENCHMARKS, "which benchmark's data to prepare", required=True)
flags.DEFINE_string("data_dir", None, "where the raw dataset is (TFDS data dir, or MovieLens dir)",
                    required=True)
flags.DEFINE_integer("process_count", 1, "WMT: count the training data for this many hosts")
flags.DEFINE_integer("max_sentences", 2_000_000, "WMT: training sentences per language for the "
                     "vocabulary")
flags.DEFINE_bool("force", False, "redo what already exists")
config_flags.DEFINE_config_file("config", None, "benchmark config (VARIANT or path.py:VARIANT)")
FLAGS = flags.FLAGS


def _fail(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def _expand_config_arg(argv: list[str]) -> list[str]:
    """``--config=VARIANT`` (default ``reference``) -> ``configs/<benchmark>.py:VARIANT``, placed
    before any ``--config.KEY`` override, as ``config_flags`` wants."""
    bench = next((a.split("=", 1)[1] for a in argv if a.startswith("--benchmark=")), None)
    if bench not in BENCHMARKS:
        return argv  # absl reports the bad or missing --benchmark
    value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "reference")
    if ".py" not in value:
        value = f"{importlib.import_module(f'mlperf_jax.configs.{bench}').__file__}:{value}"
    rest = [a for a in argv[1:] if not a.startswith("--config=")]
    return [argv[0], f"--config={value}"] + rest


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config, data_dir = FLAGS.config, FLAGS.data_dir
    if config.get("dataset") == "synthetic":
        _fail(f"nothing to prepare: this {FLAGS.benchmark} config uses the synthetic tiny-track "
              "data; pass --config=reference")
    t0 = time.time()
    try:
        if FLAGS.benchmark == "ncf":
            from mlperf_jax.input_pipelines import movielens
            kw = dict(num_eval_negatives=int(config.num_eval_negatives),
                      min_ratings=int(config.min_ratings), data_seed=int(config.data_seed))
            cache_dir = config.get("cache_dir") or movielens.default_cache_dir(data_dir)
            p = movielens.prepare(data_dir, cache_dir=cache_dir, force=FLAGS.force, **kw)
            line = (f"MovieLens: {p.num_users} users, {p.num_items} items, "
                    f"{p.num_train_positives} training positives, {p.num_eval_negatives} eval "
                    f"negatives per user; prepared in {movielens.cache_path(cache_dir, **kw)}")
        else:
            from mlperf_jax.input_pipelines import wmt
            line = wmt.prepare(config, data_dir, process_count=FLAGS.process_count,
                               max_sentences=FLAGS.max_sentences, force=FLAGS.force)
    except (OSError, ValueError) as e:  # DatasetNotFoundError is an OSError
        _fail(str(e))
    print(f"{line} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    app.run(main, argv=_expand_config_arg(sys.argv))
