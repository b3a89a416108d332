"""Top-1 accuracy of an ImageNet accuracy run, checked against the MLPerf quality target.

    python scripts/accuracy_imagenet.py --mlperf-accuracy-file OUT/mlperf_log_accuracy.json \
        --imagenet-val-file DATA/val_map.txt --benchmark resnet50 [--dtype int32] [--label-offset 0]

Works on files written by mlperf_jax.loadgen and by the official LoadGen.  Prints
``accuracy=..%, good=.., total=..`` and the target; exit status 0 if the target is met, 1 if
not, 2 on bad input.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mlperf_jax.cli import ArgumentParser  # noqa: E402
from mlperf_jax.inference import accuracy  # noqa: E402


def main(argv=None) -> int:
    ap = ArgumentParser(prog="accuracy_imagenet", description=__doc__.splitlines()[0])
    ap.add_argument("--mlperf-accuracy-file", required=True)
    ap.add_argument("--imagenet-val-file", help="val_map.txt (path label per line)")
    ap.add_argument("--labels-npy", help="labels as a .npy array (e.g. written by a synthetic run)")
    ap.add_argument("--benchmark", choices=sorted(accuracy.TARGETS), default="resnet50")
    ap.add_argument("--dtype", default="int32", choices=["int32", "int64", "float32"])
    ap.add_argument("--label-offset", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        if a.imagenet_val_file:
            labels = accuracy.read_val_map(a.imagenet_val_file)
        elif a.labels_npy:
            labels = np.load(a.labels_npy)
        else:
            raise ValueError("give --imagenet-val-file or --labels-npy")
        entries = accuracy.read_accuracy_log(a.mlperf_accuracy_file)
        acc, good, total = accuracy.top1(entries, labels, a.dtype, a.label_offset)
    except (OSError, ValueError, KeyError) as e:
        print(f"accuracy_imagenet: error: {e}", file=sys.stderr)
        return 2
    target = accuracy.target_top1(a.benchmark)
    ok = acc >= target
    print(f"accuracy={acc:.3f}%, good={good}, total={total}")
    ref, frac = accuracy.TARGETS[a.benchmark]
    print(f"target={target:.3f}% ({frac:.0%} of FP32 {ref:.3f}%): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
