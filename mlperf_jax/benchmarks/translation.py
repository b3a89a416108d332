"""What the two translation benchmarks (Transformer and GNMT) share: the loss, the data sources
(WMT through ``input_pipelines.wmt``, or the tiny track's synthetic task), beam-search evaluation
and BLEU.

BLEU is sacrebleu's corpus BLEU on detokenised output against the raw reference text, reported as
a fraction (BLEU/100) because that is the scale of the MLPerf log's ``eval_accuracy`` and of the
compliance checker's bounds (0.25 for the Transformer, 0.24 for GNMT).
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlperf_jax.benchmarks.base import Batch, Benchmark, DataSource, PyTree
from mlperf_jax.input_pipelines.source import global_spec
from mlperf_jax.input_pipelines import synthetic_translation as synth


# ---------------------------------------------------------------------------- loss
def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           label_smoothing: float) -> tuple[jax.Array, jax.Array]:
    """Sum over tokens of the label-smoothed cross-entropy (minus its minimum, as the references
    report it, so a perfect model scores 0) and the plain cross-entropy sum."""
    v = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if label_smoothing > 0:
        conf = 1.0 - label_smoothing
        low = label_smoothing / (v - 1)
        smooth = -jnp.sum(logp, axis=-1)
        loss = conf * nll + low * (smooth - nll)
        norm = -(conf * np.log(conf) + (v - 1) * low * np.log(low + 1e-20))
        loss = loss - norm
    else:
        loss = nll
    return jnp.sum(loss * weights), jnp.sum(nll * weights)


def bleu(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU as a fraction in [0, 1]."""
    import sacrebleu
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score) / 100.0


# ---------------------------------------------------------------------------- synthetic data
def _host_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} hosts")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


