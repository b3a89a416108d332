"""Top-1 accuracy from ``mlperf_log_accuracy.json`` (ours or the official LoadGen's).

Like the reference ``accuracy-imagenet.py``: entries are deduplicated by ``qsl_idx``, each
``data`` is decoded with ``np.frombuffer(bytes.fromhex(data), dtype)`` and its first element is
the predicted class.  The target is the benchmark's quality bound relative to the FP32
reference (MLPerf Inference v0.5): ResNet-50 99% of 76.456%, MobileNet-v1 98% of 71.676%.
"""

from __future__ import annotations

import json

import numpy as np

# benchmark: (FP32 reference top-1 in %, fraction of it required)
TARGETS = {"resnet50": (76.456, 0.99), "mobilenet": (71.676, 0.98)}


def target_top1(benchmark: str) -> float:
    ref, frac = TARGETS[benchmark]
    return ref * frac


def read_accuracy_log(path: str) -> list[dict]:
    with open(path) as f:
        return json.load(f)


def top1(entries: list[dict], labels: np.ndarray, dtype: str = "int32", label_offset: int = 0) -> tuple[float, int, int]:
    """(accuracy in %, correct, total) over unique qsl_idx.  ``label_offset`` is subtracted
    from predictions (1 for 1001-class models with a background class)."""
    seen: set[int] = set()
    good = total = 0
    for e in entries:
        idx = int(e["qsl_idx"])
        if idx in seen:
            continue
        seen.add(idx)
        data = np.frombuffer(bytes.fromhex(e["data"]), np.dtype(dtype))
        if data.size == 0:
            raise ValueError(f"accuracy log entry for qsl_idx {idx} has no data")
        if idx >= len(labels):
            raise ValueError(f"qsl_idx {idx} is beyond the {len(labels)} labels")
        total += 1
        good += int(int(data[0]) - label_offset == int(labels[idx]))
    return (100.0 * good / total if total else 0.0), good, total


def read_val_map(path: str) -> np.ndarray:
    labels = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                labels.append(int(parts[1]))
    return np.asarray(labels, dtype=np.int64)
