"""Closed division: which hyperparameters a submission may change, compared as plain values.

A config is flattened to ``{dotted.key: plain value}`` (``model.dropout_rate``), so that a locked
``ConfigDict`` from the command line, an unlocked one from code, tuples and lists all compare by
value. Keys are split three ways: tunable hyperparameters (the rules let a submitter choose them),
implementation switches that change no mathematics (``conv_impl``, checkpointing, logging, where
data is cached), and everything else, which must equal the reference.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Mapping

import ml_collections

#: keys every benchmark treats as bookkeeping, not hyperparameters
BOOKKEEPING_KEYS = frozenset({
    "division", "dataset", "num_runs", "variant", "benchmark_name", "cache_dir", "pretrained",
    "checkpoint_every_steps", "log_format", "shuffle_buffer", "converged_runs_scored",
})


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def flatten(config: ml_collections.ConfigDict | Mapping, prefix: str = "") -> dict[str, Any]:
    """``{dotted.key: plain value}`` for every leaf of a (possibly nested, possibly locked) config."""
    data = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out.update(flatten(value, name + "."))
        else:
            out[name] = _plain(value)
    return out


def _matches(key: str, patterns: Iterable[str]) -> bool:
    """A key matches ``model.dropout_rate`` exactly, a parent (``synthetic`` covers
    ``synthetic.num_train``) or a glob (``model.*_dropout_rate``)."""
    for p in patterns:
        if key == p or key.startswith(p + ".") or fnmatch.fnmatchcase(key, p):
            return True
    return False


def violations(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, *,
               tunable: Iterable[str], implementation: Iterable[str] = ()) -> list[str]:
    """``key=value (reference value)`` for each fixed hyperparameter that differs from the
    reference, and each key the reference lacks (a new knob is not closed-division either)."""
    skip = set(tunable) | set(implementation) | BOOKKEEPING_KEYS
    mine, ref = flatten(config), flatten(reference)
    out = []
    for key in sorted(set(mine) | set(ref)):
        if _matches(key, skip):
            continue
        if key not in ref:
            out.append(f"{key}={mine[key]!r} (not in the reference)")
        elif key not in mine:
            out.append(f"{key} missing (reference {ref[key]!r})")
        elif mine[key] != ref[key]:
            out.append(f"{key}={mine[key]!r} (reference {ref[key]!r})")
    return out


def split(config: ml_collections.ConfigDict, *, tunable: Iterable[str],
          implementation: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """The flattened config grouped as ``fixed`` / ``tunable`` / ``implementation`` (for
    ``--dry_run``)."""
    tunable, implementation = set(tunable), set(implementation) | BOOKKEEPING_KEYS
    out: dict[str, dict[str, Any]] = {"fixed": {}, "tunable": {}, "implementation": {}}
    for key, value in flatten(config).items():
        group = ("tunable" if _matches(key, tunable) else
                 "implementation" if _matches(key, implementation) else "fixed")
        out[group][key] = value
    return out
