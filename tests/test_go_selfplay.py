"""MiniGo self-play and matches (input_pipelines/go_selfplay.py) against independent oracles.

Oracles: an exhaustive negamax over pgx states (the rules engine, not our search), numpy
reconstructions of the 17 feature planes and of Tromp-Taylor area scoring, and a move-by-move
replay of every self-play game with pgx.
"""
import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pgx.go import Go

from conftest import run_python
from mlperf_jax.input_pipelines import go_selfplay as gs

# One small self-play configuration shared by several tests (one compilation).
N3 = 3
CFG = dict(board_size=N3, komi=0.5, num_games=8, num_simulations=8, max_moves=12)


def toy_net(params, model_state, obs):
    """A hand-written stand-in network: a fixed pass logit and a material value (own minus
    opponent stones). Sums of 0/1 planes are exact, so results cannot depend on sharding."""
    del model_state
    b, n = obs.shape[0], obs.shape[1]
    logits = jnp.zeros((b, n * n + 1), jnp.float32).at[:, -1].set(params["pass"])
    d = obs[..., 0].sum((1, 2)) - obs[..., 1].sum((1, 2))
    return logits, jnp.tanh(params["w"] * d)


def uniform_net(params, model_state, obs):
    del params, model_state
    n = obs.shape[1]
    return jnp.zeros((obs.shape[0], n * n + 1)), jnp.zeros((obs.shape[0],))


@functools.lru_cache(maxsize=None)
def _selfplay_fn():
    return jax.jit(functools.partial(gs.selfplay, toy_net, **CFG))


def _params(pass_logit, w):
    return {"pass": jnp.float32(pass_logit), "w": jnp.float32(w)}


# ----------------------------------------------------------------------------------------------
# Search vs an exhaustive negamax
# ----------------------------------------------------------------------------------------------

def _negamax_values(step, s):
    """Exact game values (for the mover at ``s``) of every legal move, by exhaustive recursion over
    pgx states. The env's move cap makes the tree finite."""
    mover = int(s.current_player)
    vals = {}
    for a in np.flatnonzero(np.asarray(s.legal_action_mask)):
        c = step(s, jnp.int32(a))
        if bool(c.terminated):
            vals[int(a)] = float(c.rewards[mover])
        else:
            vals[int(a)] = -max(_negamax_values(step, c).values())
    return vals


# 3x3, komi 0.5, the game capped 3 plies after the sequence: the mover has exactly one winning
# move (found offline, re-derived here by the negamax).
FORCED = [[8, 6, 7], [7, 5, 1], [5, 0, 7], [1, 7, 5]]


def test_search_finds_the_forced_win_of_an_exhaustive_negamax():
    env = Go(size=3, komi=0.5, max_terminal_steps=3 + 3)
    step = jax.jit(env.step)
    states, best = [], []
    for seq in FORCED:
        s = env.init(jax.random.key(0))
        for a in seq:
            s = step(s, jnp.int32(a))
        vals = _negamax_values(step, s)
        winners = [a for a, v in vals.items() if v > 0]
        assert len(winners) == 1 and len(vals) >= 4, (seq, vals)
        states.append(s)
        best.append(winners[0])
    batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *states)
    keys = jax.random.split(jax.random.key(1), len(FORCED))
    weights, value = jax.jit(functools.partial(gs.search, uniform_net, None, None, env=env,
                                               num_simulations=128))(keys, batch)
    weights = np.asarray(weights)
    assert np.argmax(weights, axis=1).tolist() == best
    assert np.all(np.asarray(value) > 0)  # the mover wins: the root value says so
    legal = np.asarray(batch.legal_action_mask)
    assert np.all(weights[~legal] == 0) and np.allclose(weights.sum(1), 1)


# ----------------------------------------------------------------------------------------------
# Feature planes
# ----------------------------------------------------------------------------------------------

