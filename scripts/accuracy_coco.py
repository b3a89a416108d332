"""COCO mAP of a detection accuracy run, checked against the MLPerf quality target.

    python scripts/accuracy_coco.py --mlperf-accuracy-file OUT/mlperf_log_accuracy.json \
        --coco-dir DATA/coco --benchmark ssd-resnet34 [--use-inv-map] [--remove-48-empty-images]

Reads the log as the official ``tools/accuracy-coco.py`` does (``--coco-dir`` holds
``annotations/instances_val2017.json``; qsl_idx = position in its ``images`` list; float32 groups of
seven ``[qsl_idx, ymin, xmin, ymax, xmax, score, class]``, boxes normalised; ``--use-inv-map`` when
class is a contiguous label 1..80 rather than a COCO category id), runs COCOeval (bbox) over the
images seen and prints ``mAP=xx.xxx%``, then the target (v0.5: 99% of 22% for ssd-mobilenet, of 20%
for ssd-resnet34).  Exit status 0 if the target is met, 1 if not, 2 on bad input.  Works on files
written by mlperf_jax.loadgen and by the official LoadGen.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_jax.cli import ArgumentParser  # noqa: E402
from mlperf_jax.inference import coco_accuracy  # noqa: E402

PROG = "accuracy_coco"




def main(argv=None) -> int:
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--mlperf-accuracy-file", required=True, help="path to mlperf_log_accuracy.json")
    ap.add_argument("--coco-dir", required=True, help="directory with annotations/instances_val2017.json")
    ap.add_argument("--benchmark", required=True, choices=sorted(coco_accuracy.TARGETS))
    ap.add_argument("--use-inv-map", action="store_true", help="class is a contiguous label 1..80")
    ap.add_argument("--remove-48-empty-images", action="store_true",
                    help="the harness dropped the val images without annotations")
    ap.add_argument("--output-file", help="also write the COCO detections (json) here")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    ann = os.path.join(a.coco_dir, "annotations", "instances_val2017.json")
    try:
        if not os.path.isfile(a.mlperf_accuracy_file):
            raise FileNotFoundError(f"--mlperf-accuracy-file: no file at {os.path.abspath(a.mlperf_accuracy_file)}")
        if not os.path.isfile(ann):
            raise FileNotFoundError(f"--coco-dir: no annotations/instances_val2017.json under "
                                    f"{os.path.abspath(a.coco_dir)}")
        gt = coco_accuracy.load_coco_gt(ann, quiet=True)
        with open(a.mlperf_accuracy_file) as f:
            try:
                entries = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{a.mlperf_accuracy_file}: not valid json ({e})") from None
        if not isinstance(entries, list):
            raise ValueError(f"{a.mlperf_accuracy_file}: expected a json list of accuracy entries")
        inv_map = [0, *gt.getCatIds()] if a.use_inv_map else None
        dets, ids, counts = coco_accuracy.accuracy_log_to_coco(
            entries, coco_accuracy.image_map(gt, a.remove_48_empty_images), inv_map=inv_map)
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = str(e) if not isinstance(e, (KeyError, TypeError)) else f"malformed accuracy entry ({e!r})"
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    if counts["mismatches"]:
        print(f"{PROG}: WARNING: {counts['mismatches']} detection(s) whose payload qsl_idx disagrees with "
              "LoadGen's (scored against LoadGen's image, as the official script does)", file=sys.stderr)
    if a.output_file:
        with open(a.output_file, "w") as f:
            json.dump(dets, f, sort_keys=True, indent=4)
    if not dets:
        print(f"{PROG}: no detections in {counts['images']} images: mAP is 0", file=sys.stderr)
    m, _ = coco_accuracy.coco_map(gt, dets, ids, quiet=False)
    print("mAP={:.3f}%".format(100.0 * m))
    if a.verbose:
        print(f"found {counts['results']} results")
        print(f"found {counts['images']} images")
        print(f"found {counts['no_results']} images with no results")
        print(f"ignored {counts['dupes']} dupes")
    target = coco_accuracy.target_map(a.benchmark)
    ok = 100.0 * m >= target
    ref, frac = coco_accuracy.TARGETS[a.benchmark]
    print(f"target={target:.3f}% ({frac:.0%} of FP32 {ref:.1f}%): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
