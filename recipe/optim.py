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
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recipe import checks, losses, masks, schedules

_INJECTED_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


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

    >>> import jax.numpy as jnp
    >>> tx = goyal_sgd(0.1)
    >>> state = tx.init({'w': jnp.ones(2)})
    >>> float(current_learning_rate(state))
    0.10000000149011612
    """
    # A GoyalSchedule knows its first value; calling it would run (and compile) jnp code.
    checks.check_learning_rate(
        "learning_rate",
        learning_rate.initial_lr
        if isinstance(learning_rate, schedules.GoyalSchedule)
        else learning_rate,
    )
    if isinstance(learning_rate, np.generic):  # inject_hyperparams treats these as static
        learning_rate = learning_rate.item()
    checks.check_non_negative("weight_decay", weight_decay)
    checks.check_interval("momentum", momentum, 0.0, 1.0, high_closed=False)
    checks.check_positive_int("accumulation_steps", accumulation_steps)
    sgd = optax.inject_hyperparams(optax.sgd)(
        learning_rate=learning_rate, momentum=momentum, nesterov=nesterov
    )
    if weight_decay > 0:
        tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask), sgd)
    else:  # no per-parameter work for a decay of zero (e.g. when the loss carries it)
        tx = optax.chain(sgd)
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
    weight_decay: float = 1e-4,
    decay_bias: bool = True,
    momentum: float = 0.9,
    nesterov: bool = True,
    accumulation_steps: int = 1,
    weight_decay_in_loss: bool = False,
) -> Optimizer:
    """The whole §5.1 optimizer for a model: schedule, BN-free weight-decay mask, Nesterov SGD.

    The keyword arguments mirror a config section, so `build_optimizer(variables,
    **config.optimizer, batch_size=..., steps_per_epoch=..., epochs=...)` works.

    Under gradient accumulation, the linear scaling rule and the schedule use the *effective*
    batch: an update sees `batch_size · accumulation_steps` examples, and an epoch has
    `steps_per_epoch / accumulation_steps` updates (a whole number: see `steps_per_epoch`).

    Args:
      model_or_variables: linen variables (with 'batch_stats') or an NNX module, for the mask.
      batch_size: global batch of one micro-batch (all devices and hosts).
      steps_per_epoch: micro-batches per epoch, a multiple of `accumulation_steps`.
      epochs, base_lr, base_batch_size, warmup, warmup_epochs, decay, decay_epochs,
        decay_factor: see `recipe.schedules.goyal_schedule`.
      weight_decay, momentum, nesterov, accumulation_steps: see `goyal_sgd`.
      decay_bias: False excludes biases from weight decay too.
      weight_decay_in_loss: False puts the masked decay in `tx`; True leaves it out of `tx`
        and returns it as `loss_penalty`, for the train step to add to its loss (same updates;
        what `python -m recipe.train` does).

    Returns:
      `Optimizer(tx, schedule, loss_penalty)`.
    """
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
    )
    mask = masks.weight_decay_mask(model_or_variables, decay_bias=decay_bias)
    tx = goyal_sgd(
        schedule,
        weight_decay=0.0 if weight_decay_in_loss else weight_decay,
        weight_decay_mask=None if weight_decay_in_loss else mask,
        momentum=momentum,
        nesterov=nesterov,
        accumulation_steps=accumulation_steps,
    )
    loss_penalty = None
    if weight_decay_in_loss:
        checks.check_non_negative("weight_decay", weight_decay)
        loss_penalty = functools.partial(losses.l2_penalty, weight_decay=weight_decay, mask=mask)
    return Optimizer(tx=tx, schedule=schedule, loss_penalty=loss_penalty)
