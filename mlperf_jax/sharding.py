"""Mesh and sharding helpers: data parallel by default, FSDP as an option, multi-host aware.

Everything is expressed as ``NamedSharding`` on a one-axis ``Mesh`` named ``data``, and the train
step is ``jax.jit`` with explicit shardings, so the same code runs on one CPU, fake CPU devices, a
GPU or a TPU slice.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
PyTree = Any


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: list[int] | None = None) -> None:
    """Start ``jax.distributed`` when this is one of several processes.

    Flags win over the environment; on TPU pods and SLURM/Kubernetes JAX's own auto-detection
    fills in what is not given. A single process with nothing set does nothing.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if coordinator_address is None and num_processes in (None, 1):
        return
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        # CPU collectives across processes need gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)


def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh over all (global) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def fsdp_spec(shape: tuple[int, ...], n: int, min_size: int = 2 ** 12) -> P:
    """Shard the largest dimension divisible by ``n``; small arrays stay replicated."""
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % n == 0:
            spec = [None] * len(shape)
            spec[i] = DATA_AXIS
            return P(*spec)
    return P()


def state_shardings(abstract_state: PyTree, mesh: Mesh, fsdp: bool) -> PyTree:
    """Shardings for a train-state pytree: replicated, or FSDP over the data axis."""
    n = mesh.shape[DATA_AXIS]

    def one(x):
        if not fsdp or not hasattr(x, "shape"):
            return replicated(mesh)
        return NamedSharding(mesh, fsdp_spec(tuple(x.shape), n))

    return jax.tree.map(one, abstract_state)


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble this host's slice of a global batch into globally sharded arrays."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def local_batch_size(global_batch_size: int) -> int:
    """This host's share of a global batch; the global batch must split evenly over devices."""
    n_dev = jax.device_count()
    if global_batch_size % n_dev:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{n_dev} devices of the mesh")
    return global_batch_size // jax.process_count()
