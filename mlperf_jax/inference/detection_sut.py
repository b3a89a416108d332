"""A JAX object-detection SUT (SSD): compiled ahead for fixed batch sizes, sharded over a Mesh,
post-processing (decode, per-class NMS, top-k) on the device, dynamic batching for Server.

Threads and batching: ``batching.BatchingSUT``; a completer thread fetches the fixed-shape
detections and answers LoadGen.

Response format, per sample (what the MLPerf reference harness sends and the official
``tools/accuracy-coco.py`` reads): float32 groups of seven
``[qsl_idx, ymin, xmin, ymax, xmax, score, class]``, boxes normalised to [0, 1] and ``class`` the
COCO category id; ``np.frombuffer(bytes.fromhex(data), np.float32).reshape(-1, 7)`` reads it back.
A sample without detections gets an empty response (the script counts the image, with no boxes).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mlperf_jax.inference.batching import BatchingSUT
from mlperf_jax.inference.coco_qsl import check_preprocessing, detection_normalize
from mlperf_jax.loadgen import QuerySampleResponse, query_samples_complete

# Post-processing per benchmark (the reference models' own settings):
# - ssd-resnet34 (models/ssd_r34.py, PostProcessCocoPt(True, 0.05)): softmax, score > 0.05,
#   NMS IoU 0.5, 200 per class, 200 in all.
# - ssd-mobilenet (TF ssd_mobilenet_v1_coco pipeline.config, as the PyTorch port): sigmoid,
#   score > 0.3, NMS IoU 0.6, 100 per class, 100 in all.
POSTPROCESS = {
    "ssd-resnet34": dict(score_threshold=0.05, nms_iou=0.5, per_class_top_k=200, max_detections=200, sigmoid=False),
    "ssd-mobilenet": dict(score_threshold=0.3, nms_iou=0.6, per_class_top_k=100, max_detections=100, sigmoid=True),
}


def ssd_detect_fn(module, anchors, **postprocess_kwargs) -> Callable:
    """``detect(variables, images_float) -> dict(boxes, scores, classes, valid)`` for an SSD from
    ``models/ssd.py`` and ``models/ssd_boxes.postprocess`` (``anchors``: ``[N, 4]`` cy, cx, h, w)."""
    from mlperf_jax.models import ssd_boxes

    anchors = jnp.asarray(np.asarray(anchors, np.float32))

    def detect(variables, x):
        loc, logits = module.apply(variables, x, train=False)
        return ssd_boxes.postprocess(loc.astype(jnp.float32), logits.astype(jnp.float32), anchors,
                                     **postprocess_kwargs)

    return detect


def decode_response(data: bytes) -> np.ndarray:
    """A response's bytes -> ``[n, 7]`` float32 (n = 0 for an empty response)."""
    return np.frombuffer(data, np.float32).reshape(-1, 7)


class DetectionSUT(BatchingSUT):
    """``detect_fn(variables, images_nhwc_float) -> {"boxes" [B, K, 4] normalised yxyx, "scores" [B, K],
    "classes" [B, K] int (contiguous labels), "valid" [B, K] bool}`` (fixed shapes, jittable).

    ``preprocessing`` ("ssd-mobilenet", "ssd-resnet34") says how the QSL's uint8 images become the
    model's floats.  ``label_to_category`` maps the model's labels to COCO category ids
    (``[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, ...]``); None keeps the labels (SSD-MobileNet's
    91-class TF model already answers in COCO ids).
    """

    def __init__(self, detect_fn: Callable, variables: Any, qsl, *, preprocessing: str, image_size: int,
                 label_to_category: Sequence[int] | np.ndarray | None = None,
                 batch_sizes: Sequence[int] = (1, 2, 4, 8), batch_timeout_ms: float = 0.0,
                 mesh: Mesh | None = None, name: str = "JaxDetectionSUT",
                 complete: Callable = query_samples_complete):
        check_preprocessing(preprocessing)  # unknown names fail before compiling
        self.preprocessing = preprocessing
        self.samples_answered = 0
        self.detections_answered = 0
        table = None if label_to_category is None else np.asarray(label_to_category, np.float32)

        def predict(v, images_u8):
            det = detect_fn(v, detection_normalize(images_u8, preprocessing))
            labels = det["classes"].astype(jnp.int32)
            cls = labels.astype(jnp.float32) if table is None else jnp.asarray(table)[
                jnp.clip(labels, 0, len(table) - 1)]
            boxes = jnp.clip(det["boxes"].astype(jnp.float32), 0.0, 1.0)
            rows = jnp.concatenate([jnp.zeros(labels.shape + (1,), jnp.float32), boxes,
                                    det["scores"].astype(jnp.float32)[..., None], cls[..., None]], axis=-1)
            return rows, det["valid"].astype(jnp.bool_)

        super().__init__(predict, variables, qsl, image_size=image_size, batch_sizes=batch_sizes,
                         batch_timeout_ms=batch_timeout_ms, mesh=mesh, name=name,
                         complete=complete)

    def respond(self, outputs, samples):
        rows, valid = outputs
        responses = []
        for i, s in enumerate(samples):
            r = rows[i][valid[i]]  # a copy, C-contiguous
            r[:, 0] = s.index
            self.detections_answered += len(r)
            responses.append(QuerySampleResponse(s.id, r.tobytes()))
        self.samples_answered += len(samples)
        return responses
