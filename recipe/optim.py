"""The optimizer of Goyal et al. §5.1: Nesterov SGD with masked, coupled L2 weight decay.

    g ← ∇L(w) + λ · mask ⊙ w           (weight decay inside the loss gradient, Remark 1)
    u ← m · u + g                      (optax.sgd's momentum form)
    w ← w − η_t · (g + m · u)          (Nesterov), or w − η_t · u

Because optax's momentum buffer `u` holds gradients, not learning-rate-scaled updates, a change
of η_t needs no momentum correction (Remark 2): the update already equals Goyal's corrected
form v ← m · (η_{t+1}/η_t) · v + η_{t+1} · g.

The decay λ · mask ⊙ w can come from the optimizer (`optax.add_decayed_weights` in the chain, a
drop-in optax transformation) or from the loss (`recipe.losses.l2_penalty`, Remark 1's own
definition, and faster); `build_optimizer(..., weight_decay_in_loss=True)` gives the latter.

Past Goyal's 8k, the layer-wise adaptive optimizers `lars` (You et al. 2017) and `lamb` (You et
al. 2019) come from optax behind the same builder (`build_optimizer(..., name='lars')`), with
BatchNorm γ/β (and optionally biases) excluded from both the weight decay and the trust ratio,
as in the MLPerf ResNet-50 reference.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recipe import checks, ema, losses, masks, schedules

_INJECTED_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)

OPTIMIZER_NAMES = ("sgd", "lars", "lamb")
"""What `build_optimizer(name=...)` builds: `goyal_sgd`, `lars` or `lamb`."""


class Optimizer(NamedTuple):
    """An optax transformation with the learning-rate schedule that drives it.

    Attributes:
      tx: the optimizer.
      schedule: its learning-rate schedule.
      loss_penalty: None if `tx` applies the weight decay; otherwise `tx` has none and the loss
        must add `loss_penalty(params)`, the masked (λ/2)·Σ‖w‖² (`recipe.losses.l2_penalty`).
    """

    tx: optax.GradientTransformation
    schedule: schedules.GoyalSchedule
    loss_penalty: Callable[[Any], jax.Array] | None = None


def goyal_sgd(
    learning_rate: float | optax.Schedule,
    *,
    weight_decay: float = 1e-4,
    weight_decay_mask: Any = None,
    momentum: float = 0.9,
    nesterov: bool = True,
    accumulation_steps: int = 1,
    ema_decay: float | optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """`chain(add_decayed_weights(λ, mask), sgd(η_t, momentum, nesterov))`, lr readable.

    The SGD is wrapped in `optax.inject_hyperparams`, so the learning rate of the latest update
    is in the optimizer state (`current_learning_rate`). With `accumulation_steps` = a > 1 the
    chain is wrapped in `optax.MultiSteps`: gradients of a micro-batches are averaged and the
    chain runs once, so the schedule (and the weight decay) count real updates.

    Args:
      learning_rate: a finite float > 0, or a schedule of the update count (its value at step 0
        must be a finite number > 0).
      weight_decay: λ >= 0 (1e-4 in the paper); with 0 the chain has no decay step at all
        (use this when the loss carries the decay, `recipe.losses.l2_penalty`).
      weight_decay_mask: a bool pytree or callable (see `recipe.masks.weight_decay_mask`);
        None decays every parameter.
      momentum: m in [0, 1) (0.9 in the paper).
      nesterov: Nesterov momentum (§5.1).
      accumulation_steps: micro-batches per optimizer update, >= 1.
      ema_decay: with a decay (a float, or a schedule of the update count such as
        `recipe.ema.ema_decay(0.9998)`), `recipe.ema.weight_ema` is chained last, inside the
        accumulation, so the average of the weights is taken once per real update and read
        with `recipe.ema.ema_params(opt_state)`; None keeps no average.

    >>> import jax.numpy as jnp
    >>> tx = goyal_sgd(0.1)
    >>> state = tx.init({'w': jnp.ones(2)})
    >>> float(current_learning_rate(state))
    0.10000000149011612
    """
    learning_rate = _injectable_learning_rate(learning_rate)
    checks.check_non_negative("weight_decay", weight_decay)
    checks.check_interval("momentum", momentum, 0.0, 1.0, high_closed=False)
    sgd = optax.inject_hyperparams(optax.sgd)(
        learning_rate=learning_rate, momentum=momentum, nesterov=nesterov
    )
    if weight_decay > 0:
        tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask), sgd)
    else:  # no per-parameter work for a decay of zero (e.g. when the loss carries it)
        tx = optax.chain(sgd)
    return _accumulated(tx, accumulation_steps, ema_decay)


def lars(
    learning_rate: float | optax.Schedule,
    *,
    weight_decay: float = 1e-4,
    mask: Any = None,
    trust_coefficient: float = 0.001,
    momentum: float = 0.9,
    nesterov: bool = False,
    accumulation_steps: int = 1,
    ema_decay: float | optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """LARS (You et al. 2017, arXiv 1708.03888): `optax.lars` with one mask, lr readable.

    Per parameter tensor w (a "layer"), with its gradient g::

        d ← g + λ · w                           (coupled decay, where `mask` is True)
        d ← c · ‖w‖ / ‖d‖ · d                   (trust ratio, where `mask` is True)
        v ← m · v + η_t · d,   w ← w − v        (momentum on the scaled update; Nesterov:
                                                 w ← w − (m · v + η_t · d))

    Leaves where `mask` is False (BatchNorm γ/β, and biases with `decay_bias=False`) get neither
    the decay nor the trust ratio: plain momentum SGD, as in the MLPerf ResNet-50 reference
    (mlcommons/training_results_v0.7, Google/benchmarks/resnet/implementations/
    resnet-research-JAX-tpu-v3-8192/train.py: LARS on the weights, momentum on 'bias'/'scale').

    optax's trust ratio is c · ‖w‖ / ‖g + λw‖; You et al.'s (and the MLPerf reference's) is
    c · ‖w‖ / (‖g‖ + λ‖w‖). Since g and λw add as vectors, optax's is the larger, by
    (‖g‖ + λ‖w‖) / ‖g + λw‖ (√2 when g ⊥ w and ‖g‖ = λ‖w‖; 1 when the decay is negligible).
    The momentum buffer holds learning-rate-scaled updates (as in the paper and the reference),
    so unlike `goyal_sgd` a change of η_t reaches the update through the buffer over
    ~1/(1 − m) steps. Because the decay is added before the trust ratio, an L2 term in the
    loss (`weight_decay=0` here, `recipe.losses.l2_penalty` in the loss) gives the same update.

    Args:
      learning_rate: a float or a schedule of the update count.
      weight_decay: λ >= 0 (MLPerf: 2e-4 below a batch of 32k, 1e-4 above).
      mask: bool pytree or callable (`recipe.masks.weight_decay_mask`): True where the decay and
        the trust ratio apply; None: everywhere.
      trust_coefficient: c > 0 (0.001 in the paper and optax).
      momentum: m in [0, 1).
      nesterov: Nesterov momentum (MLPerf: False).
      accumulation_steps: micro-batches per optimizer update, >= 1 (as `goyal_sgd`).
      ema_decay: a weight EMA chained last (as `goyal_sgd`); None keeps none.

    >>> import jax.numpy as jnp
    >>> tx = lars(0.1)
    >>> state = tx.init({'w': jnp.ones(2)})
    >>> float(current_learning_rate(state))
    0.10000000149011612
    """
    learning_rate = _injectable_learning_rate(learning_rate)
    checks.check_non_negative("weight_decay", weight_decay)
    checks.check_positive("trust_coefficient", trust_coefficient)
    checks.check_interval("momentum", momentum, 0.0, 1.0, high_closed=False)
    mask = True if mask is None else mask
    tx = optax.inject_hyperparams(
        optax.lars, static_args=("weight_decay_mask", "trust_ratio_mask", "nesterov")
    )(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=mask,
        trust_coefficient=trust_coefficient,
        trust_ratio_mask=mask,
        momentum=momentum,
        nesterov=nesterov,
    )
    return _accumulated(tx, accumulation_steps, ema_decay)


def _masked_lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    mask: Any,
) -> optax.GradientTransformation:
    """`optax.lamb` whose trust ratio skips the leaves `mask` leaves out, as its decay does."""
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.masked(optax.scale_by_trust_ratio(), mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def lamb(
    learning_rate: float | optax.Schedule,
    *,
    weight_decay: float = 1e-4,
    mask: Any = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    accumulation_steps: int = 1,
    ema_decay: float | optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """LAMB (You et al. 2019, arXiv 1904.00962): `optax.lamb` with a trust-ratio mask too.

    Per parameter tensor w, with Adam's update a = m̂ / (√v̂ + ε) of its gradient:

        d ← a + λ · w                           (decoupled decay, where `mask` is True)
        d ← ‖w‖ / ‖d‖ · d                       (trust ratio, where `mask` is True)
        w ← w − η_t · d

    Leaves where `mask` is False (BatchNorm γ/β, optionally biases) get the plain Adam update,
    without decay or trust ratio, as the LAMB reference's `exclude_from_layer_adaptation` does;
    `optax.lamb` itself masks the decay only. The decay is decoupled (added after Adam's
    scaling), so it cannot move into the loss: `build_optimizer` refuses `weight_decay_in_loss`.

    Args:
      learning_rate: a float or a schedule of the update count.
      weight_decay: λ >= 0.
      mask: bool pytree or callable (`recipe.masks.weight_decay_mask`): True where the decay and
        the trust ratio apply; None: everywhere (then it equals `optax.lamb`).
      b1, b2: Adam's moment decays, in [0, 1).
      eps: Adam's ε > 0.
      accumulation_steps: micro-batches per optimizer update, >= 1 (as `goyal_sgd`).
      ema_decay: a weight EMA chained last (as `goyal_sgd`); None keeps none.

    >>> import jax.numpy as jnp
    >>> tx = lamb(0.01)
    >>> state = tx.init({'w': jnp.ones(2)})
    >>> float(current_learning_rate(state))
    0.009999999776482582
    """
    learning_rate = _injectable_learning_rate(learning_rate)
    checks.check_non_negative("weight_decay", weight_decay)
    checks.check_interval("b1", b1, 0.0, 1.0, high_closed=False)
    checks.check_interval("b2", b2, 0.0, 1.0, high_closed=False)
    checks.check_positive("eps", eps)
    tx = optax.inject_hyperparams(_masked_lamb, static_args=("mask",))(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=True if mask is None else mask,
    )
    return _accumulated(tx, accumulation_steps, ema_decay)


def _injectable_learning_rate(learning_rate: Any) -> Any:
    """A checked learning rate `optax.inject_hyperparams` puts in the state (`learning_rate`
    must be a finite number > 0 or a schedule starting at one; NumPy scalars become Python
    numbers, which it would otherwise treat as static)."""
    # A GoyalSchedule knows its first value; calling it would run (and compile) jnp code.
    checks.check_learning_rate(
        "learning_rate",
        learning_rate.initial_lr
        if isinstance(learning_rate, schedules.GoyalSchedule)
        else learning_rate,
    )
    return learning_rate.item() if isinstance(learning_rate, np.generic) else learning_rate


def _accumulated(
    tx: optax.GradientTransformation,
    accumulation_steps: int,
    ema_decay: float | optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """`tx`, then the weight EMA when `ema_decay` is given, run once every
    `accumulation_steps` micro-batches on their mean gradient."""
    checks.check_positive_int("accumulation_steps", accumulation_steps)
    if ema_decay is not None:
        tx = optax.chain(tx, ema.weight_ema(ema_decay))
    if accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulation_steps).gradient_transformation()
    return tx


def current_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The learning rate of the latest update (before the first one: the step-0 rate).

    Reads the `inject_hyperparams` state inside `goyal_sgd`'s state, under any wrapping
    (`MultiSteps`, `nnx.Optimizer`).
    """

    def is_injected(node: Any) -> bool:
        return isinstance(node, _INJECTED_STATES)

    injected = [
        node
        for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_injected)
        if is_injected(node)
    ]
    if len(injected) != 1 or "learning_rate" not in injected[0].hyperparams:
        raise ValueError("opt_state must hold exactly one injected learning_rate (use goyal_sgd)")
    return jnp.asarray(injected[0].hyperparams["learning_rate"])


