"""Meshes, the logical-axis rules table, and helpers to place params and batches.

A run's parallelism is the mesh shape in its config — `data` (pure data
parallel), `fsdp` (data parallel with params, grads and optimizer state
sharded), `expert` (expert parallel: an MoE layer's experts split over it; the
rest of the model treats it as one more data-parallel axis, as MaxText does),
`tensor` (Megatron-style tensor parallel over heads / mlp / vocab). Every axis
is 1 unless the config says otherwise, so a dense model never sees `expert`.
Model code names logical axes only; `LOGICAL_RULES` is the one place that maps
them onto mesh axes.

Rule resolution is flax's: for each array dimension the first rule whose mesh
axes are still unused in that array wins. So activations [batch, length, embed]
shard batch over (data, fsdp, expert) and leave embed replicated, while params
[vocab, embed] shard embed over fsdp.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Device order: tensor innermost (the most traffic), then expert (an all-gather and
# a reduce-scatter per MoE layer), then fsdp and data.
MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("embed", "fsdp"),
    ("head_dim", None),
)


def make_mesh(shape: Mapping[str, int] | Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "expert", "tensor") mesh. One size may be -1: it takes
    what is left.

    `shape` is a mapping (e.g. an ml_collections ConfigDict with data/fsdp/tensor
    and optionally expert; absent axes are 1), a 3-sequence (data, fsdp, tensor)
    or a 4-sequence in MESH_AXES order; the default puts every device on `data`.
    """
    devices = list(devices if devices is not None else jax.devices())
    if shape is None:
        sizes = [-1, 1, 1, 1]
    elif isinstance(shape, Mapping) or hasattr(shape, "get"):
        unknown = set(dict(shape).keys()) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
        sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
        if len(sizes) == 3:
            sizes = [sizes[0], sizes[1], 1, sizes[2]]
        elif len(sizes) != 4:
            raise ValueError(f"mesh shape {tuple(sizes)} must have 3 entries (data, fsdp, "
                             f"tensor) or 4 {MESH_AXES}")
    n = len(devices)
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(sizes)}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh shape {tuple(sizes)}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(
                f"mesh shape {tuple(sizes)} does not divide the {n} available devices")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices "
            f"but {n} are available")
    try:
        from jax.experimental import mesh_utils
        device_array = mesh_utils.create_device_mesh(sizes, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        device_array = np.asarray(devices).reshape(sizes)
    return Mesh(device_array, MESH_AXES)


def logical_to_mesh_spec(logical: P, rules=None) -> P:
    return nn.logical_to_mesh_axes(tuple(logical), rules or LOGICAL_RULES)


def _check_divisible(name: str, shape: Sequence[int], spec: P, mesh: Mesh) -> None:
    for dim, (size, axes) in enumerate(zip(shape, tuple(spec) + (None,) * len(shape))):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        parts = math.prod(mesh.shape[a] for a in axes)
        if size % parts:
            raise ValueError(
                f"{name}: dimension {dim} of shape {tuple(shape)} has size {size}, which mesh "
                f"axes {axes} (x{parts}) do not divide; change the mesh "
                f"{dict(mesh.shape)} or the model")


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def logical_to_shardings(logical_axes, mesh: Mesh, rules=None, shapes=None):
    """Pytree of logical PartitionSpecs -> pytree of NamedShardings on `mesh`.

    With `shapes` (a matching pytree of arrays or ShapeDtypeStructs), checks that
    every sharded dimension divides evenly and names the offending parameter.
    """
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    mesh_specs = jax.tree_util.tree_map(lambda s: logical_to_mesh_spec(s, rules), logical_axes,
                                        is_leaf=is_spec)
    if shapes is not None:
        flat_specs = jax.tree_util.tree_leaves_with_path(mesh_specs, is_leaf=is_spec)
        flat_shapes = jax.tree_util.tree_leaves(shapes)
        for (path, spec), arr in zip(flat_specs, flat_shapes):
            _check_divisible(_path_name(path), arr.shape, spec, mesh)
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), mesh_specs, is_leaf=is_spec)


def shard_params(params, logical_axes, mesh: Mesh, rules=None):
    """Places a params pytree on the mesh according to its logical axes."""
    shardings = logical_to_shardings(logical_axes, mesh, rules, shapes=params)
    return jax.tree_util.tree_map(jax.device_put, params, shardings)


def data_parallel_size(mesh: Mesh | None) -> int:
    """How many ways a batch splits: the product of the BATCH_AXES sizes (1 without a mesh)."""
    return 1 if mesh is None else math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch dimension over BATCH_AXES (data, fsdp, expert), everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(batch, mesh: Mesh):
    """Host-local numpy batch (this process's rows) -> global arrays sharded over batch.

    Each process passes only its own rows; the global batch is their concatenation
    in process order (`jax.make_array_from_process_local_data`).
    """
    def put(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, x.ndim)
        local_parts = data_parallel_size(mesh) // jax.process_count()
        if x.shape[0] % max(local_parts, 1):
            raise ValueError(
                f"local batch of {x.shape[0]} rows does not divide over the {local_parts} "
                f"data-parallel shards of this process (mesh {dict(mesh.shape)})")
        return jax.make_array_from_process_local_data(sharding, x)
    return jax.tree_util.tree_map(put, batch)


@contextlib.contextmanager
def mesh_context(mesh: Mesh | None, rules=None):
    """Makes `mesh` and the logical rules current, so the model's logical
    constraints become real sharding constraints. A no-op for mesh=None."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules or LOGICAL_RULES):
        yield
