"""Mesh and sharding helpers: a (data, model) mesh, partition rules, FSDP, multi-host set-up.

Everything is expressed as ``NamedSharding`` on a two-axis ``Mesh`` with axes ``("data", "model")``
(the MaxText / big_vision layout), and the train step is ``jax.jit`` with explicit shardings, so
the same code runs on one CPU, fake CPU devices, a GPU or a TPU slice. ``make_mesh()`` with no
arguments puts every device on ``data`` (``model`` has size 1), which is plain data parallelism;
a model axis is opt-in.

Where each leaf of the train state goes is decided by *partition rules*: a sequence of
``(regex, PartitionSpec)`` matched against the leaf's '/'-joined path (see ``leaf_path``), first
match wins. Unmatched leaves fall back to the FSDP heuristic over ``data`` (``fsdp=True``) or are
replicated. ``state_partition_specs`` gives the plain spec tree (for tests, logs, and ahead-of-time
compilation on an ``AbstractMesh``); ``state_shardings`` wraps it into ``NamedSharding``s.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)
PyTree = Any
# One rule: a regex (text or compiled) searched in a leaf path, and the spec that leaf gets.
Rule = tuple[Union[str, "re.Pattern[str]"], P]
Rules = Sequence[Rule]


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


# ------------------------------------------------------------------------------------------ mesh
def _is_size(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def mesh_shape(n_devices: int, data: int = -1, model: int = 1) -> tuple[int, int]:
    """Resolve ``(data, model)`` sizes for ``n_devices``; -1 (at most one of them) means the rest.

    Raises one clear ``ValueError`` when the sizes are not positive or do not multiply to the
    device count, rather than letting ``Mesh`` fail later with a reshape error.
    """
    if not (_is_size(data) and _is_size(model)):
        raise ValueError(f"mesh sizes must be integers, got data={data!r}, model={model!r}")
    data, model = int(data), int(model)
    if data == -1 and model == -1:
        raise ValueError("at most one of the mesh sizes data and model may be -1 (the rest)")
    for name, v in (("data", data), ("model", model)):
        if v == 0 or v < -1:
            raise ValueError(f"mesh size {name}={v} must be a positive integer or -1 (the rest)")
    if data == -1 or model == -1:
        known, name = (model, "model") if data == -1 else (data, "data")
        if n_devices % known:
            raise ValueError(f"mesh size {name}={known} does not divide the {n_devices} devices")
        rest = n_devices // known
        data, model = (rest, model) if data == -1 else (data, rest)
    if data * model != n_devices:
        raise ValueError(f"a (data={data}, model={model}) mesh needs {data * model} devices, "
                         f"but there are {n_devices}")
    return data, model


def make_mesh(data: int | Sequence[Any] = -1, model: int = 1, devices: Sequence[Any] | None = None
              ) -> Mesh:
    """A ``("data", "model")`` mesh of ``data x model`` (global) devices.

    ``-1`` means "the rest of the devices", so ``make_mesh()`` is all devices on ``data`` (pure
    data parallelism) and ``make_mesh(model=2)`` halves it. Over all devices the layout comes from
    ``mesh_utils.create_device_mesh``, which on TPU/GPU puts the last axis (``model``, the one with
    the most traffic) on the fastest links; an explicit ``devices`` list keeps its given order
    when no topology-aware layout fits it.

    For backward compatibility a device list as the first positional argument
    (``make_mesh(jax.devices()[:1])``, the old one-axis signature) is taken as ``devices``.
    """
    if not _is_size(data) and devices is None and data is not None:
        data, devices = -1, data  # old signature: make_mesh(devices)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("cannot make a mesh over an empty device list")
    shape = mesh_shape(len(devices), data, model)
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        # A device subset the topology-aware layout cannot place: keep the caller's order.
        arr = np.asarray(devices, dtype=object).reshape(shape)
    # ``Mesh`` (not ``jax.make_mesh``, whose axes default to Explicit in this JAX) keeps the axes
    # Auto, so jit's in/out shardings alone decide the layout.
    return Mesh(arr, MESH_AXES)


def _axis_size(mesh: Any, axis: str) -> int:
    return int(dict(mesh.shape).get(axis, 1))


def data_parallel_size(mesh: Any) -> int:
    """How many ways the batch is split: the size of the ``data`` axis (1 if the mesh has none).

    Global batch sizes must divide by this, not by the device count: devices along ``model`` hold
    the same rows.
    """
    return _axis_size(mesh, DATA_AXIS)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis, replicated over the model axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


# ------------------------------------------------------------------------------------------ rules
def leaf_path(path: Sequence[Any]) -> str:
    """The '/'-joined path of a pytree key path: dict keys, attribute names, sequence indices.

    A train state ``{step, params, opt_state}`` with Adam gives e.g. ``params/mf_user_embed``,
    ``opt_state/0/mu/mf_user_embed`` and ``opt_state/0/count``.
    """
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def path_dict(tree: PyTree) -> dict[str, Any]:
    """``{leaf_path: leaf}`` for a pytree, in flattening order (for tests and logs)."""
    return {leaf_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def fsdp_spec(shape: tuple[int, ...], n: int, min_size: int = 2 ** 12, axis: str = DATA_AXIS) -> P:
    """Shard the largest dimension divisible by ``n`` over ``axis``; small arrays stay replicated.

    Small arrays are not worth the gather; on ties the earlier dimension wins (stable sort).
    """
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % n == 0:
            spec = [None] * len(shape)
            spec[i] = axis
            return P(*spec)
    return P()


def _compile_rules(rules: Rules | None) -> list[tuple[re.Pattern, P]]:
    out = []
    for i, rule in enumerate(rules or ()):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
            raise ValueError(f"partition rule {i} must be a (regex, PartitionSpec) pair, "
                             f"got {rule!r}")
        pattern, spec = rule
        if not isinstance(spec, P):
            raise ValueError(f"partition rule {i} ({pattern!r}) must map to a PartitionSpec, "
                             f"got {spec!r}")
        try:
            out.append((re.compile(pattern), spec))
        except (re.error, TypeError) as e:
            raise ValueError(f"partition rule {i} has a bad regex {pattern!r}: {e}") from None
    return out


def _spec_axes(entry: Any) -> tuple[str, ...] | None:
    """The mesh axes of one spec entry, or None when the entry is not a valid one."""
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    if isinstance(entry, tuple) and all(isinstance(a, str) for a in entry):
        return entry
    return None


def _check_spec(spec: P, shape: tuple[int, ...], mesh: Any, path: str, pattern: str) -> None:
    """One clear ``ValueError`` naming the leaf when ``spec`` cannot place it on ``mesh``."""
    where = f"partition rule {pattern!r} gives {path} (shape {shape}) the spec {spec}"
    if len(spec) > len(shape):
        raise ValueError(f"{where}, which has {len(spec)} entries for a rank-{len(shape)} leaf")
    sizes = dict(mesh.shape)
    used: list[str] = []
    dim_axes = []
    for entry in spec:  # the spec's own validity first, then whether it fits this leaf
        axes = _spec_axes(entry)
        if axes is None:
            raise ValueError(f"{where}, whose entry {entry!r} is not None, a mesh axis name or a "
                             f"tuple of them")
        for a in axes:
            if a not in sizes:
                raise ValueError(f"{where}, but the mesh has no axis {a!r} (axes: {tuple(sizes)})")
            if a in used:
                raise ValueError(f"{where}, which uses mesh axis {a!r} twice")
            used.append(a)
        dim_axes.append(axes)
    for dim, axes in enumerate(dim_axes):
        n = math.prod(sizes[a] for a in axes)
        if shape[dim] % n:
            raise ValueError(f"{where}, but its dim {dim} of size {shape[dim]} does not divide by "
                             f"{n} ({' x '.join(f'{a}={sizes[a]}' for a in axes)}); pad that "
                             f"dimension to a multiple of {n} or change the rule")


def state_partition_specs(abstract_state: PyTree, mesh: Any, fsdp: bool = False, *,
                          rules: Rules | None = None, fsdp_min_size: int = 2 ** 12) -> PyTree:
    """The ``PartitionSpec`` of every leaf of a (possibly abstract) train state.

    For each leaf, its path (``leaf_path``, e.g. ``opt_state/0/mu/mf_user_embed``) is matched
    against ``rules`` in order with ``re.search`` and the first match wins. ``re.search`` rather
    than ``fullmatch`` because optimizer state mirrors parameter paths inside optax containers:
    one rule written for a parameter name, anchored as ``(^|/)name$``, then also places its Adam
    ``mu``/``nu`` the same way, wherever the container nests them. A matched leaf gets the rule's
    spec as written (``P()`` there means "replicated", not "fall back"); an unmatched leaf gets
    ``fsdp_spec`` over ``data`` when ``fsdp`` and ``P()`` otherwise. Scalars and non-array leaves
    (step counters, Adam's ``count``) are always replicated, whatever the rules say.

    Errors (``ValueError``, one sentence naming the leaf path): a matched spec with more entries
    than the leaf's rank, an axis the mesh lacks or used twice, or a dimension that does not divide
    by the product of its axes' sizes. These fail instead of falling back because a silent
    fallback to replication would hide a memory blow-up the rule was written to prevent; padding
    (e.g. NCF's ``row_multiple``) is the fix. A rule that matches no leaf path at all is also an
    error: it is almost always a misspelt parameter name.

    ``mesh`` may be a ``Mesh`` or an ``AbstractMesh`` (only its axis sizes are read), so the
    layout can be planned for a topology this host does not have.
    """
    compiled = _compile_rules(rules)
    n_data = _axis_size(mesh, DATA_AXIS)
    matched = [False] * len(compiled)

    def one(path, x):
        name = leaf_path(path)
        shape = tuple(getattr(x, "shape", ()))
        for i, (pattern, spec) in enumerate(compiled):
            if pattern.search(name):
                matched[i] = True
                if not shape:
                    return P()
                _check_spec(spec, shape, mesh, name, pattern.pattern)
                return spec
        if fsdp and shape:
            return fsdp_spec(shape, n_data, fsdp_min_size)
        return P()

    specs = jax.tree_util.tree_map_with_path(one, abstract_state)
    unused = [p.pattern for (p, _), m in zip(compiled, matched) if not m]
    if unused:
        example = next(iter(path_dict(abstract_state)), "")
        raise ValueError(f"partition rule(s) {unused} match no leaf of the state (leaf paths look "
                         f"like {example!r})")
    return specs


def state_shardings(abstract_state: PyTree, mesh: Mesh, fsdp: bool = False, *,
                    rules: Rules | None = None, fsdp_min_size: int = 2 ** 12) -> PyTree:
    """``NamedSharding``s for a train-state pytree: ``state_partition_specs`` on ``mesh``.

    ``fsdp`` stays the third positional parameter (``state_shardings(abstract, mesh, fsdp)``).
    """
    specs = state_partition_specs(abstract_state, mesh, fsdp, rules=rules,
                                  fsdp_min_size=fsdp_min_size)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda s: isinstance(s, P))


# ------------------------------------------------------------------------------------------ batches
def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble this host's slice of a global batch into globally sharded arrays."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def local_batch_size(global_batch_size: int, mesh: Mesh | None = None) -> int:
    """This host's share of a global batch, which must split evenly over the data axis.

    Without ``mesh``, the mesh of ``make_mesh()`` (every device on ``data``). With a model axis,
    the host's share is the rows of the data-axis positions its devices sit at, so two hosts on
    the same data position (a model axis spanning hosts) load the same rows.
    """
    n_data = jax.device_count() if mesh is None else data_parallel_size(mesh)
    if global_batch_size % n_data:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the data "
                         f"axis of size {n_data}")
    if mesh is None:
        return global_batch_size // jax.process_count()
    names = list(mesh.axis_names)
    di = names.index(DATA_AXIS) if DATA_AXIS in names else None
    me = jax.process_index()
    positions = {idx[di] if di is not None else 0 for idx in np.ndindex(mesh.devices.shape)
                 if mesh.devices[idx].process_index == me}
    return len(positions) * (global_batch_size // n_data)
