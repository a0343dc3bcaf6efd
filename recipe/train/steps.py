"""The train and eval steps, written per device with a named axis, and the runners that map them.

One function per device: it sees its own slice of the batch, computes BN statistics over it
(or over the whole global batch when the model's BN has the axis name), and averages the
gradients with `lax.pmean` over `AXIS`, which is Remark 3's normalisation by the global batch.
The same function runs under `jax.pmap` and under `jax.shard_map` inside `jax.jit` over a 1-D
device mesh; both runners hold the state with a leading device axis (per-device BN statistics
differ between devices) and take batches shaped (devices, per-device batch, ...).
"""

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from recipe import losses, optim

AXIS = "batch"
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: the micro-step count, weights, BN statistics, optimizer."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState

    @classmethod
    def create(cls, variables: Any, tx: optax.GradientTransformation) -> "TrainState":
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(variables["params"]),
        )


def init_variables(model: nn.Module, image_shape: tuple[int, ...], seed: int) -> Any:
    """The model's initial variables (the Goyal init lives in the model's initialisers)."""
    init = jax.jit(functools.partial(model.init, train=False))
    return init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32))


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    label_smoothing: float,
    skip_nonfinite: bool,
    loss_penalty: Callable[[Any], jax.Array] | None = None,
    normalize: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimizer step on one device's slice of the global batch.

    Args:
      state: this device's state.
      batch: {'image': [n, H, W, C] float32 (or uint8, with `normalize`), 'label': [n] int32}.
      model: the linen model (its BatchNorm decides the statistics scope).
      tx: the optimizer.
      label_smoothing: ε of the loss.
      skip_nonfinite: if the global loss, any update or any device's new BN statistics are not
        finite, keep the old state (as dynamic loss scaling does) instead of applying the update.
      loss_penalty: a function of the parameters added to the loss that is differentiated
        (`recipe.optim.Optimizer.loss_penalty`: the weight decay, when `tx` has none).
      normalize: maps `batch['image']` to the model's input inside the step, e.g.
        `recipe.data.normalize_images` with the dataset's statistics bound, for uint8 batches.

    Returns:
      The new state and metrics averaged over all devices: loss (the label-smoothed
      cross-entropy, without the penalty), accuracy, learning_rate and `finite` (1.0 if the
      loss, the update and every device's new BN statistics were finite).
    """

    images = batch["image"] if normalize is None else normalize(batch["image"])

    def loss_fn(params):
        logits, new_model_state = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        loss = losses.cross_entropy(logits, batch["label"], label_smoothing)
        objective = loss if loss_penalty is None else loss + loss_penalty(params)
        return objective, (loss, logits, new_model_state["batch_stats"])

    (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    grads = lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    metrics = {
        "loss": lax.pmean(loss, AXIS),
        "accuracy": lax.pmean(jnp.mean(jnp.argmax(logits, -1) == batch["label"]), AXIS),
        "learning_rate": optim.current_learning_rate(opt_state),
    }
    # The updates carry both failure modes of the weights: NaN/inf gradients, and finite
    # gradients times a learning rate that overflowed. BN statistics can overflow on their own
    # (a huge activation gives an infinite running variance while the loss is still finite);
    # they differ per device, so all devices agree on the verdict through `pmin`.
    finite = lax.pmin(
        _all_finite((metrics["loss"], updates, batch_stats)).astype(jnp.int32), AXIS
    ).astype(bool)
    metrics["finite"] = finite.astype(jnp.float32)
    if skip_nonfinite:
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), new_state, state
        )
    return new_state, metrics


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves]))


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    num_classes: int,
    normalize: Callable[[jax.Array], jax.Array] | None = None,
) -> Metrics:
    """Sums of loss, top-1 (and top-5) hits and example count over the real (mask = 1) examples
    of all devices' slices; BN uses the running statistics. `normalize` as in `train_step`."""
    images = batch["image"] if normalize is None else normalize(batch["image"])
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
    )
    mask = batch["mask"]
    loss = losses.per_example_cross_entropy(logits, batch["label"])
    sums = {
        "loss": jnp.sum(loss * mask),
        "top1": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }
    if num_classes > 10:
        top5 = lax.top_k(logits, 5)[1]
        sums["top5"] = jnp.sum(jnp.any(top5 == batch["label"][:, None], -1) * mask)
    return lax.psum(sums, AXIS)


def average_batch_stats(state: TrainState) -> TrainState:
    """Averages BN running statistics over devices (before evaluation and checkpointing)."""
    return state.replace(batch_stats=lax.pmean(state.batch_stats, AXIS))


@dataclasses.dataclass(frozen=True)
class Runner:
    """How per-device functions are mapped over devices, and how data is placed for them.

    Attributes:
      name: 'pmap' or 'shard_map'.
      devices: the devices this process places data on (pmap) or the whole mesh (shard_map).
      put: host pytree with a leading axis of this process's devices → device arrays.
      map: per-device function → mapped function over that leading axis.
    """

    name: str
    devices: tuple[jax.Device, ...]
    put: Callable[[Any], Any]
    map: Callable[..., Callable[..., Any]]

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


def shard_map_runner(devices: list[jax.Device] | None = None) -> Runner:
    """`jax.shard_map` inside `jax.jit` over a 1-D mesh of all (global) devices, or `devices`."""
    devices = tuple(devices or jax.devices())
    mesh = jax.sharding.Mesh(np.array(devices), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P(AXIS))

    def put(tree):
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
        )

    def map_(fn, donate_argnums=()):
        def per_shard(*args):
            # Each shard holds a leading axis of one device: drop it, run, put it back.
            squeezed = jax.tree_util.tree_map(lambda x: x[0], args)
            return jax.tree_util.tree_map(lambda x: x[None], fn(*squeezed))

        mapped = jax.shard_map(per_shard, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS))
        return jax.jit(mapped, donate_argnums=donate_argnums)

    return Runner(name="shard_map", devices=devices, put=put, map=map_)


RUNNERS = {"pmap": pmap_runner, "shard_map": shard_map_runner}
