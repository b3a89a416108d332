"""MiniGo: self-play reinforcement learning of Go (``submission_benchmark`` "minigo").

A generation is one epoch of the harness: ``before_epoch`` plays ``games_per_generation`` games of
self-play with the current network and tree search (one compiled program: ``lax.scan`` over moves,
games under ``vmap`` split over the mesh's data axis; ``input_pipelines/go_selfplay.py``), the
positions join a replay window of the newest ``window_generations`` generations on the host (it is
the data state, checkpointed), and the generation trains once over a ``filter_amount`` sample of
that window with random board symmetries. The evaluation is a match of ``eval_games`` games with
alternating colours against the target (a checkpoint of this benchmark, or a fixed player for the
tiny track), off the clock as the rules have it: the driver stops the clock and stamps the match
with the moment the generation finished training. Configs: ``mlperf_jax/configs/minigo.py``.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mlperf_jax.benchmarks.base import Benchmark, DataSource, Program
# imported here, never first inside a trace: pgx builds jax arrays when its modules load
from mlperf_jax.input_pipelines import go_selfplay
from mlperf_jax.input_pipelines.source import DatasetNotFoundError, global_spec

FIXED_PLAYERS = ("random", "greedy")


@functools.lru_cache(maxsize=8)
def _net(board_size: int, conv_width: int, fc_width: int, trunk_layers: int, bn_momentum: float,
         dtype: str):
    from mlperf_jax.models.minigo import DualNet
    return DualNet(board_size, conv_width, fc_width, trunk_layers, bn_momentum,
                   dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)


def _apply_fn(net):
    """``(params, model_state, obs) -> (logits, value)`` in inference mode, for the search."""
    def apply(params, model_state, obs):
        return net.apply({"params": params, **model_state}, obs.astype(jnp.float32), train=False)
    return apply


def symmetries(obs: np.ndarray, policy: np.ndarray, which: np.ndarray):
    """One of the 8 symmetries of the square per position (``which`` in 0..7: 4 rotations, then
    the same after a transpose), applied to the planes ``[P, N, N, C]`` and to the board part of
    the policy ``[P, N*N+1]`` (pass stays last), as MiniGo's training input does."""
    p, n = obs.shape[0], obs.shape[1]
    board = policy[:, :-1].reshape(p, n, n)
    out_o, out_b = obs.copy(), board.copy()
    for s in range(8):
        sel = which == s
        if not sel.any():
            continue
        o, b = obs[sel], board[sel]
        if s >= 4:
            o, b = o.transpose(0, 2, 1, 3), b.transpose(0, 2, 1)
        out_o[sel] = np.rot90(o, s % 4, axes=(1, 2))
        out_b[sel] = np.rot90(b, s % 4, axes=(1, 2))
    return out_o, np.concatenate([out_b.reshape(p, n * n), policy[:, -1:]], axis=1)


