"""An exponential moving average of the weights, as an optax transformation.

timm's `ModelEmaV3` and torchvision's `--model-ema` keep, beside the trained weights w, an
average e that is evaluated instead of (or beside) them:

    e_1 = w_1,   e_n = d_n · e_{n−1} + (1 − d_n) · w_n      after the n-th update

The first update copies the weights (d_1 = 0 in both). With timm's decay warmup
(`--model-ema-warmup`), d_n grows towards the target decay as 1 − (1 + (n − 1)/γ)^(−p), so that
the average does not cling to the random initialisation early on; torchvision reaches the same
end by restarting the average during the learning-rate warmup and adjusting the decay to its
update interval (`--model-ema-steps`). `weight_ema` takes any decay schedule of n.

The average lives in the optimizer state, so it is checkpointed and restored with it and a
resumed run continues it exactly. Chain `weight_ema` last, after the transformations that form
the update (inside `optax.MultiSteps`, so that it averages once per real update).

BatchNorm statistics are not averaged: the running averages belong to the trained weights'
trajectory, and an average of them does not describe the averaged weights. Evaluate the average
with statistics recomputed for it (`recipe.precise_bn`).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from recipe import checks


class WeightEmaState(NamedTuple):
    """Attributes: count, the updates averaged so far (int32); ema, the average e_count."""

    count: jax.Array
    ema: Any


def ema_decay(
    decay: float,
    *,
    warmup: bool = True,
    warmup_gamma: float = 1.0,
    warmup_power: float = 2.0 / 3.0,
    min_decay: float = 0.0,
) -> optax.Schedule:
    """timm's `ModelEmaV3.get_decay`, as a schedule of n, the count of updates so far (1-based).

        d_n = 0                                                   for n = 1
        d_n = clip(1 − (1 + (n − 1)/γ)^(−p), min_decay, decay)    with warmup, n >= 2
        d_n = decay                                               without warmup, n >= 2

    timm calls it with `step = num_updates` after each update (`update_after_step = 0`).
    γ = 1, p = 2/3 (timm's defaults) reach 0.999 after 31.6k updates; p = 3/4 after 10k.

    Args:
      decay: the target decay, in [0, 1].
      warmup: timm's `use_warmup` (`--model-ema-warmup`); timm's class default is False.
      warmup_gamma: γ > 0 (`warmup_gamma`, Crowson's inv_gamma).
      warmup_power: p > 0.
      min_decay: the floor of the warmed-up decay, in [0, decay].

    >>> schedule = ema_decay(0.99)
    >>> [round(float(schedule(n)), 4) for n in (1, 2, 9, 10_000)]
    [0.0, 0.37, 0.7689, 0.99]
    """
    checks.check_in_unit_interval("decay", decay)
    checks.check_positive("warmup_gamma", warmup_gamma)
    checks.check_positive("warmup_power", warmup_power)
    checks.check_in_unit_interval("min_decay", min_decay)
    if min_decay > decay:
        raise ValueError(f"min_decay ({min_decay}) must not exceed decay ({decay})")

    def schedule(count):
        steps = jnp.asarray(count, jnp.float32) - 1.0
        if warmup:
            warmed = 1.0 - (1.0 + steps / warmup_gamma) ** -warmup_power
            target = jnp.clip(warmed, min_decay, decay)
        else:
            target = jnp.float32(decay)
        return jnp.where(steps <= 0, jnp.float32(0.0), target).astype(jnp.float32)

    return schedule


def weight_ema(decay: float | optax.Schedule) -> optax.GradientTransformation:
    """Keeps e_n = d_n · e_{n−1} + (1 − d_n) · w_n of the weights after each update.

    The updates pass through unchanged; the new weights w_n = params + updates are averaged
    into the state (computed as e + (1 − d)(w − e), a lerp as in timm). Read the average with
    `ema_params(opt_state)`.

    Args:
      decay: a schedule of the update count n (1-based), e.g. `ema_decay(0.9998)` (timm's
        warmup); or a float: timm's decay without warmup (the first update copies, then
        `decay` every update).

    Returns:
      An optax transformation; its `update` needs `params`.

    >>> import jax.numpy as jnp
    >>> tx = optax.chain(optax.sgd(1.0), weight_ema(0.5))
    >>> params = {"w": jnp.array(0.0)}
    >>> state = tx.init(params)
    >>> for _ in range(3):  # w: 1, 2, 3; e: 1, 1.5, 2.25
    ...     updates, state = tx.update({"w": jnp.array(-1.0)}, state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> float(ema_params(state)["w"])
    2.25
    """
    schedule = ema_decay(decay, warmup=False) if not callable(decay) else decay

    def init(params: Any) -> WeightEmaState:
        return WeightEmaState(
            count=jnp.zeros((), jnp.int32), ema=jax.tree_util.tree_map(jnp.array, params)
        )

    def update(updates: Any, state: WeightEmaState, params: Any = None):
        if params is None:
            raise ValueError("weight_ema needs the weights: call update(updates, state, params)")
        count = state.count + 1
        keep = schedule(count)
        new_params = optax.apply_updates(params, updates)
        ema = jax.tree_util.tree_map(
            lambda e, w: (e + (1.0 - keep) * (w - e)).astype(e.dtype), state.ema, new_params
        )
        return updates, WeightEmaState(count=count, ema=ema)

    return optax.GradientTransformation(init, update)


def ema_params(opt_state: optax.OptState) -> Any:
    """The weight average held in `opt_state` by `weight_ema` (under any wrapping).

    With Flax NNX, the `nnx.Optimizer` keeps it: `ema_params(optimizer.opt_state)` is an
    `nnx.State` of the model's parameters, to load into a copy of the model with
    `nnx.update` (or `recipe.nnx.from_linen_variables`):

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, use_bias=False, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(
    ...     model, optax.chain(optax.sgd(1.0), weight_ema(0.5)), wrt=nnx.Param)
    >>> grads = nnx.State({"kernel": nnx.Param(jnp.ones((2, 1)))})
    >>> before = model.kernel[...]
    >>> for _ in range(2):  # w1 = w0 − 1, w2 = w0 − 2; e2 = (w1 + w2) / 2 = w0 − 1.5
    ...     _ = optimizer.update(model, grads)
    >>> (ema_params(optimizer.opt_state)["kernel"][...] - (before - 1.5)).round(5).tolist()
    [[0.0], [0.0]]

    Raises:
      ValueError: if `opt_state` holds no `weight_ema` state, or more than one.
    """

    def is_ema(node: Any) -> bool:
        return isinstance(node, WeightEmaState)

    found = [node for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_ema) if is_ema(node)]
    if len(found) != 1:
        raise ValueError(
            f"opt_state must hold exactly one weight_ema state, found {len(found)} (chain "
            "recipe.ema.weight_ema into the optimizer)"
        )
    return found[0].ema
