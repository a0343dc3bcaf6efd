"""The train and eval steps, written once for every runner (`train.runners` maps them).

Under `jax.pmap` and `jax.shard_map` a step is a per-device function: it sees its own slice of
the batch, computes BN statistics over it (or over the whole global batch when the model's BN
has the axis name), and averages the gradients with `lax.pmean` over `AXIS`, which is Remark
3's normalisation by the global batch. Under the jit runner the same function sees the global
batch (`axis_name=None`: every collective is then the identity): the gradient is the global
batch's, and the model's BatchNorm computes the per-worker statistics over groups of the
global batch (`train.runners.global_bn_scope`), so the two views compute the same step.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from recipe import ema as ema_lib
from recipe import losses, mixing, models, noise_scale, optim, precise_bn
from recipe.noise_scale import NoiseScaleEMA, NoiseScaleState

AXIS = "batch"
AxisName = str | tuple[str, ...]


def _pmean(x: Any, axis_name: AxisName | None) -> Any:
    """`lax.pmean` over the devices, or `x` itself for a function of the global batch."""
    return x if axis_name is None else lax.pmean(x, axis_name)


def _psum(x: Any, axis_name: AxisName | None) -> Any:
    return x if axis_name is None else lax.psum(x, axis_name)


def _pmin(x: Any, axis_name: AxisName | None) -> Any:
    return x if axis_name is None else lax.pmin(x, axis_name)


def axis_size(axis_name: AxisName | None) -> int:
    """The number of devices along `axis_name` (1 for a function of the global batch)."""
    return 1 if axis_name is None else lax.axis_size(axis_name)


# The metrics `train_step(noise_scale_ema=...)` adds: B_simple, |G|² and tr(Σ) from the EMAs.
NOISE_SCALE_METRICS = ("noise_scale", "noise_grad_sq", "noise_trace")
# The metrics `train_step(relative_update=True)` adds: `relative_update/<group>`, ‖Δw‖/‖w‖ of
# each top-level parameter group (`recipe.relative_update_size`), and their largest.
RELATIVE_UPDATE = "relative_update"
RELATIVE_UPDATE_MAX = "relative_update_max"
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: the micro-step count, weights, BN statistics, optimizer, and
    the gradient noise scale's averages (None when it is not measured)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    noise_scale: NoiseScaleState | None = None

    @classmethod
    def create(
        cls,
        variables: Any,
        tx: optax.GradientTransformation,
        noise_scale_ema: NoiseScaleEMA | None = None,
    ) -> "TrainState":
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(variables["params"]),
            noise_scale=None if noise_scale_ema is None else noise_scale_ema.init(),
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
    axis_name: AxisName | None = AXIS,
    noise_scale_ema: NoiseScaleEMA | None = None,
    normalize: Callable[[jax.Array], jax.Array] | None = None,
    mix: Callable[..., tuple[jax.Array, jax.Array]] | None = None,
    relative_update: bool = False,
) -> tuple[TrainState, Metrics]:
    """One optimizer step on one device's slice of the global batch (or, with `axis_name=None`,
    on the global batch).

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
      axis_name: the axis (or axes) spanning all devices (`Runner.axis_name`); None: the
        function sees the global batch (the jit runner).
      noise_scale_ema: measure the gradient noise scale (`recipe.noise_scale`) into
        `state.noise_scale` (created with `TrainState.create(..., noise_scale_ema)`). The small
        batch is each device's, the big one the global batch; on one device, or on the global
        batch, the two halves of its batch (which costs a second backward pass). |G|² is of
        the gradient the optimizer is given, so it includes the L2 term when `loss_penalty`
        carries the decay: that term is part of the objective being minimised, and being
        noise-free it adds to |G|² and not to tr(Σ). Exact when examples are independent;
        with BN statistics shared across examples (any BN scope) the coupled examples make it
        approximate.
      normalize: maps `batch['image']` to the model's input inside the step, e.g.
        `recipe.data.normalize_images` with the dataset's statistics bound, for uint8 batches.
      mix: Mixup / CutMix of this device's slice of normalised images before the forward pass
        (`mixing_fn`), `mix(step, images, labels, axis_name) -> (images, soft targets)`; the
        targets carry the label smoothing, so the loss adds none.
      relative_update: measure ‖Δw‖/‖w‖ of each top-level parameter group, Δw the update this
        step computes (`recipe.relative_update_size`; the same on every device); only read.

    Returns:
      The new state and metrics averaged over all devices: loss (the label-smoothed
      cross-entropy, without the penalty), accuracy, learning_rate and `finite` (1.0 if the
      loss, the update and every device's new BN statistics were finite); with
      `noise_scale_ema`, also noise_scale (B_simple), noise_grad_sq (|G|²) and noise_trace
      (tr(Σ)), from the averaged estimates; with `relative_update`, relative_update/<group>
      and relative_update_max.
    """

    images = batch["image"] if normalize is None else normalize(batch["image"])
    targets, smoothing = batch["label"], label_smoothing
    if mix is not None:
        images, targets = mix(state.step, images, targets, axis_name)
        smoothing = 0.0

    def loss_terms(params):
        """The one forward pass: (per-example losses, penalty), (logits, new BN statistics)."""
        logits, new_model_state = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        per_example = losses.per_example_cross_entropy(logits, targets, smoothing)
        penalty = jnp.zeros((), jnp.float32) if loss_penalty is None else loss_penalty(params)
        return (per_example, penalty), (logits, new_model_state["batch_stats"])

    def loss_fn(params):
        (per_example, penalty), aux = loss_terms(params)
        loss = jnp.mean(per_example)
        return loss + penalty, (loss, *aux)

    split_one_device = noise_scale_ema is not None and axis_size(axis_name) == 1
    if split_one_device:
        loss, logits, batch_stats, grads, half_grads = _whole_and_half_batch_gradients(
            loss_terms, state.params
        )
    else:
        (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
    local_grads = grads
    grads = _pmean(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        noise_scale=state.noise_scale,
    )
    metrics = {
        "loss": _pmean(loss, axis_name),
        "accuracy": _pmean(jnp.mean(jnp.argmax(logits, -1) == batch["label"]), axis_name),
        "learning_rate": optim.current_learning_rate(opt_state),
    }
    if relative_update:
        sizes = optim.relative_update_size(updates, state.params)
        metrics.update({f"{RELATIVE_UPDATE}/{group}": size for group, size in sizes.items()})
        metrics[RELATIVE_UPDATE_MAX] = jnp.max(jnp.stack(list(sizes.values())))
    if noise_scale_ema is not None:
        per_device = batch["label"].shape[0]
        if split_one_device:  # the halves' gradients G_1 and 2·G − G_1, and G
            other_half = jax.tree_util.tree_map(lambda g, h: 2.0 * g - h, grads, half_grads)
            observation = (
                0.5 * (_squared_norm(half_grads) + _squared_norm(other_half)),
                _squared_norm(grads),
                per_device // 2,
                per_device,
            )
        else:
            observation = (
                *noise_scale.squared_norms(local_grads, grads, axis_name),
                per_device,
                per_device * axis_size(axis_name),
            )
        averages = noise_scale_ema.update(state.noise_scale, *observation)
        new_state = new_state.replace(noise_scale=averages)
        grad_sq, trace = noise_scale.smoothed_estimates(averages)
        values = (noise_scale.simple_noise_scale(averages), grad_sq, trace)
        metrics.update(zip(NOISE_SCALE_METRICS, values, strict=True))
    # The updates carry both failure modes of the weights: NaN/inf gradients, and finite
    # gradients times a learning rate that overflowed. BN statistics can overflow on their own
    # (a huge activation gives an infinite running variance while the loss is still finite);
    # they differ per device, so all devices agree on the verdict through `pmin`.
    finite = _pmin(
        _all_finite((metrics["loss"], updates, batch_stats)).astype(jnp.int32), axis_name
    ).astype(bool)
    metrics["finite"] = finite.astype(jnp.float32)
    if skip_nonfinite:
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), new_state, state
        )
    return new_state, metrics


def _whole_and_half_batch_gradients(
    loss_terms: Callable[[Any], tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, Any]]],
    params: Any,
) -> tuple[jax.Array, jax.Array, Any, Any, Any]:
    """(loss, logits, batch_stats, gradient over the batch, gradient over its first half) from
    one forward pass of `train_step`'s `loss_terms` and two backward passes (the noise scale
    on a single device): the same loss, on the same (possibly mixed) targets, as the plain
    gradient's."""
    (per_example, penalty), backward, (logits, batch_stats) = jax.vjp(
        loss_terms, params, has_aux=True
    )
    per_device = per_example.shape[0]
    if per_device % 2:
        raise ValueError(
            "measuring the gradient noise scale on one device splits its batch in halves: the "
            f"batch must be even, got {per_device}"
        )
    # Cotangents shaped (and, under shard_map, device-varying) like the outputs they weigh.
    one = jnp.ones_like(penalty)
    whole = jnp.ones_like(per_example) / per_device
    first_half = 2.0 * whole * (jnp.arange(per_device) < per_device // 2)
    (grads,) = backward((whole, one))
    (half_grads,) = backward((first_half, one))
    return jnp.mean(per_example), logits, batch_stats, grads, half_grads


def _squared_norm(tree: Any) -> jax.Array:
    return optax.tree_utils.tree_norm(tree, squared=True)


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves]))


