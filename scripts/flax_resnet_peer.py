"""The compile-time peer of our ResNet-50: the flax examples' ImageNet ResNet-50 train step
(github.com/google/flax, examples/imagenet: models.py and train.py), written again here in its
shape, not copied: linen bottleneck blocks over ``nn.Conv`` (lax convolutions), BatchNorm with
momentum 0.9 and epsilon 1e-5, the last BatchNorm of each block zero-initialised, cross-entropy
plus an L2 penalty of 1e-4 on the kernels, SGD with Nesterov momentum 0.9. The example ``pmap``s
the step over the local devices; on one device that is one ``jit``, which is what is compiled here.

``compile_times(batch, dtype)`` compiles its init and its train step ahead of time on the batch
``scripts/bench_train_step.py`` measures ours on, and returns the seconds.
"""
from __future__ import annotations

import functools
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class Bottleneck(nn.Module):
    filters: int
    strides: int
    train: bool
    dtype: Any

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not self.train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype)
        s = (self.strides, self.strides)
        y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
        y = nn.relu(norm()(conv(self.filters, (3, 3), s)(y)))
        y = norm(scale_init=nn.initializers.zeros_init())(conv(4 * self.filters, (1, 1))(y))
        if x.shape != y.shape:
            x = norm()(conv(4 * self.filters, (1, 1), s)(x))
        return nn.relu(x + y)


class ResNet50(nn.Module):
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                    dtype=self.dtype)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), "SAME")
        for stage, blocks in enumerate((3, 4, 6, 3)):
            for b in range(blocks):
                x = Bottleneck(64 * 2 ** stage, 2 if stage and not b else 1, train, self.dtype)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))
        return jnp.asarray(x, self.dtype)


def compile_times(batch: int, dtype: str, image_size: int = 224) -> dict:
    """Seconds (wall, and CPU for both programs) to lower and compile init and the train step."""
    model = ResNet50(dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    tx = optax.sgd(optax.cosine_decay_schedule(0.1, 1000), momentum=0.9, nesterov=True)

    def init(key):
        v = model.init(key, jnp.zeros((1, image_size, image_size, 3)), train=False)
        return {"step": jnp.zeros((), jnp.int32), "params": v["params"],
                "batch_stats": v["batch_stats"], "opt": tx.init(v["params"])}

    def train_step(state, images, labels):
        def loss_fn(params):
            logits, new = model.apply({"params": params, "batch_stats": state["batch_stats"]},
                                      images, mutable=["batch_stats"])
            xent = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, 1000)).mean()
            l2 = sum(jnp.sum(w ** 2) for w in jax.tree.leaves(params) if w.ndim > 1)
            return xent + 1e-4 * 0.5 * l2, (new, logits)

        (loss, (new, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
        return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                "batch_stats": new["batch_stats"], "opt": opt}, metrics

    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    cpu0, t0 = time.process_time(), time.perf_counter()
    jax.jit(init).lower(key).compile()
    t1 = time.perf_counter()
    abstract = jax.eval_shape(init, key)
    jax.jit(train_step, donate_argnums=(0,)).lower(abstract, images, labels).compile()
    t2 = time.perf_counter()
    return {"init_s": t1 - t0, "train_step_s": t2 - t1, "total_s": t2 - t0,
            "cpu_s": time.process_time() - cpu0}
