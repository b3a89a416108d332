"""PyTorch peers of our train steps, for ``scripts/bench_train_step.py``: the same model, batch,
loss and optimizer written the way a PyTorch user would, timed on the same machine.

* ResNet-50: torchvision's ``resnet50``, SGD with momentum and weight decay, label smoothing 0.1.
* Transformer: ``torch.nn.Transformer`` (pre-layer-norm, ReLU, ``batch_first``) between one
  shared embedding (scaled by sqrt(d_model), padding ids embedded to zero, sinusoidal positions),
  tied to the output projection as ours; label-smoothed cross-entropy over non-padding target
  tokens; Adam with our betas and epsilon. The attention projections carry no biases, as ours
  (``nn.Transformer`` has them by default; they are removed so the parameters match ours one for
  one). One ``dropout`` rate for embeddings, residuals, attention and ReLU (``nn.Transformer`` has
  only one), taken from ``config.model.dropout_rate``.
* NCF: NeuMF as the MLPerf v0.5 reference (``recommendation/pytorch/neumf.py``): GMF and MLP
  embeddings (dense, the ``nn.Embedding`` default, as ours), ReLU MLP, a final linear layer over
  the concatenation; ``BCEWithLogitsLoss``; Adam with our lr, betas and epsilon. The tables have
  the config's ``num_users``/``num_items`` rows (ours pad them to ``row_multiple``; padded rows
  are never read).

Each peer runs on CUDA when torch sees a GPU, else on the CPU; ``bfloat16`` runs under
``torch.autocast`` (parameters stay float32, as ours). On CUDA torch's float32 matmuls are set to
TF32, which is what JAX uses by default there (``match_jax_matmul_precision``).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any, Callable

import numpy as np


def device() -> str:
    """Where the peers run: ``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def match_jax_matmul_precision(dev: str) -> str:
    """JAX computes float32 matmuls in TF32 on recent NVIDIA GPUs by default, torch in full
    float32 (``highest``): on CUDA, unless ``jax_default_matmul_precision`` is set, give torch the
    same TF32 (``high``). Returns torch's setting, for the description."""
    import jax
    import torch
    if dev == "cuda" and jax.config.jax_default_matmul_precision is None:
        torch.set_float32_matmul_precision("high")
    return torch.get_float32_matmul_precision()


def _sync(dev: str) -> None:
    import torch
    if dev == "cuda":
        torch.cuda.synchronize()


def _autocast(dev: str, dtype: str):
    import torch
    if dtype == "bfloat16":
        return torch.autocast(dev, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def time_steps(step: Callable[[], Any], steps: int, repeats: int, dev: str) -> float:
    """Seconds per step: one warm-up step, then the best of ``repeats`` runs of ``steps`` steps."""
    step()
    _sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(dev)
        best = min(best, (time.perf_counter() - t) / steps)
    return best


def param_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def matmul_peak_torch(n: int, dtype: str = "float32", dev: str | None = None) -> float:
    """FLOP/s of a square ``n x n`` matmul, best of 3 (torch's own default matmul precision)."""
    import torch
    dev = dev or device()
    match_jax_matmul_precision(dev)
    dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a = torch.ones(n, n, dtype=dt, device=dev)
    b = torch.ones(n, n, dtype=dt, device=dev)
    a @ b
    _sync(dev)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


# ---------------------------------------------------------------------------- ResNet-50
def bench_torch(batch_size: int, steps: int, repeats: int) -> float:
    """Seconds per torchvision ResNet-50 training step (fp32, SGD-momentum, label smoothing)."""
    import torch
    import torchvision
    dev = device()
    match_jax_matmul_precision(dev)
    model = torchvision.models.resnet50().to(dev)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(batch_size, 3, 224, 224, device=dev)
    y = torch.randint(0, 1000, (batch_size,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return time_steps(step, steps, repeats, dev)


# ---------------------------------------------------------------------------- Transformer
def transformer_model(vocab_size: int, d_model: int, num_heads: int, num_layers: int, d_ff: int,
                      dropout: float, max_len: int, share_embeddings: bool = True):
    """The peer model (a ``torch.nn.Module``: ``model(inputs, targets) -> logits``)."""
    import torch
    from torch import nn

    from mlperf_jax.models.transformer import sinusoidal_positions

    class PeerTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, d_model)
            nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
            self.target_embed = self.embed
            if not share_embeddings:
                self.target_embed = nn.Embedding(vocab_size, d_model)
                nn.init.normal_(self.target_embed.weight, std=d_model ** -0.5)
            with warnings.catch_warnings():  # "enable_nested_tensor ... norm_first": inference only
                warnings.simplefilter("ignore", UserWarning)
                self.core = nn.Transformer(
                    d_model, num_heads, num_layers, num_layers, d_ff, dropout, activation="relu",
                    layer_norm_eps=1e-6, batch_first=True, norm_first=True)
            for m in self.core.modules():  # ours has no attention biases
                if isinstance(m, nn.MultiheadAttention):
                    m.in_proj_bias = None
                    m.out_proj.bias = None
            self.register_buffer("positions",
                                 torch.from_numpy(sinusoidal_positions(max_len, d_model)))
            self.drop = nn.Dropout(dropout)

        def _embed(self, table, ids):
            x = table(ids) * math.sqrt(d_model) * (ids > 0).unsqueeze(-1)
            return self.drop(x + self.positions[: ids.shape[1]])

        def forward(self, inputs, targets):
            dec_in = torch.nn.functional.pad(targets, (1, 0))[:, :-1]  # shift right, 0 in front
            t = targets.shape[1]
            causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=targets.device), 1)
            pad = inputs == 0
            y = self.core(self._embed(self.embed, inputs), self._embed(self.target_embed, dec_in),
                          tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad,
                          tgt_is_causal=True)
            return y @ self.target_embed.weight.t()

    return PeerTransformer()