def relative_update_size(updates: Any, params: Any) -> dict[str, jax.Array]:
    """‖Δw‖ / ‖w‖ of each top-level group of `params` (a layer or block of a Flax model), Δw
    the update the optimizer applies (`optax.apply_updates(params, updates)`):

        relative_update_size[g] = sqrt(Σ_{w ∈ g} ‖Δw‖²) / sqrt(Σ_{w ∈ g} ‖w‖²)

    How far one step moves each layer's weights relative to their size: the quantity LARS sets
    per layer (You et al. 2017), and what Goyal et al. give as the reason for warmup (§2.2: the
    linear scaling rule breaks down while the network changes rapidly, early in training).
    Under gradient accumulation the micro-steps that only accumulate apply Δw = 0. A group
    whose weights are all 0 gives 0 for a zero update and inf otherwise. Jit-able; on sharded
    arrays the norms are global.

    Args:
      updates: what the optimizer returned, a pytree like `params`.
      params: the weights the update is applied to (before it).

    Returns:
      {group name: float32 scalar}.

    >>> import jax.numpy as jnp
    >>> params = {"conv": {"kernel": jnp.full((2, 2), 2.0)}, "bn": {"scale": jnp.ones(4)}}
    >>> updates = {"conv": {"kernel": jnp.full((2, 2), 0.2)}, "bn": {"scale": jnp.zeros(4)}}
    >>> {k: round(float(v), 4) for k, v in relative_update_size(updates, params).items()}
    {'conv': 0.1, 'bn': 0.0}
    """
    sizes = {}
    for group, weights in params.items():
        update_sq = _squared_norm(updates[group])
        weight_sq = _squared_norm(weights)
        sizes[group] = jnp.where(
            weight_sq > 0,
            jnp.sqrt(update_sq / jnp.where(weight_sq > 0, weight_sq, 1.0)),
            jnp.where(update_sq > 0, jnp.inf, 0.0),
        )
    return sizes


