"""The runners: how the steps (`train.steps`) are mapped over devices.

`jax.pmap` (what the notebooks use) and `jax.shard_map` inside `jax.jit` over a device mesh run
the steps as per-device functions: both hold the state with a leading device axis (per-device
BN statistics differ between devices) and take batches shaped (devices, per-device batch, ...).
The jit runner runs them as functions of the global batch (`axis_name=None`), as JAX's
training cookbook writes a step: one `jax.jit` program over global arrays whose shardings are
part of their types (`jax.sharding.AxisType.Explicit` on a mesh set with `jax.set_mesh`), the
batch split over the mesh's data axis, the state replicated, or with `shard_params` its
parameters and optimizer state split over the same axis (FSDP/ZeRO: `ShardedParamsModel`
all-gathers the weights where the model uses them, and their gradients come back split). Its
model computes the per-worker BatchNorm statistics over groups of the global batch
(`global_bn_scope`), so all three runners compute the same step.

BatchNorm over groups of devices (Ying et al. 2018) needs `lax.pmean`'s `axis_index_groups`,
which pmap supports and shard_map does not; `shard_map_runner(bn_group_size=g)` therefore maps
over a two-axis mesh (groups × devices in a group): the per-device functions reduce over both
axes (`Runner.axis_name`, passed as their `axis_name`), the model's BN over the inner one
(`group_bn_scope` gives the model's `BNScope` for either runner). The jit runner splits its
batch over the same two axes, so that a group's examples lie on the group's devices.
"""

import collections
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from recipe import models
from train import steps
from train.steps import AXIS, AxisName

# The two axes of a mesh for BN over groups of devices: which group, which device in it.
GROUPS_AXIS, IN_GROUP_AXIS = "bn_groups", "bn_group"
# The jit runner's mesh axis over which the batch (and, sharded, the parameters) are split.
DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Runner:
    """How the steps are mapped over devices, and how data and state are placed for them.

    Attributes:
      name: 'pmap', 'shard_map' or 'jit'.
      devices: the devices this process places data on (pmap) or the whole mesh.
      put: host batch shaped (this process's devices, per-device batch, ...) → device arrays.
      map: step function → the mapped (and compiled) function.
      place: host pytree (a train state, a key) → device arrays, a copy per device
        (pmap, shard_map) or one global array per leaf (jit).
      fetch: device pytree → host numpy arrays: the first device's copy, or the global array.
      axis_name: the axis (or axes) of the mapped functions that spans all devices: their
        `axis_name` argument; None for the jit runner, whose functions see the global batch.
    """

    name: str
    devices: tuple[jax.Device, ...]
    put: Callable[[Any], Any]
    map: Callable[..., Callable[..., Any]]
    place: Callable[[Any], Any]
    fetch: Callable[[Any], Any]
    axis_name: AxisName | None = AXIS

    def prefetch(self, batches: Iterator[Any], size: int = 2) -> Iterator[Any]:
        """Places each host batch on the devices `size − 1` batches ahead of its use, so the
        transfer overlaps the running step."""
        queue: collections.deque = collections.deque()
        for batch in batches:
            queue.append(self.put(batch))
            if len(queue) == size:
                yield queue.popleft()
        yield from queue


def initialize_distributed(distributed: Any) -> None:
    """Joins the `jax.distributed` cluster if the config's `distributed` section asks for it
    (before any other jax call).

    With `coordinator_address`, `num_processes` and `process_id` set, uses them (GPU hosts,
    several processes on one machine); with them all None, lets JAX detect the cluster (Cloud
    TPU pod slices, SLURM).
    """
    if not distributed.enabled or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=distributed.coordinator_address,
        num_processes=distributed.num_processes,
        process_id=distributed.process_id,
        heartbeat_timeout_seconds=distributed.heartbeat_timeout_seconds,
    )


