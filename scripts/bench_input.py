"""Input-pipeline throughput per CPU core: can this host feed its accelerators?

    python scripts/bench_input.py --benchmark=resnet50 [--num_images=512] [--seconds=10]
        [--accelerator_rate=7000] [--accelerators=8]

Writes ``--num_images`` JPEGs at ImageNet's typical sizes into one TFRecord in TFDS's
``imagenet2012`` example format, then runs the real ``imagenet.train_dataset`` /
``imagenet.eval_dataset`` over it (TFDS's reader is mocked to return that TFRecord, so shuffle,
decode, augmentation, batching and the tf.data options are exactly the training run's), each on
1 core and on all cores (the process pinned with ``sched_setaffinity``, tf.data's private thread
pool of that many threads). Prints images/s, images/s per core and the cores needed to feed
``--accelerators`` x ``--accelerator_rate`` images/s (default 7,000: about what one current GPU
trains ResNet-50 at). The 1-minute load average is printed beside each run: on a shared machine
a busy neighbour lowers the numbers.

The images: ImageNet's train set is mostly Flickr photos scaled to a longer side of 500 (500x375
and 375x500 dominate; mean about 400x350, ~110 KB per JPEG). We draw 3/4 at a longer side of 500
(aspect 4:3, 3:2 or 1:1; 4 in 5 landscape) and 1/4 with the longer side
uniform in 250-800, as photo-like texture (smooth colour fields plus grain) saved at quality 90;
the mean file size is printed, since decode time follows bytes as well as pixels.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from mlperf_jax.cli import ArgumentParser


def _error(msg: str) -> None:
    print(f"bench_input: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _sizes(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        if rng.random() < 0.75:
            long = 500
            aspect = rng.choice([4 / 3, 3 / 2, 1.0], p=[0.7, 0.2, 0.1])
        else:
            long = int(rng.integers(250, 801))
            aspect = rng.uniform(1.0, 1.6)
        short = int(round(long / aspect))
        out.append((short, long) if rng.random() < 0.8 else (long, short))
    return out


def write_records(path: str, n: int, seed: int = 0, quality: int = 90) -> dict:
    """``n`` photo-like JPEGs in TFDS imagenet2012's example format; returns size statistics."""
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    sizes = _sizes(n, rng)
    nbytes = []
    with tf.io.TFRecordWriter(path) as w:
        for i, (h, wd) in enumerate(sizes):
            low = rng.normal(size=(1, h // 24 + 2, wd // 24 + 2, 3)).astype(np.float32)
            mid = rng.normal(size=(1, h // 3, wd // 3, 3)).astype(np.float32)
            x = (128 + 55 * tf.image.resize(low, [h, wd], method="bicubic")[0]
                 + 18 * tf.image.resize(mid, [h, wd])[0]
                 + rng.normal(0, 9, (h, wd, 1)).astype(np.float32))
            img = tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)
            jpeg = tf.io.encode_jpeg(img, quality=quality).numpy()
            nbytes.append(len(jpeg))
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 1000])),
                "file_name": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[f"n{i:08d}.JPEG".encode()])),
            })).SerializeToString())
    hw = np.array(sizes)
    return {"n": n, "mean_h": float(hw[:, 0].mean()), "mean_w": float(hw[:, 1].mean()),
            "mean_kb": float(np.mean(nbytes) / 1024), "quality": quality}


def _worker(args) -> dict:
    """One measurement, in a process already pinned to ``args.threads`` cores."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from mlperf_jax.input_pipelines import imagenet

    features = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)}

    def as_dataset(self, split, decoders=None, read_config=None, **kw):
        # TFDS with SkipDecoding hands the pipeline the raw JPEG bytes; so does this
        return tf.data.TFRecordDataset(args.records).map(
            lambda s: tf.io.parse_single_example(s, features))

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        if args.mode == "train":
            ds = imagenet.train_dataset(None, batch_size=args.batch_size, seed=0, epoch=1)
        else:
            ds = imagenet.eval_dataset(None, batch_size=args.batch_size, num_examples=args.n)
        opts = tf.data.Options()
        opts.threading.private_threadpool_size = args.threads
        opts.threading.max_intra_op_parallelism = 1
        ds = ds.repeat().with_options(opts)
        it = iter(ds)
        next(it)  # warm-up: builds the graph, fills the buffers
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            count += int(next(it)["image"].shape[0])
        dt = time.perf_counter() - t0
    return {"mode": args.mode, "cores": args.threads, "images_per_s": count / dt,
            "load_1min": os.getloadavg()[0]}


def _run(mode: str, cores: list[int], records: str, n: int, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", "--mode", mode,
           "--records", records, "--num_images", str(n), "--seconds", str(args.seconds),
           "--batch_size", str(args.batch_size), "--threads", str(len(cores))]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if p.returncode != 0:
        _error(f"{mode} on {len(cores)} core(s) failed: {p.stderr.strip().splitlines()[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(prog="bench_input", description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", default="resnet50")
    ap.add_argument("--num_images", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time per run")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--accelerator_rate", type=float, default=7000.0,
                    help="images/s one accelerator trains at (ResNet-50 on a GPU: ~7000)")
    ap.add_argument("--accelerators", type=int, default=1)
    ap.add_argument("--modes", default="train,eval")
    ap.add_argument("--work_dir", default=None, help="where the TFRecord goes (default: a temp dir)")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--records", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.n = args.num_images
    if args._worker:
        print(json.dumps(_worker(args)))
        return
    if args.benchmark != "resnet50":
        _error(f"only --benchmark=resnet50 has an input benchmark, got {args.benchmark!r}")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"train", "eval"}:
        _error(f"--modes takes train and/or eval, got {args.modes!r}")
    if args.num_images < args.batch_size or args.accelerators < 1 or args.accelerator_rate <= 0:
        _error("need --num_images >= --batch_size, --accelerators >= 1, --accelerator_rate > 0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(dir=args.work_dir) as d:
        records = os.path.join(d, "imagenet2012-train.tfrecord-00000-of-00001")
        stats = write_records(records, args.num_images, quality=args.quality)
        print(f"{stats['n']} JPEGs, mean {stats['mean_h']:.0f}x{stats['mean_w']:.0f} px, "
              f"{stats['mean_kb']:.0f} KB, quality {stats['quality']}; "
              f"{len(cpus)} cores usable; load average {os.getloadavg()[0]:.2f}")
        need = args.accelerator_rate * args.accelerators
        print(f"{'mode':<6}{'cores':>6}{'images/s':>11}{'per core':>10}{'load':>7}"
              f"   cores for {need:,.0f} images/s")
        for mode in modes:
            for cores in ([cpus[:1], cpus] if len(cpus) > 1 else [cpus]):
                r = _run(mode, cores, records, args.num_images, args)
                per = r["images_per_s"] / r["cores"]
                print(f"{mode:<6}{r['cores']:>6}{r['images_per_s']:>11.0f}{per:>10.0f}"
                      f"{r['load_1min']:>7.2f}   {need / per:,.0f}")
        print("plan with the 1-core rate; the all-core rows show how it scales here (a load "
              "average near the core count means neighbours took part of them)")


if __name__ == "__main__":
    main()