def mixing_fn(
    seed: int,
    *,
    num_classes: int,
    label_smoothing: float,
    per_device: bool,
    stop_step: int | None = None,
    workers: int | None = None,
    **options: float,
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """`train_step`'s `mix`: `recipe.mixing.mixup_cutmix` keyed by (seed, step), so a resumed
    run mixes every step as the uninterrupted one did.

    Each device mixes its own slice: an image is paired with another of the same device's
    (`mixup_cutmix` pairs the batch with its reverse).

    Args:
      seed: the run's seed.
      num_classes: K.
      label_smoothing: ε, applied once to the mixed targets.
      per_device: each device draws its own λ and box (the key folds in the device index
        along the step's `axis_name`); False: one draw for the global batch.
      stop_step: the micro-step from which batches are no longer mixed (timm's
        `--mixup-off-epoch` × steps per epoch); None mixes every step.
      workers: for a step on the global batch (`axis_name=None`, the jit runner), Goyal's k:
        the batch is mixed as that many workers' slices would be, each paired within itself
        and, with `per_device`, with a draw of its own.
      **options: `mixup_alpha`, `cutmix_alpha`, `switch_prob`, `prob` of `mixup_cutmix`.
    """

    def mix_slice(step, images, labels, axis_name):
        key = mixing.mixing_key(seed, step, axis_name if per_device else None)
        enabled = True if stop_step is None else step < stop_step
        return mixing.mixup_cutmix(
            key,
            images,
            labels,
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            enabled=enabled,
            **options,
        )

    def mix_workers(step, images, labels):
        """The global batch mixed as `workers` devices mix their slices: the same draws (keys
        folded with each worker's index, or one for all) and partners within each slice."""
        key = mixing.mixing_key(seed, step)
        if per_device:
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(workers))
        else:
            keys = jnp.broadcast_to(key, (workers,))
        enabled = True if stop_step is None else step < stop_step
        draws = jax.vmap(
            lambda k: mixing.draw_mixing(k, *images.shape[1:3], enabled=enabled, **options)
        )(keys)
        sliced = [x.reshape(workers, -1, *x.shape[1:]) for x in (images, labels)]
        # The draws lie where their slices do (vmap maps its inputs' first axes alike).
        spmd = _first_axis_sharding(sliced[0])
        draws = _split_over_groups(draws, spmd)
        apply = functools.partial(
            mixing.apply_mixing, num_classes=num_classes, label_smoothing=label_smoothing
        )
        mixed, targets = jax.vmap(apply, spmd_axis_name=spmd)(draws, *sliced)
        return mixed.reshape(images.shape), targets.reshape(-1, num_classes)

    def mix(step, images, labels, axis_name=AXIS):
        if axis_name is not None or workers is None:
            return mix_slice(step, images, labels, axis_name)
        return mix_workers(step, images, labels)

    return mix