def transformer_peer(config, batch: dict[str, np.ndarray]):
    """(model, one-step closure, description) for our transformer ``config`` on ``batch``."""
    import torch
    dev = device()
    m = config.model
    model = transformer_model(
        int(config.vocab_size), int(m.d_model), int(m.num_heads), int(m.num_layers), int(m.d_ff),
        float(m.dropout_rate), int(batch["targets"].shape[1]),
        bool(m.get("share_embeddings", True))).to(dev)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4,
                           betas=(float(config.adam_beta1), float(config.adam_beta2)),
                           eps=float(config.adam_epsilon))
    inputs = torch.as_tensor(np.asarray(batch["inputs"]), dtype=torch.long, device=dev)
    targets = torch.as_tensor(np.asarray(batch["targets"]), dtype=torch.long, device=dev)
    ls = float(config.label_smoothing)
    dtype = str(config.get("dtype", "float32"))

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, dtype):
            logits = model(inputs, targets)
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=0,
            label_smoothing=ls)
        loss.backward()
        opt.step()
        return loss

    prec = match_jax_matmul_precision(dev)
    desc = (f"torch.nn.Transformer pre-LN, {dtype}, dropout {float(m.dropout_rate):g}, Adam, "
            f"{dev}, float32 matmul precision {prec!r}")
    return model, step, desc


# ---------------------------------------------------------------------------- NCF
def neumf_model(num_users: int, num_items: int, mf_dim: int, mlp_layer_sizes):
    """NeuMF as the MLPerf v0.5 reference's ``neumf.py`` (its initialisation included)."""
    import torch
    from torch import nn

    sizes = [int(s) for s in mlp_layer_sizes]

    class NeuMF(nn.Module):
        def __init__(self):
            super().__init__()
            self.mf_user_embed = nn.Embedding(num_users, mf_dim)
            self.mf_item_embed = nn.Embedding(num_items, mf_dim)
            self.mlp_user_embed = nn.Embedding(num_users, sizes[0] // 2)
            self.mlp_item_embed = nn.Embedding(num_items, sizes[0] // 2)
            self.mlp = nn.ModuleList(nn.Linear(sizes[i - 1], sizes[i])
                                     for i in range(1, len(sizes)))
            self.final = nn.Linear(sizes[-1] + mf_dim, 1)
            for e in (self.mf_user_embed, self.mf_item_embed, self.mlp_user_embed,
                      self.mlp_item_embed):
                e.weight.data.normal_(0.0, 0.01)
            for layer in self.mlp:  # Glorot uniform
                lim = math.sqrt(6.0 / (layer.in_features + layer.out_features))
                layer.weight.data.uniform_(-lim, lim)
            lim = math.sqrt(3.0 / self.final.in_features)  # LeCun uniform
            self.final.weight.data.uniform_(-lim, lim)

        def forward(self, user, item):
            xmf = self.mf_user_embed(user) * self.mf_item_embed(item)
            x = torch.cat((self.mlp_user_embed(user), self.mlp_item_embed(item)), dim=1)
            for layer in self.mlp:
                x = torch.relu(layer(x))
            return self.final(torch.cat((xmf, x), dim=1)).squeeze(-1)

    return NeuMF()


def ncf_peer(config, batch: dict[str, np.ndarray]):
    """(model, one-step closure, description) for our NCF ``config`` on ``batch``."""
    import torch
    dev = device()
    model = neumf_model(int(config.num_users), int(config.num_items), int(config.mf_dim),
                        config.mlp_layer_sizes).to(dev)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=float(config.learning_rate),
                           betas=(float(config.adam_beta1), float(config.adam_beta2)),
                           eps=float(config.adam_epsilon))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    user = torch.as_tensor(np.asarray(batch["user"]), dtype=torch.long, device=dev)
    item = torch.as_tensor(np.asarray(batch["item"]), dtype=torch.long, device=dev)
    label = torch.as_tensor(np.asarray(batch["label"]), dtype=torch.float32, device=dev)
    dtype = str(config.get("dtype", "float32"))

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, dtype):
            logits = model(user, item)
        loss = loss_fn(logits.float(), label)
        loss.backward()
        opt.step()
        return loss

    prec = match_jax_matmul_precision(dev)
    return model, step, (f"MLPerf v0.5 reference NeuMF, dense embeddings, Adam, {dtype}, {dev}, "
                         f"float32 matmul precision {prec!r}")


PEERS = {"transformer": transformer_peer, "ncf": ncf_peer}
"""Benchmarks whose peer is built from our config and batch (ResNet-50 has ``bench_torch``)."""
