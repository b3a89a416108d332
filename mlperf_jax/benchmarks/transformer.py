"""MLPerf Transformer (translation, non-recurrent): Transformer big on WMT English-German,
target 25.0 BLEU (logged as 0.25) on newstest2014, evaluated every epoch.

Configs: ``mlperf_jax/configs/transformer.py`` (``reference``, closed division on TFDS data, and
``tiny``, the synthetic task; open division, labelled as the tiny track).
"""
from __future__ import annotations


import jax.numpy as jnp
import optax

from mlperf_jax.benchmarks import translation
from mlperf_jax.input_pipelines import synthetic_translation as synth


def model_config(config, train: bool, decode: bool = False):
    from mlperf_jax.models import transformer as T
    m = config.model
    return T.TransformerConfig(
        vocab_size=int(config.vocab_size), d_model=int(m.d_model), num_heads=int(m.num_heads),
        num_layers=int(m.num_layers), d_ff=int(m.d_ff), dropout_rate=float(m.dropout_rate),
        attention_dropout_rate=float(m.attention_dropout_rate),
        relu_dropout_rate=float(m.relu_dropout_rate),
        max_len=max(int(config.max_len), int(config.max_decode_len),
                    int(config.get("max_eval_len", 0))),
        dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32,
        deterministic=not train, decode=decode)


class TransformerBenchmark(translation.TranslationBenchmark):
    name = "transformer"
    mlperf_name = "transformer"
    config_module = "mlperf_jax.configs.transformer"

    def init(self, config, rng):
        from mlperf_jax.models import transformer as T
        model = T.Transformer(model_config(config, train=False))
        x = jnp.ones((1, int(config.max_len)), jnp.int32)
        params = model.init(rng, x, x)["params"]
        return params, {}

    def logits(self, config, params, batch, rng, train):
        from mlperf_jax.models import transformer as T
        model = T.Transformer(model_config(config, train=train))
        kw = {k: batch[k] for k in ("inputs_segmentation", "targets_segmentation",
                                    "inputs_position", "targets_position") if k in batch}
        return model.apply({"params": params}, batch["inputs"], batch["targets"], **kw,
                           rngs={"dropout": rng} if train else {})

    def beam_decode(self, config, params, inputs):
        return transformer_beam_search(config, params, inputs)[0][:, 0]

    def optimizer(self, config, steps_per_epoch):
        sched = translation.lr_schedule_rsqrt(float(config.learning_rate),
                                              int(config.model.d_model), int(config.warmup_steps))
        tx = optax.adam(sched, b1=float(config.adam_beta1), b2=float(config.adam_beta2),
                        eps=float(config.adam_epsilon))
        return tx, sched

    def hparams_to_log(self, config, steps_per_epoch):
        return {
            "opt_name": "adam",
            "opt_base_learning_rate": float(config.learning_rate),
            "opt_learning_rate_warmup_steps": int(config.warmup_steps),
            "opt_adam_beta_1": float(config.adam_beta1),
            "opt_adam_beta_2": float(config.adam_beta2),
            "opt_adam_epsilon": float(config.adam_epsilon),
            "max_sequence_length": (int(config.max_len), {"method": "discard"}),
        }


def transformer_beam_search(config, params, inputs, *, beam_size=None, alpha=None):
    """Beam search with the decoder cache: (sequences [B, K, L], scores [B, K])."""
    from mlperf_jax.models import decoding, transformer as T
    k = int(beam_size or config.beam_size)
    alpha = float(config.length_penalty_alpha if alpha is None else alpha)
    b = inputs.shape[0]
    enc_model = T.Transformer(model_config(config, train=False))
    dec_model = T.Transformer(model_config(config, train=False, decode=True))
    encoded = enc_model.apply({"params": params}, inputs, method=T.Transformer.encode)
    encoded, inputs_t = decoding.tile_beams((encoded, inputs), k)
    _, cache_vars = dec_model.apply({"params": params}, encoded, inputs_t,
                                    jnp.zeros((b * k, 1), jnp.int32), method=T.Transformer.decode,
                                    mutable=["cache"])

    def step_fn(ids, cache):
        logits, new = dec_model.apply({"params": params, "cache": cache}, encoded, inputs_t, ids,
                                      method=T.Transformer.decode, mutable=["cache"])
        return logits[:, 0], new["cache"], None

    return decoding.beam_search(step_fn, cache_vars["cache"], batch_size=b, beam_size=k,
                                max_decode_len=int(config.max_decode_len), eos_id=synth.EOS,
                                alpha=alpha)


BENCHMARK = TransformerBenchmark()
