"""MiniGo self-play and evaluation matches in pure JAX (pgx Go + mctx MuZero search).

Everything is batched over games with ``jax.vmap`` and over moves with one ``jax.lax.scan``; no
Python loop runs per move, and nothing uses ``pmap``. The caller jits :func:`selfplay` (the
network, sizes and counts are static: bind them with ``functools.partial``) and can shard the
games axis over a mesh's ``"data"`` axis by passing per-game keys (``key`` of shape ``[G]``)
sharded with ``jax.sharding``. Every game draws its randomness from its own key only, so a game's
trajectory does not depend on how many other games run beside it nor on how they are sharded.

Network interface
-----------------
``apply_fn(params, model_state, obs) -> (policy_logits [B, N*N+1] float32, value [B] float32)``:
``obs`` is pgx's observation cast to float32, seen from the player to move, and ``value`` is the
expected outcome in [-1, 1] for the player to move.

Features (pgx's observation, ``features_of``)
--------------------------------------------
``[N, N, 17]`` in the AlphaGo Zero / MiniGo layout, always from the point of view of the player to
move: plane ``2*i`` holds the mover's stones and plane ``2*i + 1`` the opponent's stones ``i``
plies ago (``i = 0`` is the current board, ``i = 0..7``; positions before the game start are all
zero). Plane 16 is the colour to move, **pgx's convention: 0 when black is to move and 1 when
white is to move** -- the opposite of AGZ/MiniGo's ``features.py`` (1 for black). A network trained
here only ever sees pgx's convention, so nothing needs flipping; a model imported from MiniGo would
need ``obs[..., 16] = 1 - obs[..., 16]``.

Rules and scoring (pgx ``Go``)
------------------------------
Tromp-Taylor area scoring with komi; a tie goes to white, so every finished game has outcome +-1.
Positional superko: a move that repeats a position loses at once; an illegal move also loses at
once (the search never plays one at the root; inside the tree it is simply a loss). Actions are
``row * N + col`` and ``N*N`` is pass; two consecutive passes end the game. pgx also ends a game
after its move cap; here the cap is ``min(max_moves, 2*N*N)`` (``make_env``), so a game cut by
``max_moves`` is scored by pgx's own Tromp-Taylor count at the cut, and the search knows the
horizon. Every game therefore ends within the ``max_moves`` plies of the scan.

Conventions of the returned arrays
----------------------------------
``player`` is pgx's ``current_player`` (a player id 0/1; pgx assigns ids to colours at random in
``init``), ``color`` the colour to move (0 black, 1 white). ``outcome`` is from **black's** point of
view (+1 black won, -1 white won). ``z`` is the training target: the final outcome from the point
of view of the player to move at that position (+1 win, -1 loss), 0 where ``valid`` is False.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import mctx
import numpy as np
from pgx._src.games.go import _count_scores
from pgx.go import Go

ApplyFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, jax.Array]]


# ----------------------------------------------------------------------------------------------
# Environment and features
# ----------------------------------------------------------------------------------------------

def make_env(board_size: int, komi: float, max_moves: int | None = None) -> Go:
    """pgx Go with the move cap ``min(max_moves, 2*N*N)`` (pgx's default cap is ``2*N*N``)."""
    cap = 2 * board_size * board_size
    if max_moves is not None:
        cap = min(int(max_moves), cap)
    return Go(size=board_size, komi=float(komi), history_length=8, max_terminal_steps=cap)


def features_of(state) -> jax.Array:
    """The network input for ``state`` (single or batched): pgx's 17-plane observation as float32.
    See the module docstring for the planes and pgx's colour-plane convention."""
    return state.observation.astype(jnp.float32)


def default_dirichlet_alpha(board_size: int) -> float:
    """MiniGo scales AlphaGo Zero's 0.03 on 19x19 with the board: ``0.03 * 361 / N**2``."""
    return 0.03 * 361 / board_size ** 2


def default_temperature_moves(board_size: int) -> int:
    """MiniGo's ``softpick_move_cutoff = (N * N // 12) // 2 * 2`` (6 on 9x9, 2 on 5x5)."""
    return (board_size * board_size // 12) // 2 * 2


def _to_game_keys(key, num_games: int) -> jax.Array:
    """A typed key array ``[num_games]``: from one key (split) or from per-game keys (as is)."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.random.split(key, num_games)
    if key.shape != (num_games,):
        raise ValueError(f"per-game keys must have shape ({num_games},), got {key.shape}")
    return key


def _masked_logits(logits, legal):
    logits = logits.astype(jnp.float32)
    return jnp.where(legal, logits, jnp.finfo(jnp.float32).min)


def _pick_action(key, weights, sample):
    """Sample from the visit distribution (``sample``) or take its argmax, ties broken at random
    (MiniGo's softpick / argmax). Zero-weight (illegal) actions are never chosen."""
    k1, k2 = jax.random.split(key)
    sampled = jax.random.categorical(k1, jnp.log(weights))  # log(0) = -inf: never sampled
    best = weights >= weights.max()
    tie = jnp.argmax(jnp.where(best, jax.random.uniform(k2, weights.shape), -1.0))
    return jnp.where(sample, sampled, tie).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------

def _recurrent_fn(env: Go, apply_fn: ApplyFn):
    def recurrent_fn(net, key, action, state):
        del key
        params, model_state = net
        mover = state.current_player
        state = jax.vmap(env.step)(state, action)
        logits, value = apply_fn(params, model_state, features_of(state))
        reward = state.rewards[jnp.arange(action.shape[0]), mover]  # the mover's reward
        value = jnp.where(state.terminated, 0.0, value.astype(jnp.float32))
        discount = jnp.where(state.terminated, 0.0, -1.0)  # negamax: the value flips every ply
        out = mctx.RecurrentFnOutput(reward=reward, discount=discount,
                                     prior_logits=_masked_logits(logits, state.legal_action_mask),
                                     value=value)
        return out, state
    return recurrent_fn


def search(apply_fn: ApplyFn, params, model_state, keys, state, *, env: Go, num_simulations: int,
           dirichlet_fraction: float = 0.0, dirichlet_alpha: float | None = None,
           algorithm: str = "muzero", gumbel_scale: float = 1.0):
    """MuZero-style MCTS (``mctx.muzero_policy``, PUCT as AlphaGo Zero/MiniGo) from every state of
    the batch ``state`` (games axis leading), one independent search per game with its own key
    (``keys`` typed, ``[G]``). Returns ``(visit distribution [G, N*N+1], root value [G])``; the
    visit distribution is mctx's ``action_weights`` (zero on illegal moves)."""
    size = env._game.size
    if dirichlet_alpha is None:
        dirichlet_alpha = default_dirichlet_alpha(size)
    rec = _recurrent_fn(env, apply_fn)
    net = (params, model_state)

    def one(key, st):  # st: one game with a leading batch axis of 1
        logits, value = apply_fn(params, model_state, features_of(st))
        root = mctx.RootFnOutput(prior_logits=_masked_logits(logits, st.legal_action_mask),
                                 value=value.astype(jnp.float32), embedding=st)
        if algorithm == "gumbel":  # Gumbel MuZero: policy improvement with few simulations
            out = mctx.gumbel_muzero_policy(net, key, root, rec, num_simulations=num_simulations,
                                            invalid_actions=~st.legal_action_mask,
                                            qtransform=mctx.qtransform_completed_by_mix_value,
                                            gumbel_scale=gumbel_scale)
        else:
            out = mctx.muzero_policy(net, key, root, rec, num_simulations=num_simulations,
                                     invalid_actions=~st.legal_action_mask,
                                     dirichlet_fraction=dirichlet_fraction,
                                     dirichlet_alpha=dirichlet_alpha)
        return out.action_weights[0], out.search_tree.summary().value[0]

    st1 = jax.tree_util.tree_map(lambda x: x[:, None], state)
    return jax.vmap(one)(keys, st1)


# ----------------------------------------------------------------------------------------------
# Self-play
# ----------------------------------------------------------------------------------------------

def selfplay(apply_fn: ApplyFn, params, model_state, key, *, board_size: int, komi: float,
             num_games: int, num_simulations: int, max_moves: int,
             dirichlet_alpha: float | None = None, dirichlet_fraction: float = 0.25,
             temperature_moves: int | None = None, algorithm: str = "muzero") -> dict:
    """Play ``num_games`` self-play games (one per slot, no auto-reset) for ``max_moves`` plies.

    ``key``: one key, or per-game keys of shape ``[num_games]`` (typed or raw) -- pass those,
    sharded over the data axis, to shard the games. ``dirichlet_alpha`` defaults to
    ``0.03 * 361 / N**2`` and ``temperature_moves`` to MiniGo's softpick cutoff: moves
    ``t < temperature_moves`` are sampled from the visit distribution, later ones are its argmax
    (ties at random). No resignation. Meant to be jitted by the caller.

    Returns per position (``[T = max_moves, G, ...]``): ``obs`` bool ``[T, G, N, N, 17]``, ``policy``
    float32 ``[T, G, N*N+1]`` (visit distribution), ``action`` int32 (the move played), ``player``
    int32 (pgx ``current_player``), ``color`` int32 (0 black / 1 white to move), ``valid`` bool (the
    position happened before the game ended), ``root_value`` float32 (search value for the mover),
    ``z`` float32 (final outcome for the player to move, 0 where not valid); per game (``[G]``):
    ``outcome`` float32 (+1 black won, -1 white won), ``length`` int32 (plies played).
    """
    env = make_env(board_size, komi, max_moves)
    if dirichlet_alpha is None:
        dirichlet_alpha = default_dirichlet_alpha(board_size)
    if temperature_moves is None:
        temperature_moves = default_temperature_moves(board_size)
    keys = _to_game_keys(key, num_games)
    ks = jax.vmap(lambda k: jax.random.split(k, max_moves + 1))(keys)  # [G, T+1]
    state = jax.vmap(env.init)(ks[:, 0])
    black_player = state.current_player  # ply 0 is black's
    step_keys = jnp.swapaxes(ks[:, 1:], 0, 1)  # [T, G]

    def step(carry, xs):
        state, ret = carry
        t, key_t = xs
        kk = jax.vmap(jax.random.split)(key_t)
        weights, root_value = search(apply_fn, params, model_state, kk[:, 0], state, env=env,
                                     num_simulations=num_simulations, algorithm=algorithm,
                                     dirichlet_fraction=dirichlet_fraction,
                                     dirichlet_alpha=dirichlet_alpha)
        action = jax.vmap(_pick_action, in_axes=(0, 0, None))(kk[:, 1], weights,
                                                            t < temperature_moves)
        out = dict(obs=state.observation, policy=weights.astype(jnp.float32), action=action,
                   player=state.current_player.astype(jnp.int32),
                   color=state.observation[:, 0, 0, -1].astype(jnp.int32),
                   valid=~state.terminated, root_value=root_value.astype(jnp.float32))
        state = jax.vmap(env.step)(state, action)
        return (state, ret + state.rewards), out

    ret0 = jnp.zeros((num_games, 2), jnp.float32)
    (state, ret), out = jax.lax.scan(step, (state, ret0), (jnp.arange(max_moves), step_keys))
    g = jnp.arange(num_games)
    out["outcome"] = ret[g, black_player]
    out["z"] = jnp.where(out["valid"], ret[g[None, :], out["player"]], 0.0).astype(jnp.float32)
    out["length"] = out["valid"].sum(0).astype(jnp.int32)
    return out


# ----------------------------------------------------------------------------------------------
# Fixed players and matches
# ----------------------------------------------------------------------------------------------

def _random_action(key, state):
    """Uniform over the legal moves (pass included)."""
    return jax.random.categorical(key, jnp.where(state.legal_action_mask, 0.0, -jnp.inf)
                                  ).astype(jnp.int32)


def _greedy_action(env: Go, key, state):
    """One ply: the legal move maximising the mover's Tromp-Taylor area margin (own area minus the
    opponent's; komi is a constant and left out) right after it, ties at random. A move that ends
    the game (the second pass, a superko repetition) scores by its real result instead: a win
    beats and a loss is below every non-final move."""
    size = env._game.size
    num_actions = size * size + 1
    mover = state.current_player
    color = state.observation[0, 0, -1].astype(jnp.int32)  # pgx: 0 black, 1 white
    children = jax.vmap(env.step, in_axes=(None, 0))(state, jnp.arange(num_actions))
    scores = jax.vmap(lambda x: _count_scores(x, size))(children._x)  # [A, (black, white)]
    margin = (scores[:, color] - scores[:, 1 - color]).astype(jnp.float32)
    final = children.rewards[:, mover] * (4.0 * size * size)
    value = jnp.where(children.terminated, final, margin)
    value = jnp.where(state.legal_action_mask, value, -jnp.inf)
    best = value >= value.max()
    return jnp.argmax(jnp.where(best, jax.random.uniform(key, value.shape), -1.0)).astype(jnp.int32)


def _act(kind, apply_fn, net, keys, state, t, *, env, num_simulations, temperature_moves,
         algorithm="muzero"):
    if kind == "random":
        return jax.vmap(_random_action)(keys, state)
    if kind == "greedy":
        return jax.vmap(functools.partial(_greedy_action, env))(keys, state)
    if kind == "network":
        kk = jax.vmap(jax.random.split)(keys)
        weights, _ = search(apply_fn, net[0], net[1], kk[:, 0], state, env=env,
                            algorithm=algorithm, gumbel_scale=0.0,
                            num_simulations=num_simulations, dirichlet_fraction=0.0)
        return jax.vmap(_pick_action, in_axes=(0, 0, None))(kk[:, 1], weights,
                                                          t < temperature_moves)
    raise ValueError(f"unknown player kind {kind!r}")


def match_games(key, net_a, net_b, *, kind_a, apply_a, kind_b, apply_b, board_size, komi,
                num_games, num_simulations, max_moves, temperature_moves, algorithm="muzero"):
    """Traceable core of a match (jit it, or call it inside a jitted step): ``num_games`` games of
    side a against side b, a black in the even-numbered games; per game ``reward`` (a's final
    reward), ``a_black``, ``length`` and ``terminated``."""
    env = make_env(board_size, komi, max_moves)
    keys = _to_game_keys(key, num_games)
    ks = jax.vmap(lambda k: jax.random.split(k, max_moves + 1))(keys)
    state = jax.vmap(env.init)(ks[:, 0])
    a_black = jnp.arange(num_games) % 2 == 0
    black_player = state.current_player
    a_player = jnp.where(a_black, black_player, 1 - black_player)
    cfg = dict(env=env, num_simulations=num_simulations, temperature_moves=temperature_moves,
               algorithm=algorithm)

    def step(carry, xs):
        state, ret = carry
        t, key_t = xs
        kk = jax.vmap(jax.random.split)(key_t)
        act_a = _act(kind_a, apply_a, net_a, kk[:, 0], state, t, **cfg)
        act_b = _act(kind_b, apply_b, net_b, kk[:, 1], state, t, **cfg)
        action = jnp.where(state.current_player == a_player, act_a, act_b)
        live = ~state.terminated
        state = jax.vmap(env.step)(state, action)
        return (state, ret + state.rewards), live

    ret0 = jnp.zeros((num_games, 2), jnp.float32)
    (state, ret), live = jax.lax.scan(step, (state, ret0),
                                      (jnp.arange(max_moves), jnp.swapaxes(ks[:, 1:], 0, 1)))
    reward_a = ret[jnp.arange(num_games), a_player]
    return dict(reward=reward_a, a_black=a_black, length=live.sum(0),
                terminated=state.terminated)


@functools.lru_cache(maxsize=32)
def _compiled_match(**static):
    return jax.jit(functools.partial(match_games, **static))


def _player_spec(p):
    if isinstance(p, str):
        if p not in ("random", "greedy"):
            raise ValueError(f"unknown player {p!r}: 'random', 'greedy' or ('network', ...)")
        return p, None, None
    kind, fn, params, model_state = p
    if kind != "network":
        raise ValueError(f"unknown player {p!r}")
    return "network", fn, (params, model_state)


def play_match(player, opponent, key, *, board_size: int, komi: float, num_games: int,
               num_simulations: int, max_moves: int, temperature_moves: int = 0) -> dict:
    """``num_games`` games of ``player`` against ``opponent`` with alternating colours (``player``
    is black in the even-numbered games). Each side is ``"random"``, ``"greedy"`` or
    ``("network", apply_fn, params, model_state)`` (search without noise, argmax of the visits
    with ties at random; sampled from the visits for the first ``temperature_moves`` plies).
    One jitted ``lax.scan`` over moves, cached per configuration. Returns python numbers:
    ``wins`` (``player``'s), ``games``, ``win_rate``, ``black_games`` (games ``player`` had black),
    ``black_wins``, ``white_wins`` and ``mean_length`` (plies)."""
    kind_a, apply_a, net_a = _player_spec(player)
    kind_b, apply_b, net_b = _player_spec(opponent)
    fn = _compiled_match(kind_a=kind_a, apply_a=apply_a, kind_b=kind_b, apply_b=apply_b,
                         board_size=int(board_size), komi=float(komi), num_games=int(num_games),
                         num_simulations=int(num_simulations), max_moves=int(max_moves),
                         temperature_moves=int(temperature_moves))
    out = jax.device_get(fn(key, net_a, net_b))
    won = np.asarray(out["reward"]) > 0
    a_black = np.asarray(out["a_black"])
    if not np.asarray(out["terminated"]).all():  # cannot happen: the env's cap <= max_moves
        raise RuntimeError("a match game did not finish")
    wins = int(won.sum())
    return dict(wins=wins, games=int(num_games), win_rate=wins / num_games,
                black_games=int(a_black.sum()), black_wins=int((won & a_black).sum()),
                white_wins=int((won & ~a_black).sum()),
                mean_length=float(np.mean(out["length"])))


def match(apply_fn: ApplyFn, params, model_state, key, *, opponent, board_size: int,
          komi: float, num_games: int, num_simulations: int, max_moves: int,
          temperature_moves: int = 0) -> dict:
    """Our network (same search as self-play, no noise, argmax of visits) against ``opponent``:
    ``"random"``, ``"greedy"`` or ``("network", apply_fn2, params2, model_state2)``. Game ``i``:
    we are black when ``i`` is even. See :func:`play_match` for the returned dict."""
    return play_match(("network", apply_fn, params, model_state), opponent, key,
                      board_size=board_size, komi=komi, num_games=num_games,
                      num_simulations=num_simulations, max_moves=max_moves,
                      temperature_moves=temperature_moves)
