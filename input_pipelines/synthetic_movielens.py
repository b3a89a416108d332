"""A learnable synthetic stand-in for MovieLens (the NCF tiny track).

Users and items get latent factors ``U (users x rank)`` and ``V (items x rank)`` and items a
popularity bias ``b``; user u's affinity for item i is ``s[u, i] = sharpness * <U_u, V_i> /
sqrt(rank) + b_i``. Each user interacts with ``k_u`` distinct items drawn without replacement with
probabilities proportional to ``exp(s[u, :])`` (Gumbel top-k), in a random order that serves as the
timestamps. The result goes through exactly the same preprocessing as the real data (leave-one-out,
distinct evaluation negatives, per-epoch training negatives), so batches have the same element
spec as ``movielens``.

Chance level for HR@10 with 999 negatives is 1%; item popularity alone already gives more, and a
model that learns the low-rank structure gets much more (``oracle_hit_rate`` reports the hit rate
of ranking by the true affinities, the ceiling).
"""
from __future__ import annotations

import numpy as np

from mlperf_jax.input_pipelines import movielens


def generate(num_users: int, num_items: int, *, rank: int = 8, mean_interactions: int = 30,
             min_interactions: int = 10, sharpness: float = 3.0, popularity_scale: float = 1.0,
             seed: int = 0):
    """Raw ``(users, items, timestamps, affinity)``: interactions in source order plus the true
    affinity matrix (float32, users x items)."""
    if num_items < 2 * min_interactions:
        raise ValueError("num_items too small for min_interactions")
    rng = np.random.default_rng([seed, 0x53594E])
    u_f = rng.standard_normal((num_users, rank)).astype(np.float32)
    v_f = rng.standard_normal((num_items, rank)).astype(np.float32)
    bias = (popularity_scale * rng.standard_normal(num_items)).astype(np.float32)
    affinity = sharpness * (u_f @ v_f.T) / np.sqrt(rank) + bias[None, :]
    counts = np.clip(rng.poisson(mean_interactions, num_users), min_interactions,
                     num_items // 2)
    gumbel = rng.gumbel(size=affinity.shape).astype(np.float32)
    order = np.argsort(-(affinity + gumbel), axis=1)
    kmax = int(counts.max())
    top = order[:, :kmax]
    take = np.arange(kmax)[None, :] < counts[:, None]
    users = np.repeat(np.arange(num_users), counts)
    items = top[take]
    # random interaction order per user -> timestamps; then shuffle rows into "source order"
    ts = rng.permutation(len(users)).astype(np.int64)
    src = rng.permutation(len(users))
    return users[src], items[src], ts[src], affinity


def make(num_users: int, num_items: int, *, num_eval_negatives: int = 999, data_seed: int = 0,
         **kwargs) -> tuple[movielens.Prepared, np.ndarray]:
    """The preprocessed synthetic dataset and its true affinities (indexed by the new ids)."""
    users, items, ts, affinity = generate(num_users, num_items, seed=data_seed, **kwargs)
    prepared = movielens.prepare_from_raw(users, items, ts, num_eval_negatives=num_eval_negatives,
                                          min_ratings=1, data_seed=data_seed)
    # map the affinity matrix to the re-indexed ids (first appearance in source order)
    uid, _ = movielens.factorize(users)
    iid, _ = movielens.factorize(items)
    u_old = np.empty(prepared.num_users, np.int64)
    u_old[uid] = users
    i_old = np.empty(prepared.num_items, np.int64)
    i_old[iid] = items
    return prepared, affinity[np.ix_(u_old, i_old)]


def oracle_hit_rate(prepared: movielens.Prepared, affinity: np.ndarray, k: int = 10) -> float:
    """HR@k when ranking each user's 1 + n candidates by the true affinity (ties against the
    positive): the ceiling a model can approach."""
    cand = np.concatenate([prepared.test_items[:, None], prepared.eval_negatives], axis=1)
    s = np.take_along_axis(affinity, cand, axis=1)
    rank = (s[:, 1:] >= s[:, :1]).sum(axis=1)
    return float(np.mean(rank < k))
