"""A JAX object-detection SUT (SSD): compiled ahead for fixed batch sizes, sharded over a Mesh,
post-processing (decode, per-class NMS, top-k) on the device, dynamic batching for Server.

Threads as ``ClassifierSUT``: ``issue_queries`` only appends to a queue; a batcher thread takes up
to ``max(batch_sizes)`` samples (waiting at most ``batch_timeout_ms`` for more), pads to the
smallest compiled batch size, puts the uint8 batch on the devices with a ``NamedSharding`` over the
mesh's ``data`` axis and dispatches; a completer thread fetches the fixed-shape detections and
answers LoadGen.

Response format, per sample (what the MLPerf reference harness sends and the official
``tools/accuracy-coco.py`` reads): float32 groups of seven
``[qsl_idx, ymin, xmin, ymax, xmax, score, class]``, boxes normalised to [0, 1] and ``class`` the
COCO category id; ``np.frombuffer(bytes.fromhex(data), np.float32).reshape(-1, 7)`` reads it back.
A sample without detections gets an empty response (the script counts the image, with no boxes).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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


class DetectionSUT:
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
        self.name = name
        self.qsl = qsl
        self.mesh = mesh or Mesh(np.asarray(jax.local_devices()), ("data",))
        n_dev = self.mesh.size
        self.batch_sizes = sorted({-(-int(b) // n_dev) * n_dev for b in batch_sizes if int(b) > 0})
        if not self.batch_sizes:
            raise ValueError("batch_sizes: need at least one positive batch size")
        self.max_batch = self.batch_sizes[-1]
        self.timeout_s = batch_timeout_ms / 1000.0
        self.image_size = image_size
        self._complete = complete
        rep = NamedSharding(self.mesh, P())
        self._batch_sharding = NamedSharding(self.mesh, P("data"))
        self.variables = jax.device_put(variables, rep)
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

        jitted = jax.jit(predict, in_shardings=(rep, self._batch_sharding),
                         out_shardings=(self._batch_sharding, self._batch_sharding))
        t0 = time.perf_counter()
        self._compiled = {}
        abstract_vars = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), self.variables)
        for b in self.batch_sizes:
            spec = jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.uint8, sharding=self._batch_sharding)
            self._compiled[b] = jitted.lower(abstract_vars, spec).compile()
        self.compile_seconds = time.perf_counter() - t0
        self._pending: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._done_q: collections.deque = collections.deque()
        self._done_cv = threading.Condition()
        self._stop = False
        self.batches_run = collections.Counter()
        self.samples_answered = 0
        self.detections_answered = 0
        self.error: BaseException | None = None
        self._threads = [threading.Thread(target=self._batcher, name="sut-batcher", daemon=True),
                         threading.Thread(target=self._completer, name="sut-completer", daemon=True)]
        for t in self._threads:
            t.start()

    # ---------------------------------------------------------------- SUT API
    def issue_queries(self, samples) -> None:
        with self._cv:
            self._pending.extend(samples)
            self._cv.notify()

    def flush_queries(self) -> None:
        with self._cv:
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        with self._done_cv:
            self._done_cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- threads
    def _take_batch(self):
        with self._cv:
            while not self._pending and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            if self.timeout_s > 0 and len(self._pending) < self.max_batch:
                deadline = time.perf_counter() + self.timeout_s
                while len(self._pending) < self.max_batch and not self._stop:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            n = min(len(self._pending), self.max_batch)
            return [self._pending.popleft() for _ in range(n)]

    def _batcher(self):
        try:
            while True:
                batch = self._take_batch()
                if batch is None:
                    return
                n = len(batch)
                b = next(s for s in self.batch_sizes if s >= n)
                x = self.qsl.get([s.index for s in batch])
                if b > n:
                    x = np.concatenate([x, np.zeros((b - n,) + x.shape[1:], x.dtype)])
                out = self._compiled[b](self.variables, jax.device_put(x, self._batch_sharding))
                self.batches_run[b] += 1
                with self._done_cv:
                    self._done_q.append((out, batch))
                    self._done_cv.notify()
        except BaseException as e:  # noqa: BLE001 - surfaced through .error; LoadGen ends at max_duration
            self.error = e
            raise

    def _completer(self):
        try:
            while True:
                with self._done_cv:
                    while not self._done_q and not self._stop:
                        self._done_cv.wait()
                    if not self._done_q:
                        return
                    (rows, valid), batch = self._done_q.popleft()
                rows, valid = np.asarray(rows), np.asarray(valid)
                responses = []
                for i, s in enumerate(batch):
                    r = rows[i][valid[i]]  # a copy, C-contiguous
                    r[:, 0] = s.index
                    self.detections_answered += len(r)
                    responses.append(QuerySampleResponse(s.id, r.tobytes()))
                self.samples_answered += len(batch)
                self._complete(responses)
        except BaseException as e:  # noqa: BLE001
            self.error = e
            raise