def _split_over_groups(tree: Any, axes: AxisName | None) -> Any:
    """Every array of `tree` split along its first axis (the groups of a global batch) over the
    mesh axes `axes` (None: whole)."""
    return jax.tree.map(lambda x: jax.sharding.reshard(x, P(axes, *[None] * (x.ndim - 1))), tree)


def _mesh_axes_of_size(size: int) -> AxisName | None:
    """The axes of the current (explicit) mesh over which `size` groups of a batch split over
    the whole mesh lie: all of them when each device holds whole groups, else the leading axes
    that hold `size` devices in all (None for one group)."""
    mesh = jax.sharding.get_abstract_mesh()
    names = tuple(mesh.axis_names)
    if size > 1 and size % math.prod(mesh.shape[name] for name in names) == 0:
        return names[0] if len(names) == 1 else names
    count = 1
    for end, name in enumerate(names, start=1):
        count *= mesh.shape[name]
        if count == size:
            return names[0] if end == 1 else names[:end]
    return None


def _first_axis_sharding(x: jax.Array) -> AxisName | None:
    """The mesh axis (or axes) an array's first axis is split over, or None."""
    spec = jax.typeof(x).sharding.spec
    return spec[0] if spec else None


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    num_classes: int,
    axis_name: AxisName | None = AXIS,
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
    return _psum(sums, axis_name)