class MiniGoBenchmark(Benchmark):
    name = "minigo"
    mlperf_name = "minigo"
    config_module = "mlperf_jax.configs.minigo"
    # training_policies: the training batch, the learning-rate schedule and the self-play games
    # per generation (at least 8192 from v0.7) may change; the target model is the rules' own
    tunable_hparams = frozenset({"global_batch_size", "lr_rates", "lr_boundaries",
                                 "games_per_generation", "eval_batch_size", "dtype"})
    implementation_keys = frozenset({"virtual_losses", "target_model"})
    eval_timed = False

    def reference_config(self, config):
        return self.get_config("v07_19x19" if int(config.board_size) == 19 else "reference")

    def _net(self, config):
        return _net(int(config.board_size), int(config.conv_width), int(config.fc_width),
                    int(config.trunk_layers), float(config.bn_momentum), str(config.dtype))

    def check_config(self, config):
        super().check_config(config)
        if len(config.lr_rates) != len(config.lr_boundaries) + 1:
            raise ValueError("config.lr_rates needs one rate more than config.lr_boundaries")
        if not 0.0 < float(config.filter_amount) <= 1.0:
            raise ValueError("config.filter_amount must be in (0, 1]")

    def init(self, config, rng):
        n = int(config.board_size)
        variables = self._net(config).init(rng, jnp.zeros((1, n, n, 17), jnp.float32))
        return variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(self, config, params, model_state, batch, rng):
        from mlperf_jax.models import minigo
        (logits, value), new_state = self._net(config).apply(
            {"params": params, **model_state}, batch["obs"].astype(jnp.float32), train=True,
            mutable=list(model_state))
        loss, parts = minigo.loss(logits, value, batch["policy"], batch["z"],
                                  jnp.ones_like(batch["z"], bool),
                                  value_cost_weight=float(config.value_cost_weight))
        l2 = float(config.l2_strength) * minigo.l2_penalty(params)
        return loss + l2, (dict(new_state), dict(parts, l2_loss=l2))

    def optimizer(self, config, steps_per_epoch):
        rates = [float(r) for r in config.lr_rates]
        bounds = {int(b): rates[i + 1] / rates[i] for i, b in enumerate(config.lr_boundaries)}
        schedule = optax.piecewise_constant_schedule(rates[0], bounds)
        return optax.sgd(schedule, momentum=float(config.momentum)), schedule

    def hparams_to_log(self, config, steps_per_epoch) -> dict[str, Any]:
        rates = [float(r) for r in config.lr_rates]
        bounds = [int(b) for b in config.lr_boundaries]
        return {
            # ruleset 0.7.0 closed_minigo.yaml
            "train_batch_size": int(config.global_batch_size),
            "lr_rates": rates, "lr_boundaries": bounds,
            "min_selfplay_games_per_generation": int(config.games_per_generation),
            # ruleset 0.6.0 minigo.yaml
            "opt_base_learning_rate": rates,
            "opt_learning_rate_decay_boundary_steps": bounds,
            "virtual_losses": int(config.virtual_losses),
        }

    def epoch_end_lines(self, config, epoch):
        return {"save_model": {"iteration": epoch}}

    def success_lines(self, config, epoch, model_time_s):
        # ruleset 0.6.0: the generation that beat the target, at the time it finished training
        return {"eval_result": (None, {"iteration": epoch, "timestamp": model_time_s})}

    # ------------------------------------------------------------------ self-play
    def programs(self, config):
        apply = _apply_fn(self._net(config))
        g = int(config.games_per_generation)

        def play(params, model_state, keys):
            return go_selfplay.selfplay(
                apply, params, model_state, keys, board_size=int(config.board_size),
                komi=float(config.komi), num_games=g, num_simulations=int(config.num_readouts),
                max_moves=int(config.max_moves),
                dirichlet_fraction=float(config.dirichlet_fraction),
                temperature_moves=int(config.temperature_moves) or None,
                algorithm=str(config.search))

        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), g))
        return {"selfplay": Program(play, (keys,), sharded_args=(0,))}

    # ------------------------------------------------------------------ evaluation
    def _target(self, config):
        t = str(config.target_model)
        if t in FIXED_PLAYERS:
            return t, None, None
        from mlperf_jax import pretrained
        loaded = pretrained.load_orbax(t)
        return "network", _apply_fn(self._net(config)), (loaded.params, loaded.model_state)

    def eval_step(self, config, params, model_state, batch):
        kind_b, apply_b, net_b = self._target(config)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(20191231), i))(batch["game"])
        out = go_selfplay.match_games(
            keys, (params, model_state), net_b, kind_a="network",
            apply_a=_apply_fn(self._net(config)), kind_b=kind_b, apply_b=apply_b,
            board_size=int(config.board_size), komi=float(config.komi),
            num_games=batch["game"].shape[0], num_simulations=int(config.num_readouts),
            max_moves=int(config.max_moves), temperature_moves=0, algorithm=str(config.search))
        # game i's colours come from its index: ours is black in the even-numbered games
        return {"won": (out["reward"] > 0) & batch["mask"], "mask": batch["mask"]}

    def eval_metric(self, config, outputs, context) -> dict[str, float]:
        won = np.concatenate([np.asarray(o["won"]) for o in outputs])
        games = int(np.concatenate([np.asarray(o["mask"]) for o in outputs]).sum())
        return {"win_rate": float(won.sum()) / max(games, 1)}

    # ------------------------------------------------------------------ data
    def data_source(self, config, data_dir, *, seed, process_index, process_count) -> DataSource:
        if process_count != 1:
            raise ValueError("minigo's replay window lives on one host: multi-process runs are "
                             "not supported yet")
        t = str(config.target_model)
        if t not in FIXED_PLAYERS and not t:
            raise DatasetNotFoundError(
                "minigo needs its target model: --config.target_model=PATH (a checkpoint of this "
                "benchmark, e.g. the MLPerf target converted), or 'random'/'greedy' (open "
                "division), or --config=tiny")
        return ReplayWindow(config, seed).source()

    def throughput_units(self, config, batch):
        return "positions", int(config.global_batch_size)

    def fake_train_batch(self, config, rng: np.random.Generator):
        """Random positions: 17 binary planes, a search policy from a Dirichlet over the moves,
        outcomes +-1 (throughput of the train step without self-play)."""
        g, n = int(config.global_batch_size), int(config.board_size)
        return {"obs": rng.random((g, n, n, 17)) < 0.3,
                "policy": rng.dirichlet(np.ones(n * n + 1), g).astype(np.float32),
                "z": rng.choice(np.float32([-1.0, 1.0]), g)}