def fetch_first(tree: Any) -> Any:
    """The first local device's copy of a device-stacked pytree, as host numpy arrays."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def _stacked(put: Callable[[Any], Any], devices: tuple[jax.Device, ...]) -> Callable[[Any], Any]:
    """`place` of the per-device runners: a copy of a host pytree per local device (leading
    device axis), placed by `put`."""
    count = sum(d.process_index == jax.process_index() for d in devices)

    def place(tree: Any) -> Any:
        return put(jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * count), tree))

    return place


def pmap_runner(devices: list[jax.Device] | None = None) -> Runner:
    """`jax.pmap` over every process's devices (what the notebooks use), or over `devices`.

    Each process feeds its own devices; the collectives span all processes' devices (pmap's
    default), which restricting pmap to `jax.local_devices()` would silently break.
    """
    local_devices = tuple(devices or jax.local_devices())
    sharding = NamedSharding(jax.sharding.Mesh(np.array(local_devices), (AXIS,)), P(AXIS))

    def put(tree):
        return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)

    def map_(fn, donate_argnums=()):
        return jax.pmap(fn, axis_name=AXIS, donate_argnums=donate_argnums, devices=devices)

    return Runner(
        name="pmap",
        devices=local_devices,
        put=put,
        map=map_,
        place=_stacked(put, local_devices),
        fetch=fetch_first,
    )


def shard_map_runner(
    devices: list[jax.Device] | None = None, bn_group_size: int | None = None
) -> Runner:
    """`jax.shard_map` inside `jax.jit` over a 1-D mesh of all (global) devices, or `devices`.

    With `bn_group_size` = g, over a (devices / g) × g mesh (`GROUPS_AXIS`, `IN_GROUP_AXIS`)
    instead, for BatchNorm over groups of g consecutive devices (`group_bn_scope`); the mapped
    functions then reduce over both axes (`Runner.axis_name`).
    """
    devices = tuple(devices or jax.devices())
    mesh, axis_name = _mesh(devices, AXIS, bn_group_size, jax.sharding.AxisType.Auto)
    sharding = NamedSharding(mesh, P(axis_name))

    def put(tree):
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
        )

    def map_(fn, donate_argnums=()):
        def per_shard(*args):
            # Each shard holds a leading axis of one device: drop it, run, put it back.
            squeezed = jax.tree_util.tree_map(lambda x: x[0], args)
            return jax.tree_util.tree_map(lambda x: x[None], fn(*squeezed))

        mapped = jax.shard_map(per_shard, mesh=mesh, in_specs=P(axis_name), out_specs=P(axis_name))
        return jax.jit(mapped, donate_argnums=donate_argnums)

    return Runner(
        name="shard_map",
        devices=devices,
        put=put,
        map=map_,
        place=_stacked(put, devices),
        fetch=fetch_first,
        axis_name=axis_name,
    )


def _mesh(
    devices: tuple[jax.Device, ...],
    axis: str,
    group_size: int | None,
    axis_type: jax.sharding.AxisType,
) -> tuple[jax.sharding.Mesh, AxisName]:
    """(mesh, the axis or axes spanning it): one axis `axis` over `devices`, or with
    `group_size` = g two, groups of g consecutive devices × a device in a group (`GROUPS_AXIS`,
    `IN_GROUP_AXIS`)."""
    if group_size is None:
        axes, shape = (axis,), (len(devices),)
    else:
        groups = models.device_groups(len(devices), group_size)
        axes, shape = (GROUPS_AXIS, IN_GROUP_AXIS), (len(groups), group_size)
    mesh = jax.sharding.Mesh(
        np.array(devices).reshape(shape), axes, axis_types=(axis_type,) * len(axes)
    )
    return mesh, axes[0] if len(axes) == 1 else axes


def jit_runner(
    devices: list[jax.Device] | None = None,
    groups: int | None = None,
    shard_params: bool = False,
) -> Runner:
    """`jax.jit` of functions of the global batch over an explicitly sharded mesh of all
    (global) devices, or `devices` (see the module doc).

    `groups`: the groups of the global batch whose examples share BN statistics. The mesh has
    one axis, `DATA_AXIS`, or when there are fewer groups than devices (BN over groups of
    devices) two (`GROUPS_AXIS` × `IN_GROUP_AXIS`, groups × devices / groups), so that a
    group's examples lie on its own devices; the batch's first axis is split over all of them.
    The state is replicated; with `shard_params`, each array of its parameters and
    optimizer state with an axis that the device count divides is split along its largest such
    axis (`sharded_spec`).
    """
    devices = tuple(devices or jax.devices())
    in_group = None if groups is None or not 1 < groups < len(devices) else len(devices) // groups
    mesh, batch_axes = _mesh(devices, DATA_AXIS, in_group, jax.sharding.AxisType.Explicit)
    batch_sharding = NamedSharding(mesh, P(batch_axes))

    def put(tree):
        def global_batch(x):
            local = np.asarray(x)  # (this process's devices, per-device batch, ...)
            local = local.reshape(-1, *local.shape[2:])
            return jax.make_array_from_process_local_data(batch_sharding, local)

        return jax.tree_util.tree_map(global_batch, tree)

    def placed(tree, sharded: bool):
        def one(x):
            x = np.asarray(x)
            spec = sharded_spec(x.shape, len(devices), batch_axes) if sharded else P()
            sharding = NamedSharding(mesh, spec)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree_util.tree_map(one, tree)

    def place(tree):
        if not (shard_params and isinstance(tree, steps.TrainState)):
            return placed(tree, sharded=False)
        # The parameters and the optimizer state split; BN statistics (small, and read whole
        # by every worker) and the step count replicated.
        return steps.TrainState(
            step=placed(tree.step, sharded=False),
            params=placed(tree.params, sharded=True),
            batch_stats=placed(tree.batch_stats, sharded=False),
            opt_state=placed(tree.opt_state, sharded=True),
            noise_scale=placed(tree.noise_scale, sharded=False),
        )

    def map_(fn, donate_argnums=()):
        return _OnMesh(jax.jit(fn, donate_argnums=donate_argnums), mesh)

    return Runner(
        name="jit",
        devices=devices,
        put=put,
        map=map_,
        place=place,
        fetch=_fetch_global,
        axis_name=None,
    )


class _OnMesh:
    """A jitted function called (and lowered, for ahead-of-time compilation) with its mesh set
    (`jax.set_mesh`): the explicit axes' mesh, for the arrays the function creates."""

    def __init__(self, jitted: Any, mesh: jax.sharding.Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, *args: Any) -> Any:
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args: Any) -> Any:
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args)