def test_feature_planes_of_a_known_sequence():
    n = 5
    env = Go(size=n, komi=0.5)
    step = jax.jit(env.step)
    moves = [12, 6, 0, 25, 18]  # B c3, W b2, B a1, W pass, B d4  -> white to move
    s = env.init(jax.random.key(0))
    boards = []  # numpy: +1 black, -1 white, after each ply
    board = np.zeros(n * n, np.int32)
    for i, a in enumerate(moves):
        s = step(s, jnp.int32(a))
        if a < n * n:
            board = board.copy()
            board[a] = 1 if i % 2 == 0 else -1
        boards.append(board)
    f = np.asarray(gs.features_of(s))
    assert f.dtype == np.float32 and f.shape == (n, n, 17)
    me = -1  # white to move
    for i in range(8):
        b = boards[-1 - i] if i < len(boards) else np.zeros(n * n, np.int32)
        np.testing.assert_array_equal(f[..., 2 * i].reshape(-1), b == me, err_msg=f"own t-{i}")
        np.testing.assert_array_equal(f[..., 2 * i + 1].reshape(-1), b == -me,
                                      err_msg=f"opp t-{i}")
    assert np.all(f[..., 16] == 1)  # pgx: 1 = white to move (AGZ would say 0)
    # spot checks: white's b2 (index 6, ply 2 of 5) is "own" at history depths 0..3, not at 4
    assert f[1, 1, 0] == f[1, 1, 2] == f[1, 1, 4] == f[1, 1, 6] == 1 and f[1, 1, 8] == 0
    assert f[3, 3, 1] == 1 and f[3, 3, 3] == 0  # black's d4 is the newest stone
    s = step(s, jnp.int32(1))  # white plays; black to move
    assert np.all(np.asarray(gs.features_of(s))[..., 16] == 0)


# ----------------------------------------------------------------------------------------------
# Self-play: replay every game with pgx
# ----------------------------------------------------------------------------------------------

def _tromp_taylor(board, n):
    """Area scores (black, white) of a board (+1 black, -1 white, 0 empty), numpy flood fill."""
    area = {1: int((board == 1).sum()), -1: int((board == -1).sum())}
    seen = np.zeros(n * n, bool)
    for p in range(n * n):
        if board[p] != 0 or seen[p]:
            continue
        stack, region, touch = [p], [], set()
        seen[p] = True
        while stack:
            q = stack.pop()
            region.append(q)
            r, c = divmod(q, n)
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < n and 0 <= cc < n:
                    k = rr * n + cc
                    if board[k] == 0 and not seen[k]:
                        seen[k] = True
                        stack.append(k)
                    elif board[k] != 0:
                        touch.add(int(board[k]))
        if len(touch) == 1:
            area[touch.pop()] += len(region)
    return area[1], area[-1]


@pytest.fixture(scope="module")
def selfplay_out():
    out = _selfplay_fn()(_params(0.0, 0.5), None, jax.random.key(7))
    return jax.tree_util.tree_map(np.asarray, out)


def test_selfplay_shapes(selfplay_out):
    o, t, g, n = selfplay_out, CFG["max_moves"], CFG["num_games"], N3
    assert o["obs"].shape == (t, g, n, n, 17) and o["obs"].dtype == bool
    assert o["policy"].shape == (t, g, n * n + 1) and o["policy"].dtype == np.float32
    for k in ("action", "player", "color", "valid", "z", "root_value"):
        assert o[k].shape == (t, g), k
    assert o["outcome"].shape == (g,) and o["outcome"].dtype == np.float32
    assert o["z"].dtype == np.float32


def test_selfplay_games_are_legal_and_targets_match_a_replay(selfplay_out):
    o, n, komi = selfplay_out, N3, CFG["komi"]
    cap = CFG["max_moves"]  # < pgx's 2*N*N = 18: games are cut and scored at 12 plies
    env = Go(size=n, komi=komi, max_terminal_steps=cap)
    step = jax.jit(env.step)
    lengths = []
    for g in range(CFG["num_games"]):
        valid = o["valid"][:, g]
        length = int(valid.sum())
        assert length >= 2 and valid[:length].all() and not valid[length:].any()
        assert o["length"][g] == length
        s = env.init(jax.random.key(0))
        boards = []
        for t in range(length):
            a = int(o["action"][t, g])
            assert not bool(s.terminated)
            assert bool(s.legal_action_mask[a]), (g, t, a)  # played a legal move
            np.testing.assert_array_equal(o["obs"][t, g], np.asarray(s.observation))
            assert o["color"][t, g] == t % 2
            if t:
                assert o["player"][t, g] != o["player"][t - 1, g]
            pol = o["policy"][t, g]
            assert np.isclose(pol.sum(), 1) and np.all(pol[~np.asarray(s.legal_action_mask)] == 0)
            if t >= gs.default_temperature_moves(n):  # argmax after the softpick moves
                assert pol[a] == pol.max()
            s = step(s, jnp.int32(a))
            obs = np.asarray(s.observation)
            sign = 1 if obs[0, 0, 16] == 0 else -1  # +1 when black is the one to move
            boards.append(sign * (obs[..., 0].astype(int) - obs[..., 1].astype(int)).reshape(-1))
        assert bool(s.terminated)  # valid stops exactly at the game's end
        acts = o["action"][:length, g]
        two_passes = length >= 2 and acts[-1] == n * n and acts[-2] == n * n
        # no earlier double pass (it would have ended the game)
        assert not any(acts[t] == n * n and acts[t + 1] == n * n for t in range(length - 2))
        last_mover_black = (length - 1) % 2 == 0
        superko = acts[-1] != n * n and any(np.array_equal(boards[-1], b) for b in boards[:-1])
        if superko:
            black_wins = not last_mover_black
        else:
            assert two_passes or length == cap
            black, white = _tromp_taylor(boards[-1], n)
            black_wins = black - komi > white
        outcome = 1.0 if black_wins else -1.0
        assert o["outcome"][g] == outcome, g
        mover_is_black = np.arange(length) % 2 == 0
        np.testing.assert_array_equal(o["z"][:length, g], np.where(mover_is_black, outcome,
                                                                   -outcome))
        assert np.all(o["z"][length:, g] == 0)
        lengths.append(length)
    assert len(set(lengths)) > 1 or lengths[0] == cap
    # both colours win somewhere in a handful of games (z is not trivially one sign per colour)
    assert set(o["outcome"].tolist()) <= {-1.0, 1.0}