class ReplayWindow:
    """The newest ``window_generations`` generations of self-play positions, on the host."""

    def __init__(self, config: ml_collections.ConfigDict, seed: int):
        self.config, self.seed = config, seed
        self.gens: list[dict[str, np.ndarray]] = []
        self.played = np.zeros(2, np.float64)   # self-play positions, seconds (this run so far)
        n, a = int(config.board_size), int(config.board_size) ** 2 + 1
        self.shape, self.actions = (n, n, 17), a

    def before_epoch(self, epoch, params, model_state, programs):
        g = int(self.config.games_per_generation)
        keys = jax.random.split(jax.random.key(self.seed * 1_000_003 + epoch), g)
        t = time.perf_counter()
        out = jax.device_get(programs["selfplay"](params, model_state, keys))
        valid = np.asarray(out["valid"])
        self.played += (valid.sum(), time.perf_counter() - t)
        obs = np.asarray(out["obs"])[valid]                       # [P, N, N, 17] bool
        self.gens.append({"obs": np.packbits(obs.reshape(len(obs), -1), axis=1),
                          "policy": np.asarray(out["policy"])[valid].astype(np.float16),
                          "z": np.asarray(out["z"])[valid].astype(np.int8)})
        del self.gens[:-int(self.config.window_generations)]
        return {"actual_selfplay_games_per_generation": g}

    def _size(self) -> int:
        return sum(len(x["z"]) for x in self.gens)

    def epoch_steps(self, epoch: int) -> int:
        n = int(float(self.config.filter_amount) * self._size())
        return max(1, n // int(self.config.global_batch_size))

    def train_epoch(self, epoch: int, skip: int) -> Iterator[dict[str, np.ndarray]]:
        gbs = int(self.config.global_batch_size)
        obs = np.concatenate([x["obs"] for x in self.gens])
        policy = np.concatenate([x["policy"] for x in self.gens])
        z = np.concatenate([x["z"] for x in self.gens])
        steps = self.epoch_steps(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        take = rng.choice(len(z), steps * gbs, replace=steps * gbs > len(z))
        sym = rng.integers(0, 8, steps * gbs)
        bits = int(np.prod(self.shape))
        for s in range(skip, steps):
            idx = take[s * gbs:(s + 1) * gbs]
            o = np.unpackbits(obs[idx], axis=1, count=bits).reshape((gbs,) + self.shape)
            o, p = symmetries(o.astype(bool), policy[idx].astype(np.float32),
                              sym[s * gbs:(s + 1) * gbs])
            yield {"obs": o, "policy": p, "z": z[idx].astype(np.float32)}

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        e, b = int(self.config.eval_games), int(self.config.eval_batch_size)
        for start in range(0, e, b):
            game = np.arange(start, start + b)
            yield {"game": np.where(game < e, game, 0).astype(np.int32), "mask": game < e}

    def get_state(self) -> dict[str, np.ndarray]:
        bits = (int(np.prod(self.shape)) + 7) // 8
        empty = {"obs": np.zeros((0, bits), np.uint8),
                 "policy": np.zeros((0, self.actions), np.float16), "z": np.zeros((0,), np.int8)}
        cat = {k: np.concatenate([empty[k]] + [x[k] for x in self.gens]) for k in empty}
        return dict(cat, counts=np.asarray([len(x["z"]) for x in self.gens], np.int64),
                    played=self.played.copy())

    def set_state(self, state) -> None:
        bounds = np.cumsum([0] + [int(c) for c in np.asarray(state["counts"])])
        self.gens = [{k: np.asarray(state[k])[a:b] for k in ("obs", "policy", "z")}
                     for a, b in zip(bounds[:-1], bounds[1:])]
        if "played" in state:
            self.played = np.asarray(state["played"], np.float64).copy()

    def rates(self) -> dict[str, float]:
        """Self-play positions (moves played) per second of self-play, compile excluded."""
        n, secs = self.played
        return {"self-play positions": float(n / secs)} if secs > 0 else {}

    def source(self) -> DataSource:
        c = self.config
        gbs, e = int(c.global_batch_size), int(c.eval_batch_size)
        train_spec = global_spec({"obs": ((gbs,) + self.shape, np.bool_),
                                  "policy": ((gbs, self.actions), np.float32),
                                  "z": ((gbs,), np.float32)}, 1)
        eval_spec = global_spec({"game": ((e,), np.int32), "mask": ((e,), np.bool_)}, 1)
        return DataSource(
            num_train_samples=gbs, num_eval_samples=int(c.eval_games), steps_per_epoch=1,
            train_epoch=self.train_epoch, eval_batches=self.eval_batches,
            train_spec=train_spec, eval_spec=eval_spec, before_epoch=self.before_epoch,
            epoch_steps=self.epoch_steps, get_state=self.get_state, set_state=self.set_state,
            rates=self.rates,
            synthetic=True, description=f"self-play on {c.board_size}x{c.board_size} Go (pgx)")


BENCHMARK = MiniGoBenchmark()
