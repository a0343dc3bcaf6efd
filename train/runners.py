"""The runners: how the per-device steps (`train.steps`) are mapped over devices.

`jax.pmap` (what the notebooks use) and `jax.shard_map` inside `jax.jit` over a device mesh run
the same per-device function; both hold the state with a leading device axis (per-device BN
statistics differ between devices) and take batches shaped (devices, per-device batch, ...).

BatchNorm over groups of devices (Ying et al. 2018) needs `lax.pmean`'s `axis_index_groups`,
which pmap supports and shard_map does not; `shard_map_runner(bn_group_size=g)` therefore maps
over a two-axis mesh (groups × devices in a group): the per-device functions reduce over both
axes (`Runner.axis_name`, passed as their `axis_name`), the model's BN over the inner one
(`group_bn_scope` gives the model's `BNScope` for either runner).
"""

import collections
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from recipe import models
from train.steps import AXIS, AxisName

# The two axes of shard_map's mesh for BN over groups of devices: which group, which device in it.
GROUPS_AXIS, IN_GROUP_AXIS = "bn_groups", "bn_group"


@dataclasses.dataclass(frozen=True)
class Runner:
    """How per-device functions are mapped over devices, and how data is placed for them.

    Attributes:
      name: 'pmap' or 'shard_map'.
      devices: the devices this process places data on (pmap) or the whole mesh (shard_map).
      put: host pytree with a leading axis of this process's devices → device arrays.
      map: per-device function → mapped function over that leading axis.
      axis_name: the axis (or axes) of the mapped functions that spans all devices: their
        `axis_name` argument.
    """

    name: str
    devices: tuple[jax.Device, ...]
    put: Callable[[Any], Any]
    map: Callable[..., Callable[..., Any]]
    axis_name: AxisName = AXIS

    def prefetch(self, batches: Iterator[Any], size: int = 2) -> Iterator[Any]:
        """Places each host batch on the devices `size − 1` batches ahead of its use, so the
        transfer overlaps the running step."""
        queue: collections.deque = collections.deque()
        for batch in batches:
            queue.append(self.put(batch))
            if len(queue) == size:
                yield queue.popleft()
        yield from queue

    def replicate(self, tree: Any) -> Any:
        """Copies a host pytree to each of this process's devices (leading device axis)."""
        count = sum(d.process_index == jax.process_index() for d in self.devices)
        return self.put(jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * count), tree))


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
    )


def fetch_first(tree: Any) -> Any:
    """The first local device's copy of a device-stacked pytree, as host numpy arrays."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


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

    return Runner(name="pmap", devices=local_devices, put=put, map=map_)


def shard_map_runner(
    devices: list[jax.Device] | None = None, bn_group_size: int | None = None
) -> Runner:
    """`jax.shard_map` inside `jax.jit` over a 1-D mesh of all (global) devices, or `devices`.

    With `bn_group_size` = g, over a (devices / g) × g mesh (`GROUPS_AXIS`, `IN_GROUP_AXIS`)
    instead, for BatchNorm over groups of g consecutive devices (`group_bn_scope`); the mapped
    functions then reduce over both axes (`Runner.axis_name`).
    """
    devices = tuple(devices or jax.devices())
    if bn_group_size is None:
        axes, shape = (AXIS,), (len(devices),)
    else:
        groups = models.device_groups(len(devices), bn_group_size)
        axes, shape = (GROUPS_AXIS, IN_GROUP_AXIS), (len(groups), bn_group_size)
    mesh = jax.sharding.Mesh(
        np.array(devices).reshape(shape),
        axes,
        axis_types=(jax.sharding.AxisType.Auto,) * len(axes),
    )
    axis_name = axes[0] if len(axes) == 1 else axes
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

    return Runner(name="shard_map", devices=devices, put=put, map=map_, axis_name=axis_name)


RUNNERS = {"pmap": pmap_runner, "shard_map": shard_map_runner}


def make_runner(name: str, bn_group_size: int | None = None) -> Runner:
    """The runner `name` ('pmap' or 'shard_map') over all devices. With `bn_group_size` (BN
    over groups of that many devices), shard_map's mesh is two-axis; pmap's groups live in the
    model's BN (`group_bn_scope`)."""
    if name == "shard_map":
        return shard_map_runner(bn_group_size=bn_group_size)
    return RUNNERS[name]()


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
