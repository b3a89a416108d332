"""Checkpoints with orbax's ``CheckpointManager``.

A checkpoint holds the whole train state (step, parameters, model state such as BatchNorm
statistics, optimizer state). The data position and the RNG are functions of the step, so restoring
the state is enough for a resumed run to continue exactly as an uninterrupted one would.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


class Checkpointer:
    """Save and restore the train state in ``directory`` (keeps the newest ``max_to_keep``)."""

    def __init__(self, directory: str, max_to_keep: int = 2) -> None:
        self.directory = os.path.abspath(directory)
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state: PyTree, meta: dict | None = None) -> None:
        self._mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})))

    def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
        """Restore onto the shardings of ``abstract_state`` (arrays or ShapeDtypeStructs)."""
        step = self.latest_step() if step is None else step
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            abstract_state)
        out = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"] or {})

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def restore_variables(directory: str, step: int | None = None) -> dict[str, PyTree]:
    """Model variables (``params`` plus model state such as ``batch_stats``) from a training
    checkpoint directory, as host numpy arrays, for inference. Raises FileNotFoundError."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    mngr = ocp.CheckpointManager(directory, item_names=("state", "meta"))
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    mngr.close()
    state = out["state"]
    variables = {"params": state["params"]}
    model_state = state.get("model_state") or {}
    variables.update(model_state)
    return variables