def sharded_spec(shape: tuple[int, ...], device_count: int, axes: AxisName) -> P:
    """The `PartitionSpec` of an array of `shape` under `shard_params`: split over `axes` (all
    devices) along its largest axis that `device_count` divides (the first of equals), or
    replicated when none does (BN statistics, biases of odd widths, scalars).

    >>> sharded_spec((3, 3, 64, 128), 4, "data") == P(None, None, None, "data")
    True
    >>> sharded_spec((10,), 4, "data") == P()
    True
    """
    candidates = [i for i, size in enumerate(shape) if size % device_count == 0 and size > 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], -i))
    return P(*[axes if i == axis else None for i in range(len(shape))])


def _fetch_global(tree: Any) -> Any:
    """Host numpy arrays of global arrays: the local copy of a replicated one, and one gathered
    from all processes' shards of a sharded one (`shard_params` on several hosts)."""

    def one(x):
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_shards[0].data)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(one, tree)


class ShardedParamsModel:
    """A model whose parameters are held split over the devices (`shard_params`): `apply`
    all-gathers them to replicated arrays (`jax.sharding.reshard`) before calling the model,
    whose gradients then come back split like the parameters (the transpose of the gather);
    `init` and the model's other attributes are the model's own.

    The split holds the parameters and the optimizer state at 1/devices of their size between
    steps; within a step the gathered weights are transient (ZeRO stage 3 without per-layer
    prefetch: XLA schedules the gathers).
    """

    def __init__(self, model: Any):
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
        params = jax.tree_util.tree_map(lambda x: jax.sharding.reshard(x, P()), variables["params"])
        return self.model.apply({**variables, "params": params}, *args, **kwargs)


RUNNERS = {"pmap": pmap_runner, "shard_map": shard_map_runner, "jit": jit_runner}


def make_runner(
    name: str,
    bn_group_size: int | None = None,
    shard_params: bool = False,
    bn_groups: int | None = None,
) -> Runner:
    """The runner `name` ('pmap', 'shard_map' or 'jit') over all devices. With `bn_group_size`
    (BN over groups of that many devices), shard_map's mesh is two-axis; pmap's groups live in
    the model's BN (`group_bn_scope`). `shard_params` and `bn_groups` (the groups of the global
    batch that share BN statistics) are the jit runner's."""
    if name == "jit":
        return jit_runner(groups=bn_groups, shard_params=shard_params)
    if name == "shard_map":
        return shard_map_runner(bn_group_size=bn_group_size)
    return RUNNERS[name]()


def global_bn_scope(
    scope: str, per_device_batch: int, *, ghost_batch_size: int, group_size: int
) -> models.BNScope:
    """The model's `BNScope` under the jit runner, whose BN sees the global batch: the
    statistics of the config's `bn.scope` as groups of that batch (the batch's first axis is
    split over the devices in order, so a group of it is what a device, or a group of
    devices, holds). 'device' (Goyal §2.3): groups of the per-device batch n; 'ghost': groups
    of `ghost_batch_size`, which divides n; 'group': groups of `group_size` · n; 'global':
    the whole batch.

    >>> global_bn_scope("device", 32, ghost_batch_size=8, group_size=2)
    BNScope(axis_name=None, groups=None, ghost_batch_size=32)
    >>> global_bn_scope("group", 32, ghost_batch_size=8, group_size=2).ghost_batch_size
    64
    """
    sizes = {"device": per_device_batch, "ghost": ghost_batch_size}
    sizes["group"] = group_size * per_device_batch
    if scope == "global":
        return models.BNScope.per_device()
    return models.BNScope.ghost(sizes[scope])


def group_bn_scope(runner: str, device_count: int, group_size: int) -> models.BNScope:
    """The model's `BNScope` for BatchNorm over groups of `group_size` consecutive devices
    under `runner` ('pmap' or 'shard_map'; the latter built with
    `shard_map_runner(bn_group_size=group_size)`).

    >>> group_bn_scope("pmap", 4, 2)
    BNScope(axis_name='batch', groups=((0, 1), (2, 3)), ghost_batch_size=None)
    >>> group_bn_scope("shard_map", 4, 2)
    BNScope(axis_name='bn_group', groups=None, ghost_batch_size=None)
    """
    groups = models.device_groups(device_count, group_size)
    if runner == "pmap":
        return models.BNScope.across(AXIS, groups=groups)
    return models.BNScope.across(IN_GROUP_AXIS)
