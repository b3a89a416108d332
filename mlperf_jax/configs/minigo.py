"""MiniGo: reinforcement learning of Go by self-play, to a model that beats a fixed target.

Variants:

- ``reference``: the v0.6 9x9 reference (mlcommons/training ``reinforcement/tensorflow/minigo/
  ml_perf`` at 1c6ae725; flags files ``ml_perf/flags/9/*.flags``; values and sources in
  docs/specs/minigo_quant_loadgen05.md section 1.2). Its target model is a checkpoint the user
  names (``--config.target_model=PATH``).
- ``v07_19x19``: the later rules' 19x19 board (ruleset 0.7.0 ``closed_minigo.yaml``: at least
  8,192 self-play games per generation), every value from the v0.7 reference's flags files
  (mlcommons/training at b58c18e5, ``ml_perf/flags/19/*.flags``; each named where it is set).
- ``tiny``: a 5x5 board with komi 0.5, a small tower and few readouts, against a target that needs
  no download (a fixed player); open division, because that target is weaker than a real model.
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

VARIANTS = ("reference", "v07_19x19", "tiny")


def get_config(variant: str = "reference") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "selfplay"
    c.division = "closed"
    c.target = placeholder(float)     # None: the round's target (win rate 0.5 against the target)
    c.target_metric = "win_rate"
    c.num_runs = 10                   # training_rules: 10 runs for MiniGo
    c.dtype = "float32"
    # game (architecture.flags; pgx's Go: Tromp-Taylor area scoring, superko)
    c.board_size = 9
    c.komi = 7.5
    c.max_moves = 162                 # pgx's cap: 2 x board points
    # network (architecture.flags: --conv_width=32 --fc_width=64 --trunk_layers=9
    # --value_cost_weight=0.25; dual_net.py l2_strength 1e-4)
    c.conv_width = 32
    c.fc_width = 64
    c.trunk_layers = 9
    c.value_cost_weight = 0.25
    c.l2_strength = 1e-4
    c.bn_momentum = 0.997             # dual_net.py batch_normalization(momentum=.997)
    # self-play (selfplay.flags: --num_readouts=240 --num_games=4096 --virtual_losses=8; MiniGo's
    # Dirichlet noise at the root, alpha 0.03 x 361 / N^2, fraction 0.25; softpick: sample from
    # the visit counts for the first moves, then the most visited)
    c.num_readouts = 240
    c.games_per_generation = 4096
    c.virtual_losses = 8              # logged: mctx searches a batch of games without them
    c.dirichlet_fraction = 0.25
    c.temperature_moves = 0           # 0: MiniGo's default (N^2 / 12, rounded down to even)
    c.search = "muzero"               # PUCT as MiniGo; "gumbel": Gumbel MuZero (few readouts)
    # training (rl_loop.flags --window_size=10; train.flags batch 4096, lr 0.16/0.016/0.0016 at
    # steps 25000/37500, momentum 0.9, --filter_amount=0.5): each generation trains once over a
    # filter_amount sample of the positions of the newest window_generations generations
    c.window_generations = 10
    c.filter_amount = 0.5
    c.global_batch_size = 4096
    c.lr_rates = (0.16, 0.016, 0.0016)
    c.lr_boundaries = (25000, 37500)
    c.momentum = 0.9
    c.num_epochs = 50                 # generations (rl_loop.flags --iterations=50)
    # evaluation (eval.flags --num_games=100; eval_models.py: win rate >= 0.50), off the clock
    c.eval_games = 100
    c.eval_batch_size = 100
    c.eval_every_epochs = 1
    c.eval_offset_epochs = 0
    c.target_model = ""               # a checkpoint of this benchmark (reference: required)
    if variant == "reference":
        pass
    elif variant == "v07_19x19":
        c.board_size = 19
        c.max_moves = 722
        # ml_perf/flags/19/*.flags of mlcommons/training at b58c18e5 (the v0.7 reference):
        # architecture.flags --conv_width=64 --fc_width=64 --trunk_layers=6 --value_cost_weight=0.5
        c.conv_width = 64
        c.fc_width = 64
        c.trunk_layers = 6
        c.value_cost_weight = 0.5
        # selfplay.flags --num_readouts=800 --virtual_losses=4 --noise_mix=0.3 (its
        # --fastplay_frequency=0.75 --fastplay_readouts=80 playout cap is not modelled: every move
        # gets the full search); eval.flags plays its matches with 100 readouts, here the same
        # search as self-play
        c.num_readouts = 800
        c.virtual_losses = 4
        c.dirichlet_fraction = 0.3
        # rl_loop.flags / train_loop.flags --min_games_per_iteration=8192 (== closed_minigo.yaml's
        # 8192) --window_size=5 --train_filter=0.3; train_loop.flags --iterations=100
        c.games_per_generation = 8192
        c.window_generations = 5
        c.filter_amount = 0.3
        c.num_epochs = 100
        # train.flags --train_batch_size=4096 --lr_rates=0.016,0.16,0.016,0.0016
        # --lr_boundaries=128,10000,20000 --l2_strength=0.0001 (a warm-up at 0.016 for 128 steps)
        c.global_batch_size = 4096
        c.lr_rates = (0.016, 0.16, 0.016, 0.0016)
        c.lr_boundaries = (128, 10000, 20000)
        c.l2_strength = 1e-4
    elif variant == "tiny":
        c.division = "open"
        c.num_runs = 3
        c.board_size = 5
        c.komi = 0.5
        c.max_moves = 50
        c.conv_width = 32
        c.fc_width = 32
        c.trunk_layers = 3
        c.bn_momentum = 0.9
        c.num_readouts = 16
        c.games_per_generation = 256
        c.window_generations = 4
        c.filter_amount = 1.0
        c.global_batch_size = 256
        c.search = "gumbel"           # PUCT with 16 readouts over 26 moves taught nothing
        c.lr_rates = (0.1, 0.01)
        c.lr_boundaries = (100000,)
        c.num_epochs = 15
        c.eval_games = 100
        c.eval_batch_size = 100
        # Measured (one run, 2 CPU cores, ~12 s a generation of 256 games): random vs random wins
        # 0.49-0.535 and greedy (one-ply area) beats random 0.98-1.00 of 200 games, so the target
        # player is greedy. Against it the network wins 0.04 untrained, then 0.14, 0.27, 0.16,
        # 0.75, 0.48, 0.76, 0.92, 0.95, 0.97, 0.96 after generations 1-10 (PUCT instead of Gumbel
        # stayed at 0.00-0.06 for 10 generations). 0.9 sits above every generation before the
        # 5th and below the plateau: `make train BENCHMARK=minigo` reached it in all 3 runs at
        # generations 6, 8 and 8 (0.90, 0.90, 0.96), 91-106 s timed each (the matches are off
        # the clock), olympic mean 1.65 minutes, about 2.5 minutes of wall time a run.
        c.target_model = "greedy"
        c.target = 0.9
    else:
        raise ValueError(f"unknown minigo config {variant!r}; known: {', '.join(VARIANTS)}")
    return c
