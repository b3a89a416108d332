"""MLPerf GNMT (translation, recurrent): the ``rnn_translator`` reference model on WMT16
English-German, target 24.0 SacreBLEU (logged as 0.24) on newstest2014, evaluated every epoch.

Configs: ``mlperf_jax/configs/gnmt.py`` (``reference``, closed division on TFDS data, and
``tiny``, the synthetic task; open division, labelled as the tiny track).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from mlperf_jax.benchmarks import translation
from mlperf_jax.input_pipelines import synthetic_translation as synth


def model_config(config, train: bool):
    from mlperf_jax.models import gnmt as G
    m = config.model
    return G.GNMTConfig(vocab_size=int(config.vocab_size), hidden=int(m.hidden),
                        num_layers=int(m.num_layers), dropout_rate=float(m.dropout_rate),
                        init_scale=float(m.init_scale),
                        dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32,
                        deterministic=not train)


def lr_schedule(config, steps_per_epoch: int):
    """The reference's ``WarmupMultiStepLR`` as an optax schedule, and its derived step counts."""
    total = int(config.num_epochs) * int(steps_per_epoch)
    base = float(config.learning_rate)
    warmup = int(config.warmup_steps)
    remain = config.remain_steps
    remain = int(remain * total) if isinstance(remain, float) else int(remain)
    n_decay = int(config.decay_steps)
    interval = max(1, (total - remain) // max(n_decay, 1))
    factor = float(config.decay_factor)
    warm_base = np.exp(np.log(0.01) / max(warmup, 1))

    def sched(count):
        step = jnp.asarray(count, jnp.float32)
        warm = base * warm_base ** (warmup - step)
        k = jnp.clip(jnp.floor((step - remain) / interval) + 1, 0, n_decay)
        decayed = base * factor ** k
        return jnp.where(step < warmup, warm, jnp.where(step >= remain, decayed, base))

    return sched, dict(remain_steps=remain, decay_interval=interval, total_steps=total)


class GNMTBenchmark(translation.TranslationBenchmark):
    name = "gnmt"
    mlperf_name = "gnmt"
    config_module = "mlperf_jax.configs.gnmt"
    # the schedule's knobs are closed-division tunables for GNMT (they are logged for that)
    tunable_hparams = translation.TranslationBenchmark.tunable_hparams | frozenset({
        "remain_steps", "decay_steps", "decay_factor"})

    def init(self, config, rng):
        from mlperf_jax.models import gnmt as G
        model = G.GNMT(model_config(config, train=False))
        x = jnp.ones((1, 4), jnp.int32)
        return model.init(rng, x, x)["params"], {}

    def logits(self, config, params, batch, rng, train):
        from mlperf_jax.models import gnmt as G
        model = G.GNMT(model_config(config, train=train))
        return model.apply({"params": params}, batch["inputs"], batch["targets"],
                           rngs={"dropout": rng} if train else {})

    def beam_decode(self, config, params, inputs):
        return gnmt_beam_search(config, params, inputs)[0][:, 0]

    def optimizer(self, config, steps_per_epoch):
        sched, _ = lr_schedule(config, steps_per_epoch)
        tx = optax.chain(
            optax.clip_by_global_norm(float(config.grad_clip_norm)),
            optax.adam(sched, b1=float(config.adam_beta1), b2=float(config.adam_beta2),
                       eps=float(config.adam_epsilon)))
        return tx, sched

    def hparams_to_log(self, config, steps_per_epoch):
        _, d = lr_schedule(config, steps_per_epoch)
        return {
            "opt_name": "adam",
            "opt_base_learning_rate": float(config.learning_rate),
            "opt_adam_beta_1": float(config.adam_beta1),
            "opt_adam_beta_2": float(config.adam_beta2),
            "opt_adam_epsilon": float(config.adam_epsilon),
            "opt_gradient_clip_norm": float(config.grad_clip_norm),
            "opt_learning_rate_alt_decay_func": True,
            "opt_learning_rate_alt_warmup_func": True,
            "opt_learning_rate_decay_factor": float(config.decay_factor),
            "opt_learning_rate_decay_interval": int(d["decay_interval"]),
            "opt_learning_rate_decay_steps": int(config.decay_steps),
            "opt_learning_rate_remain_steps": int(d["remain_steps"]),
            "opt_learning_rate_warmup_steps": int(config.warmup_steps),
            "max_sequence_length": (int(config.max_len), {"method": "discard"}),
        }


def gnmt_beam_search(config, params, inputs, *, beam_size=None, alpha=None, coverage=None):
    """Beam search over the GNMT decoder's LSTM state: (sequences [B, K, L], scores [B, K])."""
    from mlperf_jax.models import decoding, gnmt as G
    k = int(beam_size or config.beam_size)
    alpha = float(config.length_penalty_alpha if alpha is None else alpha)
    cov = float(config.coverage_penalty if coverage is None else coverage)
    b, s = inputs.shape
    model = G.GNMT(model_config(config, train=False))
    memory = model.apply({"params": params}, inputs, method=G.GNMT.encode)
    state = model.apply({"params": params}, b * k, method=G.GNMT.init_state)
    cache = {"memory": decoding.tile_beams(memory, k), "state": state}

    def step_fn(ids, cache):
        logits, new_state, attn = model.apply({"params": params}, cache["memory"], cache["state"],
                                              ids, method=G.GNMT.decode_step)
        return logits, {"memory": cache["memory"], "state": new_state}, attn

    return decoding.beam_search(step_fn, cache, batch_size=b, beam_size=k,
                                max_decode_len=int(config.max_decode_len), eos_id=synth.EOS,
                                alpha=alpha, len_norm_const=float(config.length_penalty_const),
                                cov_penalty=cov, src_len=s, src_mask=inputs > 0)


BENCHMARK = GNMTBenchmark()
