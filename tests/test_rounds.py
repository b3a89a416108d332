"""Round targets, checked against the rule files of the installed ``mlperf_logging`` checker."""
from __future__ import annotations

import ast
import glob
import os
import re

import mlperf_logging
import pytest
import yaml

from mlperf_jax import rounds

RULES = os.path.join(os.path.dirname(mlperf_logging.__file__), "compliance_checker")
MLPERF_NAME = {"resnet50": "resnet"}


def _keys(path: str) -> dict[str, dict]:
    with open(path) as f:
        return {r["KEY"]["NAME"]: r["KEY"] for r in yaml.load(f, Loader=yaml.BaseLoader) or []
                if "KEY" in r}


@pytest.mark.parametrize("bench", rounds.benchmarks("v0.6"))
def test_v06_targets_equal_the_070_closed_bounds(bench):
    """Ruleset 0.6.0 bounds no target, so the v0.7 closed bound (same numbers) is the oracle."""
    rec = _keys(os.path.join(RULES, "training_0.7.0",
                             f"closed_{MLPERF_NAME.get(bench, bench)}.yaml"))["eval_accuracy"]
    check = rec["ATLEAST_ONE_CHECK"]
    bounds = {m or None: float(x)
              for m, x in re.findall(r"v\['value'\](?:\['(\w+)'\])? >= ([0-9.]+)", check)}
    want = rounds.targets(bench, "v0.6")
    if None in bounds:  # single-metric benchmark: the only bound is the value's
        assert len(want) == 1 and bounds == {None: next(iter(want.values()))}
    else:
        assert bounds == want


def test_060_rules_bound_no_target():
    for path in glob.glob(os.path.join(RULES, "training_0.6.0", "*.yaml")):
        assert "ATLEAST_ONE_CHECK" not in open(path).read(), path


def test_v06_benchmarks_are_the_060_ruleset_ones():
    common = _keys(os.path.join(RULES, "training_0.6.0", "common.yaml"))
    accepted = ast.literal_eval(
        re.search(r"in (\[.*\])", common["submission_benchmark"]["CHECK"]).group(1))
    assert "ncf" not in accepted
    # minigo is checked with its own file (training_0.6.0/minigo.yaml), not through common.yaml
    assert os.path.exists(os.path.join(RULES, "training_0.6.0", "minigo.yaml"))
    ours = {MLPERF_NAME.get(b, b) for b in rounds.benchmarks("v0.6")}
    assert ours == set(accepted) | {"minigo"}


def test_documented_values():
    assert rounds.ROUNDS == ("v0.5", "v0.6") and rounds.DEFAULT_ROUND == "v0.6"
    assert rounds.targets("resnet50", "v0.5") == {"top1": 0.749}
    assert rounds.targets("resnet") == rounds.targets("resnet50", "v0.6") == {"top1": 0.759}
    assert rounds.targets("ssd", "v0.5") == {"mAP": 0.212}
    assert rounds.targets("gnmt", "v0.5") == {"bleu": 0.218}
    assert rounds.targets("maskrcnn", "v0.5") == {"BBOX": 0.377, "SEGM": 0.339}
    assert rounds.targets("ncf", "v0.5") == {"hr@10": 0.635}
    assert rounds.targets("minigo", "v0.5") == {"pro_move_prediction": 0.40}
    assert rounds.targets("minigo", "v0.6") == {"win_rate": 0.5}
    for r in rounds.ROUNDS:
        for b in rounds.benchmarks(r):
            assert rounds.source(b, r)
    assert rounds.checker_ruleset("v0.6") == "0.6.0" and rounds.checker_ruleset("v0.5") is None


def test_default_round_is_the_newest_that_has_the_benchmark():
    assert rounds.default_round("resnet50") == rounds.default_round("resnet") == "v0.6"
    assert rounds.default_round("ncf") == "v0.5"
    with pytest.raises(ValueError, match="unknown benchmark 'bert'"):
        rounds.default_round("bert")


def test_targets_returns_a_fresh_dict():
    t = rounds.targets("maskrcnn")
    t["BBOX"] = 0.0
    assert rounds.targets("maskrcnn")["BBOX"] == 0.377


def test_reached_needs_every_metric():
    e = rounds.entry("maskrcnn", "v0.6")
    assert e.reached({"BBOX": 0.38, "SEGM": 0.34})
    assert not e.reached({"BBOX": 0.38, "SEGM": 0.33})
    assert not e.reached({"BBOX": 0.40})


def test_errors_are_one_clear_sentence():
    with pytest.raises(ValueError, match="NCF was dropped after v0.5"):
        rounds.targets("ncf", "v0.6")
    with pytest.raises(ValueError, match="unknown benchmark 'bert'"):
        rounds.targets("bert")
    with pytest.raises(ValueError, match="unknown MLPerf round 'v0.7'"):
        rounds.targets("resnet50", "v0.7")