def synthetic_source(config: ml_collections.ConfigDict, *, seed: int, process_index: int,
                     process_count: int) -> DataSource:
    """The tiny track's data: fixed train and held-out eval sets of the synthetic task."""
    sc = config.synthetic
    train = synth.SyntheticTranslation(int(sc.num_train), data_seed=int(sc.train_data_seed),
                                       max_src_len=int(config.max_len), max_tgt_len=int(config.max_len))
    evals = synth.SyntheticTranslation(int(sc.num_eval), data_seed=int(sc.eval_data_seed),
                                       max_src_len=int(config.max_len), max_tgt_len=int(config.max_len))
    gb, eb = int(config.global_batch_size), int(config.eval_batch_size)
    steps = train.num_examples // gb
    rows = _host_rows(gb, process_index, process_count)
    erows = _host_rows(eb, process_index, process_count)

    def train_epoch(epoch: int, skip_steps: int = 0) -> Iterator[Batch]:
        order = np.random.default_rng([seed, epoch]).permutation(train.num_examples)
        for step in range(skip_steps, steps):
            idx = order[step * gb:(step + 1) * gb][rows]
            yield {"inputs": train.inputs[idx], "targets": train.targets[idx]}

    def eval_batches() -> Iterator[Batch]:
        n = evals.num_examples
        for start in range(0, n, eb):
            idx = np.arange(start, start + eb)
            mask = idx < n
            idx = np.where(mask, idx, 0)
            sl = slice(erows.start, erows.stop)
            yield {"inputs": evals.inputs[idx][sl], "targets": evals.targets[idx][sl],
                   "mask": mask[sl].astype(np.int32), "index": idx[sl].astype(np.int32)}

    length = int(config.max_len)
    return DataSource(num_train_samples=steps * gb, num_eval_samples=evals.num_examples,
                      steps_per_epoch=steps, train_epoch=train_epoch, eval_batches=eval_batches,
                      train_spec=global_spec({k: ((gb // process_count, length), np.int32)
                                              for k in ("inputs", "targets")}, process_count),
                      eval_spec=global_spec({**{k: ((eb // process_count, length), np.int32)
                                                for k in ("inputs", "targets")},
                                             **{k: ((eb // process_count,), np.int32)
                                                for k in ("mask", "index")}}, process_count),
                      eval_context=lambda: {"references": None, "detokenize": synth.decode},
                      description=(f"synthetic translation (tiny track): {train.num_examples} train / "
                                   f"{evals.num_examples} held-out pairs, vocab {synth.VOCAB_SIZE}"),
                      synthetic=True)


# ---------------------------------------------------------------------------- benchmark base
class TranslationBenchmark(Benchmark, abc.ABC):
    """Shared loss, data, eval. Subclasses supply the model (``logits``, ``beam_decode``)."""

    tunable_hparams = frozenset({"global_batch_size", "learning_rate", "warmup_steps",
                                 "adam_beta1", "adam_beta2", "eval_batch_size"})

    # ---- model hooks
    @abc.abstractmethod
    def logits(self, config, params, batch, rng, train: bool) -> jax.Array:
        """Teacher-forced logits [B, T, V]."""

    @abc.abstractmethod
    def beam_decode(self, config, params, inputs: jax.Array) -> jax.Array:
        """Best beam [B, max_decode_len] for each source row."""

    # ---- data
    def data_source(self, config, data_dir, *, seed, process_index, process_count) -> DataSource:
        if config.dataset == "synthetic":
            return synthetic_source(config, seed=seed, process_index=process_index,
                                    process_count=process_count)
        from mlperf_jax.input_pipelines import wmt
        return wmt.data_source(config, data_dir, seed=seed, process_index=process_index,
                               process_count=process_count)

    def prepare_data(self, config, data_dir) -> str | None:
        if config.dataset == "synthetic":
            return None
        from mlperf_jax.input_pipelines import wmt
        return wmt.prepare(config, data_dir, process_count=jax.process_count())

    def fake_train_batch(self, config, rng: np.random.Generator) -> Batch:
        """Random sentence pairs shaped like the real pipeline's batches: WMT-like lengths
        (uniform 10-60 subwords, EOS included, capped at ``max_len``), packed when
        ``config.pack``, else one pair a row."""
        from mlperf_jax.input_pipelines import wmt
        n, length, v = int(config.global_batch_size), int(config.max_len), int(config.vocab_size)
        hi = min(60, length)

        def pairs():
            while True:
                a, b = rng.integers(min(10, hi), hi + 1, size=2)
                yield {"inputs": np.append(rng.integers(3, v, a - 1), wmt.EOS_ID).astype(np.int32),
                       "targets": np.append(rng.integers(3, v, b - 1), wmt.EOS_ID).astype(np.int32)}

        rows = wmt.pack_rows(pairs(), length) if config.get("pack", False) else \
            wmt.pad_rows(pairs(), length)
        return next(wmt._batches(rows, n))

    def throughput_units(self, config, batch: Batch) -> tuple[str, int]:
        # target tokens in the global batch (the unit of the references' batch size)
        return "tokens", int(np.sum(np.asarray(batch["targets"]) > 0))

    # ---- training
    def loss_fn(self, config, params, model_state, batch: Mapping[str, jax.Array], rng):
        logits = self.logits(config, params, batch, rng, train=True)
        targets = batch["targets"]
        weights = (targets > 0).astype(jnp.float32)
        loss_sum, nll_sum = smoothed_cross_entropy(logits, targets, weights,
                                                   float(config.label_smoothing))
        n = jnp.maximum(jnp.sum(weights), 1.0)
        acc = jnp.sum((jnp.argmax(logits, -1) == targets) * weights) / n
        return loss_sum / n, (model_state, {"nll": nll_sum / n, "token_accuracy": acc,
                                            "tokens": jnp.sum(weights)})

    # ---- evaluation
    def eval_step(self, config, params, model_state, batch) -> PyTree:
        preds = self.beam_decode(config, params, batch["inputs"])
        return {"predictions": preds, "targets": batch["targets"], "mask": batch["mask"],
                "index": batch["index"]}

    def eval_metric(self, config, outputs: list[PyTree], context) -> dict[str, float]:
        hyps, refs = detokenized(outputs, context)
        return {"bleu": bleu(hyps, refs, tokenize=str(config.bleu_tokenize))}


def detokenized(outputs: list[PyTree], context: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(hypotheses, references) for every real eval example, in dataset order. ``context`` is the
    data source's eval context: ``detokenize`` (ids -> text) and ``references`` (the raw reference
    sentences, for BLEU against the original text rather than a round trip through the
    vocabulary; None to detokenise the eval targets instead)."""
    detok = context["detokenize"]
    refs_all = context.get("references")
    by_index: dict[int, tuple[str, str]] = {}
    for out in outputs:
        preds = np.asarray(out["predictions"])
        tgts = np.asarray(out["targets"])
        mask = np.asarray(out["mask"]).astype(bool)
        index = np.asarray(out["index"])
        for p, t, m, i in zip(preds, tgts, mask, index):
            if not m:
                continue
            ref = refs_all[int(i)] if refs_all is not None else detok(t)
            by_index[int(i)] = (detok(p), ref)
    items = [by_index[i] for i in sorted(by_index)]
    return [h for h, _ in items], [r for _, r in items]


def lr_schedule_rsqrt(base: float, d_model: int, warmup: int) -> Callable:
    """The Transformer reference: ``base * d^-0.5 * min(1, step/warmup) * rsqrt(max(step, warmup))``
    (``step`` counted from 1)."""
    def sched(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        return (base * d_model ** -0.5 * jnp.minimum(1.0, step / warmup)
                * jax.lax.rsqrt(jnp.maximum(step, float(warmup))))
    return sched