def test_value_sign_when_the_player_to_move_has_lost():
    # A network that always wants to pass: black passes, white passes and wins by komi 0.5.
    o = jax.tree_util.tree_map(np.asarray, _selfplay_fn()(_params(30.0, 0.0), None,
                                                          jax.random.key(0)))
    n = N3
    assert np.all(o["action"][:2] == n * n)
    assert np.all(o["valid"][:2]) and not o["valid"][2:].any()
    assert np.all(o["outcome"] == -1)  # black's point of view: black lost
    assert np.all(o["z"][0] == -1) and np.all(o["z"][1] == 1) and np.all(o["z"][2:] == 0)
    # the search's value is for the player to move: black (passing loses) < 0 < white
    assert np.all(o["root_value"][0] < 0) and np.all(o["root_value"][1] > 0)


# ----------------------------------------------------------------------------------------------
# Matches
# ----------------------------------------------------------------------------------------------

def test_match_colours_and_search_beats_random():
    kw = dict(board_size=5, komi=0.5, max_moves=50)
    rr = gs.play_match("random", "random", jax.random.key(0), num_games=200, num_simulations=1,
                       **kw)
    assert rr["black_games"] == 100 and rr["games"] == 200
    assert 0.35 < rr["win_rate"] < 0.65
    m = gs.match(toy_net, _params(0.0, 0.25), None, jax.random.key(1), opponent="random",
                 num_games=24, num_simulations=16, **kw)
    assert m["games"] == 24 and m["black_games"] == 12
    assert m["wins"] == m["black_wins"] + m["white_wins"]
    assert m["win_rate"] >= 0.75 and m["win_rate"] > rr["win_rate"] + 0.15, (m, rr)


def test_match_against_a_network_target():
    # The target checkpoint always passes; we never do. As black we own the whole board once we
    # have a stone (area 9 > 0.5); as white only our stones are on the board: 4 wins of 4.
    m = gs.match(toy_net, _params(-30.0, 0.25), None, jax.random.key(2),
                 opponent=("network", toy_net, _params(30.0, 0.0), None),
                 board_size=3, komi=0.5, num_games=4, num_simulations=4, max_moves=8)
    assert m["games"] == 4 and m["black_games"] == 2 and m["wins"] == 4, m


# ----------------------------------------------------------------------------------------------
# 8 fake devices == 1 device
# ----------------------------------------------------------------------------------------------

_SHARD_SCRIPT = textwrap.dedent("""
    import functools, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    sys.path.insert(0, "tests")
    from test_go_selfplay import toy_net, CFG, _params
    from mlperf_jax.input_pipelines import go_selfplay as gs
    assert len(jax.devices()) == 8
    fn = jax.jit(functools.partial(gs.selfplay, toy_net, **CFG))
    keys = jax.random.split(jax.random.key(11), CFG["num_games"])
    params = _params(0.0, 0.5)
    one = jax.device_get(fn(jax.device_put(params, jax.devices()[0]), None,
                            jax.device_put(keys, jax.devices()[0])))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(keys, NamedSharding(mesh, P("data")))
    rep = jax.device_put(params, NamedSharding(mesh, P()))
    out = fn(rep, None, sharded)
    many = jax.device_get(out)
    for k in one:
        np.testing.assert_array_equal(one[k], many[k], err_msg=k)
    assert len(out["obs"].sharding.device_set) == 8
    print("IDENTICAL", int(one["valid"].sum()))
""")


def test_selfplay_sharded_over_8_devices_equals_one_device():
    proc = run_python(["-c", _SHARD_SCRIPT], devices=8, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IDENTICAL" in proc.stdout
