"""A JAX image-classification SUT (``batching.BatchingSUT``: compiled ahead for fixed batch sizes,
sharded over a Mesh, dynamic batching for Server) that answers top-1 labels.  Normalisation runs
inside the compiled function (``preprocessing.normalize`` for the model family named by
``preprocessing``), so uint8 travels.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
from jax.sharding import Mesh

from mlperf_jax.inference.batching import BatchingSUT
from mlperf_jax.input_pipelines.preprocessing import convention, normalize
from mlperf_jax.loadgen import QuerySampleResponse, query_samples_complete


class ClassifierSUT(BatchingSUT):
    """``apply_fn(variables, images_nhwc_float, train=False) -> logits``; answers int32 top-1.

    ``preprocessing`` ("resnet50", "mobilenet") says how the QSL's uint8 images become the
    model's floats; it has no default because a wrong one gives plausible, wrong accuracy.
    """

    def __init__(self, apply_fn: Callable, variables: Any, qsl, *, preprocessing: str,
                 image_size: int = 224,
                 batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32), batch_timeout_ms: float = 0.0,
                 mesh: Mesh | None = None, name: str = "JaxClassifierSUT",
                 complete: Callable = query_samples_complete):
        convention(preprocessing)  # unknown names fail before compiling
        self.preprocessing = preprocessing

        def predict(v, images_u8):
            x = normalize(images_u8, preprocessing)
            return jnp.argmax(apply_fn(v, x, train=False), axis=-1).astype(jnp.int32)

        super().__init__(predict, variables, qsl, image_size=image_size, batch_sizes=batch_sizes,
                         batch_timeout_ms=batch_timeout_ms, mesh=mesh, name=name,
                         complete=complete)

    def respond(self, pred, samples):
        return [QuerySampleResponse(s.id, pred[i:i + 1].tobytes()) for i, s in enumerate(samples)]