def _squared_norm(tree: Any) -> jax.Array:
    """‖tree‖², summed in float32 whatever the leaves' dtype (optax's sums bfloat16 in bfloat16)."""
    as_float32 = jax.tree.map(lambda leaf: leaf.astype(jnp.float32), tree)
    return optax.tree_utils.tree_norm(as_float32, squared=True)


def build_optimizer(
    model_or_variables: Any,
    *,
    batch_size: int,
    steps_per_epoch: int,
    epochs: float,
    base_lr: float = 0.1,
    base_batch_size: int = 256,
    warmup: str = "gradual",
    warmup_epochs: float = 5,
    decay: str = "step",
    decay_epochs: Sequence[float] | None = None,
    decay_factor: float = 0.1,
    poly_power: float = 2.0,
    poly_end_lr: float = 0.0,
    warmup_init_lr: float | None = None,
    weight_decay: float = 1e-4,
    decay_bias: bool = True,
    momentum: float = 0.9,
    nesterov: bool = True,
    accumulation_steps: int = 1,
    weight_decay_in_loss: bool = False,
    name: str = "sgd",
    trust_coefficient: float = 0.001,
    beta2: float = 0.999,
    ema_decay: float = 0.0,
    ema_warmup: bool = True,
) -> Optimizer:
    """The whole §5.1 optimizer for a model: schedule, BN-free weight-decay mask, Nesterov SGD.

    With `name='lars'` or `'lamb'` the same schedule and mask drive `lars` or `lamb` instead,
    the mask then excluding BN γ/β (and biases with `decay_bias=False`) from the trust ratio
    too.

    The keyword arguments mirror a config section, so `build_optimizer(variables,
    **config.optimizer, batch_size=..., steps_per_epoch=..., epochs=...)` works (the trainer's
    section also holds `warmup_start`, which it turns into `warmup_init_lr` itself).

    Under gradient accumulation, the linear scaling rule and the schedule use the *effective*
    batch: an update sees `batch_size · accumulation_steps` examples, and an epoch has
    `steps_per_epoch / accumulation_steps` updates (a whole number: see `steps_per_epoch`).

    Args:
      model_or_variables: linen variables (with 'batch_stats') or an NNX module, for the mask.
      batch_size: global batch of one micro-batch (all devices and hosts).
      steps_per_epoch: micro-batches per epoch, a multiple of `accumulation_steps`.
      epochs: length of the run. It and `base_lr`, `base_batch_size`, `warmup`,
        `warmup_epochs`, `decay`, `decay_epochs`, `decay_factor`, `poly_power`, `poly_end_lr`,
        `warmup_init_lr` are the arguments of `recipe.schedules.goyal_schedule`, which
        documents them.
      weight_decay, momentum, nesterov, accumulation_steps: see `goyal_sgd`; for 'lamb',
        `momentum` is Adam's b1 and `nesterov` must be False.
      decay_bias: False excludes biases from weight decay too (and from the trust ratio).
      weight_decay_in_loss: False puts the masked decay in `tx`; True leaves it out of `tx`
        and returns it as `loss_penalty`, for the train step to add to its loss (same updates
        for 'sgd' and 'lars'; what `python -m train` does). 'lamb' refuses it: its
        decay is decoupled from the gradient.
      name: one of `OPTIMIZER_NAMES`: 'sgd' (`goyal_sgd`), 'lars' or 'lamb'.
      trust_coefficient: LARS's c (see `lars`).
      beta2: LAMB's b2 (see `lamb`).
      ema_decay: the target decay of a weight EMA in [0, 1] (`recipe.ema.weight_ema`, kept in
        the optimizer state, for any `name`); 0 keeps none.
      ema_warmup: warm the EMA's decay up as timm's `ModelEmaV3` does (`recipe.ema.ema_decay`).

    Returns:
      `Optimizer(tx, schedule, loss_penalty)`.
    """
    checks.check_choice("name", name, OPTIMIZER_NAMES)
    if name == "lamb" and weight_decay_in_loss:
        raise ValueError(
            "weight_decay_in_loss must be False for name='lamb': LAMB's decay is decoupled "
            "(added after Adam's scaling), so an L2 term in the loss is a different optimizer"
        )
    if name == "lamb" and nesterov:
        raise ValueError("nesterov must be False for name='lamb' (LAMB has no Nesterov form)")
    checks.check_positive_int("accumulation_steps", accumulation_steps)
    checks.check_positive_int("steps_per_epoch", steps_per_epoch)
    if steps_per_epoch % accumulation_steps:
        raise ValueError(
            f"steps_per_epoch ({steps_per_epoch}) must be a multiple of accumulation_steps "
            f"({accumulation_steps}), so that an epoch is a whole number of updates and the "
            "schedule's epochs are the data's; drop each epoch's last partial update "
            "(recipe.data.steps_per_epoch(num_examples, batch_size, accumulation_steps))"
        )
    updates_per_epoch = steps_per_epoch // accumulation_steps
    schedule = schedules.goyal_schedule(
        batch_size=batch_size * accumulation_steps,
        steps_per_epoch=updates_per_epoch,
        epochs=epochs,
        base_lr=base_lr,
        base_batch_size=base_batch_size,
        warmup=warmup,
        warmup_epochs=warmup_epochs,
        decay=decay,
        decay_epochs=decay_epochs,
        decay_factor=decay_factor,
        poly_power=poly_power,
        poly_end_lr=poly_end_lr,
        warmup_init_lr=warmup_init_lr,
    )
    mask = masks.weight_decay_mask(model_or_variables, decay_bias=decay_bias)
    averaging = ema.ema_decay(ema_decay, warmup=ema_warmup) if ema_decay else None
    decay_in_tx = 0.0 if weight_decay_in_loss else weight_decay
    if name == "lars":
        tx = lars(
            schedule,
            weight_decay=decay_in_tx,
            mask=mask,
            trust_coefficient=trust_coefficient,
            momentum=momentum,
            nesterov=nesterov,
            accumulation_steps=accumulation_steps,
            ema_decay=averaging,
        )
    elif name == "lamb":
        tx = lamb(
            schedule,
            weight_decay=weight_decay,
            mask=mask,
            b1=momentum,
            b2=beta2,
            accumulation_steps=accumulation_steps,
            ema_decay=averaging,
        )
    else:
        tx = goyal_sgd(
            schedule,
            weight_decay=decay_in_tx,
            weight_decay_mask=None if weight_decay_in_loss else mask,
            momentum=momentum,
            nesterov=nesterov,
            accumulation_steps=accumulation_steps,
            ema_decay=averaging,
        )
    loss_penalty = None
    if weight_decay_in_loss:
        checks.check_non_negative("weight_decay", weight_decay)
        loss_penalty = functools.partial(losses.l2_penalty, weight_decay=weight_decay, mask=mask)
    return Optimizer(tx=tx, schedule=schedule, loss_penalty=loss_penalty)
