"""Checkpoints with orbax's ``CheckpointManager``.

A checkpoint holds the whole train state (step, parameters, model state such as BatchNorm
statistics, optimizer state), the driver's bookkeeping as JSON (elapsed time, units done, the data
position) and, for data that is not a pure function of (seed, epoch) such as MiniGo's replay window,
the data state. With those a resumed run continues exactly as an uninterrupted one would.
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
            item_names=("state", "meta", "data"),
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state: PyTree, meta: dict | None = None,
             data_state: PyTree | None = None) -> None:
        meta = dict(meta or {}, has_data_state=data_state is not None)
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_state is not None:
            items["data"] = ocp.args.StandardSave(data_state)
        self._mngr.save(step, args=ocp.args.Composite(**items))

    def restore(self, abstract_state: PyTree, step: int | None = None
                ) -> tuple[PyTree, dict, PyTree | None]:
        """Restore onto the shardings of ``abstract_state`` (arrays or ShapeDtypeStructs):
        ``(state, meta, data_state or None)``."""
        step = self.latest_step() if step is None else step
        meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = dict(meta["meta"] or {})
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            abstract_state)
        items = dict(state=ocp.args.StandardRestore(target))
        if meta.get("has_data_state"):
            items["data"] = ocp.args.StandardRestore()
        out = self._mngr.restore(step, args=ocp.args.Composite(**items))
        return out["state"], meta, out["data"] if meta.get("has_data_state") else None

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
    mngr = ocp.CheckpointManager(directory, item_names=("state", "meta", "data"))
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