def average_batch_stats(state: TrainState, axis_name: AxisName | None = AXIS) -> TrainState:
    """Averages BN running statistics over devices (before evaluation and checkpointing); the
    global view's statistics are one already."""
    return state.replace(batch_stats=_pmean(state.batch_stats, axis_name))


class PreciseBNSteps(NamedTuple):
    """Precise BN's three functions for a runner to map (`precise_bn_steps`)."""

    init: Callable[[TrainState], Any]
    update: Callable[[Any, TrainState, Batch], Any]
    finish: Callable[[TrainState, Any], TrainState]


def precise_bn_steps(
    model: Any,
    *,
    axis_name: AxisName | None,
    ema: bool,
    normalize: Callable[[jax.Array], jax.Array] | None,
    skip_nonfinite: bool,
    groups: int | None = None,
) -> PreciseBNSteps:
    """`precise_bn_init`, `precise_bn_update` and `with_precise_bn` for `model`, per device
    under the per-device runners (`axis_name`); on the global batch (`axis_name=None`) with
    `groups`: each of that many equal groups of the global batch gets its own statistics
    (`model` is the model as one group runs it) and they are combined over the groups, as the
    per-device runners combine their devices'."""
    if axis_name is not None:
        estimator = model_precise_bn(model, axis_name=axis_name)
        return PreciseBNSteps(
            init=functools.partial(precise_bn_init, estimator=estimator),
            update=functools.partial(
                precise_bn_update, estimator=estimator, ema=ema, normalize=normalize
            ),
            finish=functools.partial(
                with_precise_bn,
                estimator=estimator,
                ema=ema,
                keep_if_nonfinite=axis_name if skip_nonfinite else None,
            ),
        )
    estimator = model_precise_bn(model, axis_name=AXIS)

    def init(state):
        stats = jax.vmap(lambda _: estimator.init(state.batch_stats))(jnp.arange(groups))
        return _split_over_groups(stats, _mesh_axes_of_size(groups))

    def update(stats, state, batch):
        images = batch["image"] if normalize is None else normalize(batch["image"])
        grouped = images.reshape(groups, -1, *images.shape[1:])
        # vmap maps its inputs' first axes alike: the statistics' groups lie where the batch's
        # do; and takes no unmapped value split over the axis it maps (`shard_params`).
        spmd = _first_axis_sharding(grouped)
        stats = _split_over_groups(stats, spmd)
        weights = jax.tree.map(
            lambda x: jax.sharding.reshard(x, P()), evaluated_weights(state, ema=ema)
        )
        variables = {"params": weights, "batch_stats": state.batch_stats}
        return jax.vmap(
            lambda stats, images: estimator.update(stats, variables, images),
            axis_name=AXIS,
            spmd_axis_name=spmd,
        )(stats, grouped)

    def finish(state, stats):
        def combine(stats, running):
            return jax.vmap(
                lambda stats: precise_statistics(
                    stats,
                    running,
                    estimator=estimator,
                    keep_if_nonfinite=AXIS if skip_nonfinite else None,
                ),
                out_axes=None,
                axis_name=AXIS,
            )(stats)

        # With the mesh's axes automatic: JAX 0.12 cannot batch a collective (the groups'
        # pmean) over arrays whose type carries an explicit sharding.
        batch_stats = jax.sharding.auto_axes(combine, out_sharding=P())(stats, state.batch_stats)
        return state.replace(params=evaluated_weights(state, ema=ema), batch_stats=batch_stats)

    return PreciseBNSteps(init=init, update=update, finish=finish)


