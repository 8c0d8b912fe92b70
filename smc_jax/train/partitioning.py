"""Device mesh, logical-axis rules and the shardings of params, optimizer state (masks included) and batches.

A :class:`Partitioning` (gin: ``Partitioning.*``) builds a ``jax.sharding.Mesh`` with the named axes
``data``, ``fsdp`` and ``tensor`` over every device of every process (``data=-1``: the devices the other
axes leave). Parameters carry logical axis names (``vocab``, ``embed``, ``heads``, ``mlp``, ``hidden``; see
the models); ``rules`` map them to mesh axes T5X-style: for each dimension, the first rule of its logical
name whose mesh axes are not yet used by the array and divide the dimension wins, else the dimension is
replicated. Optimizer-state leaves (Adam moments, the masks of :func:`smc_jax.sparsity.sparse_optimizer`)
are sharded like the parameter whose path ends theirs and whose shape they share; everything else (step
counters, schedules' scalars, the rng) is replicated. Batches are split on their leading axis over
``data`` × ``fsdp`` (replicated when it does not divide); in a multi-process run every process builds the
same global batch on the host and puts only its own rows on its devices.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
MESH_AXES = ("data", "fsdp", "tensor")
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("hidden", "fsdp"),
    ("vocab", "fsdp"),
    ("mlp", "fsdp"),
    ("heads", "fsdp"),
)


def _path_keys(path: tuple) -> tuple[str, ...]:
    out = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                out.append(str(getattr(entry, attr)))
                break
        else:
            out.append(str(entry))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Partitioning:
    """The mesh shape and the logical-axis rules (gin: ``Partitioning.data`` …).

    - ``data``, ``fsdp``, ``tensor``: mesh axis sizes; one of them may be -1 (the devices left over).
      The default puts every device on ``data`` (params replicated, batches split); ``fsdp=N`` shards every
      parameter and its optimizer state N ways (for models too big to replicate).
    - ``rules``: ``(logical name, mesh axis | tuple of mesh axes | None)`` pairs, tried in order.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES

    def __post_init__(self):
        sizes = (int(self.data), int(self.fsdp), int(self.tensor))
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"Partitioning sizes (data, fsdp, tensor) = {sizes}: each must be >= 1, and at most "
                             "one may be -1 (the devices left over)")

    def mesh_shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [int(self.data), int(self.fsdp), int(self.tensor)]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"{num_devices} devices do not divide into fsdp x tensor = {known}; set "
                                 "--gin.Partitioning.fsdp / tensor to divisors of the device count")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(f"mesh data x fsdp x tensor = {'x'.join(map(str, sizes))} needs {math.prod(sizes)} "
                             f"devices, {num_devices} are available; set one of Partitioning.data/fsdp/tensor to -1")
        return tuple(sizes)  # type: ignore[return-value]

    def make_mesh(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
        """The mesh over ``devices`` (default: every device of every process), axes ``data, fsdp, tensor``.
        Explicit sizes (no -1) whose product is smaller than the device count use the first devices (in a
        single-process run; e.g. ``data=1`` runs on one device)."""
        devices = list(jax.devices() if devices is None else devices)
        sizes = (int(self.data), int(self.fsdp), int(self.tensor))
        if -1 not in sizes and math.prod(sizes) < len(devices) and jax.process_count() == 1:
            devices = devices[: math.prod(sizes)]
        shape = self.mesh_shape(len(devices))
        return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


class Partitioner:
    """Shardings on one mesh: of params (from their logical axes), of states built from them, of batches."""

    def __init__(self, config: Partitioning = Partitioning(), devices: Sequence[jax.Device] | None = None):
        self.config = config
        self.mesh = config.make_mesh(devices)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._replicate = jax.jit(lambda tree: tree, out_shardings=self.replicated)  # one jit: compiled per tree
        self._warned: set[int] = set()

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    def spec(self, logical: Sequence[str | None] | None, shape: Sequence[int]) -> PartitionSpec:
        """Mesh axes for an array of ``shape`` with logical axis names ``logical`` (``None``: replicated)."""
        if logical is None:
            return PartitionSpec()
        used: set[str] = set()
        out = []
        for name, dim in zip(logical, shape):
            choice = None
            for rule_name, axes in self.config.rules:
                if rule_name != name or axes is None:
                    continue
                axes = (axes,) if isinstance(axes, str) else tuple(axes)
                size = math.prod(self.mesh.shape[a] for a in axes)
                if used.isdisjoint(axes) and dim % size == 0:
                    choice = axes[0] if len(axes) == 1 else axes
                    used.update(axes)
                    break
            out.append(choice)
        return PartitionSpec(*out)

    def param_shardings(self, params: PyTree, axes: PyTree | None) -> PyTree:
        """``NamedSharding`` per parameter; ``axes`` is a tree like ``params`` of logical-name tuples (or a
        ``PartitionSpec``/``None`` per leaf); ``None`` replicates everything."""
        if axes is None:
            return jax.tree.map(lambda _: self.replicated, params)
        flat_axes = _flat(axes, is_leaf=_is_axes)
        return _map_with_keys(lambda k, x: NamedSharding(self.mesh, self.spec(_as_names(flat_axes.get(k)),
                                                                               np.shape(x))), params)

    def like_params(self, tree: PyTree, params: PyTree, param_shardings: PyTree) -> PyTree:
        """Shardings for ``tree`` (an optimizer state, a mask tree): a leaf whose key path ends with a
        parameter's path and has its shape gets that parameter's sharding; any other leaf is replicated."""
        shardings = _flat(param_shardings, is_leaf=_is_sharding)
        shapes = {k: np.shape(x) for k, x in _flat(params).items()}
        lengths = sorted({len(k) for k in shapes}, reverse=True)

        def pick(key, leaf):
            if leaf is None:
                return None
            for n in lengths:
                if len(key) >= n and key[-n:] in shapes and shapes[key[-n:]] == np.shape(leaf):
                    return shardings[key[-n:]]
            return self.replicated

        return _map_with_keys(pick, tree)

    def batch_sharding(self, batch_rows: int, name: str = "batch") -> NamedSharding:
        """Rows split over ``data`` × ``fsdp`` when they divide, else replicated (said once)."""
        spec = self.spec((name,), (batch_rows,))
        split = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if spec == PartitionSpec(None) and split > 1:
            if batch_rows not in self._warned and jax.process_index() == 0:
                print(f"note: batches of {batch_rows} rows do not split over data x fsdp = "
                      f"{self.mesh.shape['data'] * self.mesh.shape['fsdp']} devices; they are replicated "
                      "(make BATCH_SIZE a multiple of it to split them)", file=sys.stderr, flush=True)
                self._warned.add(batch_rows)
        return NamedSharding(self.mesh, spec)

    def put(self, tree: PyTree, shardings: PyTree) -> PyTree:
        """``tree`` as global arrays with ``shardings``: host values and arrays on this process's devices are
        placed shard by shard (each process transfers only its own shards); global arrays are resharded."""
        def place(x, sharding):
            if x is None:
                return None
            if isinstance(x, jax.Array):
                if x.sharding == sharding:
                    return x
                if not x.is_fully_addressable:
                    return jax.jit(lambda a: a, out_shardings=sharding)(x)
            return _put_one(np.asarray(jax.device_get(x)), sharding)

        return jax.tree.map(place, tree, shardings, is_leaf=lambda x: x is None)

    def put_batch(self, batch: PyTree) -> PyTree:
        """A host batch (every array leading with the batch axis) as global arrays split by rows."""
        leaves = jax.tree.leaves(batch)
        sharding = self.batch_sharding(int(np.shape(leaves[0])[0])) if leaves else self.replicated
        return jax.tree.map(lambda x: _put_one(np.asarray(x), sharding), batch)

    def to_host(self, tree: PyTree) -> PyTree:
        """numpy copies of (possibly sharded) arrays; in a multi-process run they are gathered to every device
        first (a process can read only what its devices hold)."""
        return jax.device_get(self.replicate(tree) if jax.process_count() > 1 else tree)

    def replicate(self, tree: PyTree) -> PyTree:
        """``tree`` replicated on every device of the mesh (for evaluation code that expects whole arrays)."""
        return self._replicate(tree)


def _put_one(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _is_axes(x: Any) -> bool:
    return x is None or isinstance(x, PartitionSpec) or (isinstance(x, tuple) and all(
        a is None or isinstance(a, str) for a in x))


def _is_sharding(x: Any) -> bool:
    return isinstance(x, jax.sharding.Sharding)


def _as_names(axes: Any) -> tuple[str | None, ...] | None:
    if axes is None:
        return None
    return tuple(axes)


def _flat(tree: PyTree, is_leaf=None) -> dict[tuple[str, ...], Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {_path_keys(path): leaf for path, leaf in leaves}


def _map_with_keys(fn, tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map_with_path(lambda path, leaf: fn(_path_keys(path), leaf), tree,
                                            is_leaf=lambda x: x is None)