def model_precise_bn(model: models.ResNet, axis_name: AxisName = AXIS) -> precise_bn.PreciseBN:
    """Precise BN for `model` under a runner: the population statistics of per-device,
    grouped and cross-device BN, the mean of the ghost-batch statistics for ghost BN (see
    `recipe.precise_bn`), combined over all devices along `axis_name` (`Runner.axis_name`)."""
    return precise_bn.precise_bn_estimator(
        functools.partial(model.apply, train=True, mutable=["batch_stats"]),
        momentum=model.bn_momentum,
        variance="batch_mean" if model.bn_scope.ghost_batch_size else "population",
        axis_name=axis_name,
    )


def evaluated_weights(state: TrainState, *, ema: bool) -> Any:
    """The weights an evaluation scores: the trained ones, or their EMA (`recipe.ema`)."""
    return ema_lib.ema_params(state.opt_state) if ema else state.params


def precise_bn_init(state: TrainState, *, estimator: precise_bn.PreciseBN):
    return estimator.init(state.batch_stats)


def precise_bn_update(
    stats: precise_bn.PreciseBNState,
    state: TrainState,
    batch: Batch,
    *,
    estimator: precise_bn.PreciseBN,
    ema: bool,
    normalize: Callable[[jax.Array], jax.Array] | None = None,
) -> precise_bn.PreciseBNState:
    """Adds this device's slice of one batch to the precise BN statistics of the weights
    (`normalize` as in `train_step`)."""
    variables = {"params": evaluated_weights(state, ema=ema), "batch_stats": state.batch_stats}
    images = batch["image"] if normalize is None else normalize(batch["image"])
    return estimator.update(stats, variables, images)


def with_precise_bn(
    state: TrainState,
    stats: precise_bn.PreciseBNState,
    *,
    estimator: precise_bn.PreciseBN,
    ema: bool,
    keep_if_nonfinite: AxisName | None = None,
) -> TrainState:
    """The state with the precise BN statistics (`precise_statistics`) and, with `ema`, the
    averaged weights."""
    batch_stats = precise_statistics(
        stats, state.batch_stats, estimator=estimator, keep_if_nonfinite=keep_if_nonfinite
    )
    return state.replace(params=evaluated_weights(state, ema=ema), batch_stats=batch_stats)


def precise_statistics(
    stats: precise_bn.PreciseBNState,
    running: Any,
    *,
    estimator: precise_bn.PreciseBN,
    keep_if_nonfinite: AxisName | None = None,
) -> Any:
    """The precise BN statistics `stats` accumulated, combined over the devices.

    With `keep_if_nonfinite` (the runner's axis name; `on_nonfinite='skip'`), statistics that
    overflowed on any device (finite weights can still give an infinite variance) are not
    taken: the `running` averages the guarded train step left finite are kept."""
    batch_stats = estimator.result(stats)
    if keep_if_nonfinite is None:
        return batch_stats
    finite = lax.pmin(_all_finite(batch_stats).astype(jnp.int32), keep_if_nonfinite)
    return jax.tree_util.tree_map(
        lambda new, old: jnp.where(finite.astype(bool), new, old), batch_stats, running
    )
