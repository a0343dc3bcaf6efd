"""The gradient noise scale B_simple (McCandlish et al. 2018, arXiv 1812.06162, App. A).

With per-example gradients of mean G and covariance Σ, the mean gradient over a batch of b
examples, G_b, has E‖G_b‖² = ‖G‖² + tr(Σ)/b. Two batch sizes b < B give two such equations and,
solved for the two unknowns, unbiased estimates (their Appendix A):

    ‖G‖²  ≈ (B · ‖G_B‖² − b · ‖G_b‖²) / (B − b)
    tr(Σ) ≈ (‖G_b‖² − ‖G_B‖²) / (1/b − 1/B)

    B_simple = tr(Σ) / ‖G‖²

Under data parallelism both gradients are already in the step: each device's gradient over its
own b examples, and their all-reduced mean over the global batch B = devices · b, so the
measurement costs the squared norms and one scalar all-reduce of ‖G_b‖² (averaged over the
devices: each is an estimate). Single estimates are very noisy, so numerator and denominator
are averaged separately over steps with an exponential moving average (EMA) before dividing,
as the paper advises (`noise_scale_ema`).

How to read it: B_simple approximates the critical batch size B_crit, where the number of
steps S and examples E to reach a given loss trade off as S = S_min (1 + B_noise/B) and
E = E_min (1 + B/B_noise). Well below B_noise, doubling the batch halves the number of steps
(perfect scaling); well above it, a bigger batch barely cuts the steps and spends examples.

>>> import jax.numpy as jnp
>>> ema = noise_scale_ema(decay=0.0)
>>> state = ema.update(ema.init(), small_sq_norm=3.0, big_sq_norm=1.5, small_batch=8,
...                    big_batch=32)
>>> float(simple_noise_scale(state))  # tr(Σ) = 1.5 / (1/8 − 1/32) = 16, ‖G‖² = 1
16.0
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax


class NoiseScaleState(NamedTuple):
    """EMAs of the two unbiased estimates, and the weight that debiases them.

    Attributes:
      grad_sq: EMA of the ‖G‖² estimates (not yet debiased).
      trace: EMA of the tr(Σ) estimates (not yet debiased).
      weight: 1 − decay^steps, the total weight of the EMAs (0 before the first update).
    """

    grad_sq: jax.Array
    trace: jax.Array
    weight: jax.Array


class NoiseScaleEMA(NamedTuple):
    """`init() -> state` and `update(state, small_sq_norm, big_sq_norm, small_batch,
    big_batch) -> state` of `noise_scale_ema`."""

    init: Callable[[], NoiseScaleState]
    update: Callable[[NoiseScaleState, jax.Array, jax.Array, float, float], NoiseScaleState]


def unbiased_estimates(
    small_sq_norm: jax.Array, big_sq_norm: jax.Array, small_batch: float, big_batch: float
) -> tuple[jax.Array, jax.Array]:
    """(‖G‖², tr(Σ)) from ‖G_b‖² and ‖G_B‖² (McCandlish et al. App. A).

        ‖G‖²  ≈ (B · ‖G_B‖² − b · ‖G_b‖²) / (B − b)
        tr(Σ) ≈ (‖G_b‖² − ‖G_B‖²) / (1/b − 1/B)

    Both are unbiased when G_b and G_B are means of i.i.d. per-example gradients (single
    estimates can be negative).

    Args:
      small_sq_norm: ‖G_b‖², the squared norm of a gradient over b examples (or the mean of
        several such, e.g. one per device).
      big_sq_norm: ‖G_B‖², the squared norm of the gradient over B examples.
      small_batch: b.
      big_batch: B > b.

    >>> g2, trace = unbiased_estimates(3.0, 1.5, 8, 32)
    >>> float(g2), float(trace)
    (1.0, 16.0)
    """
    if not 0 < small_batch < big_batch:
        raise ValueError(
            f"small_batch must be > 0 and < big_batch ({big_batch}), got {small_batch!r}"
        )
    b, big = float(small_batch), float(big_batch)
    grad_sq = (big * big_sq_norm - b * small_sq_norm) / (big - b)
    trace = (small_sq_norm - big_sq_norm) / (1.0 / b - 1.0 / big)
    return jnp.asarray(grad_sq, jnp.float32), jnp.asarray(trace, jnp.float32)


def noise_scale_ema(decay: float = 0.99) -> NoiseScaleEMA:
    """EMAs of the unbiased ‖G‖² and tr(Σ) estimates, kept separately (McCandlish et al.).

        x̄ ← decay · x̄ + (1 − decay) · x    for x = ‖G‖², tr(Σ);    w ← decay · w + (1 − decay)

    x̄ / w is the debiased average (as Adam's bias correction); B_simple = tr̄(Σ) / ‖Ḡ‖², in
    which w cancels. The state is three float32 scalars: checkpoint it with the train state
    and a resumed run continues the same averages.

    Args:
      decay: in [0, 1); 0.99 averages over about the last 100 steps.

    >>> ema = noise_scale_ema(0.5)
    >>> state = ema.update(ema.init(), 3.0, 1.5, 8, 32)
    >>> float(state.weight)
    0.5

    From a Flax NNX model's gradients (`nnx.grad` gives an `nnx.State`, a pytree) over a small
    batch of b and a big batch of B examples:

    >>> import jax, optax
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    >>> x, y = jax.random.normal(jax.random.key(1), (32, 3)), jnp.ones((32, 1))
    >>> grad = nnx.grad(lambda m, x, y: jnp.mean((m(x) - y) ** 2))
    >>> norm = lambda g: optax.tree_utils.tree_norm(g, squared=True)
    >>> state = ema.update(ema.init(), norm(grad(model, x[:8], y[:8])), norm(grad(model, x, y)),
    ...                    8, 32)
    >>> bool(jnp.isfinite(simple_noise_scale(state)))
    True
    """
    if not 0.0 <= decay < 1.0:  # NaN fails too
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")

    def init() -> NoiseScaleState:
        zero = jnp.zeros((), jnp.float32)
        return NoiseScaleState(grad_sq=zero, trace=zero, weight=zero)

    def update(
        state: NoiseScaleState,
        small_sq_norm: jax.Array,
        big_sq_norm: jax.Array,
        small_batch: float,
        big_batch: float,
    ) -> NoiseScaleState:
        grad_sq, trace = unbiased_estimates(small_sq_norm, big_sq_norm, small_batch, big_batch)
        return NoiseScaleState(
            grad_sq=decay * state.grad_sq + (1.0 - decay) * grad_sq,
            trace=decay * state.trace + (1.0 - decay) * trace,
            weight=decay * state.weight + (1.0 - decay),
        )

    return NoiseScaleEMA(init=init, update=update)


def smoothed_estimates(state: NoiseScaleState) -> tuple[jax.Array, jax.Array]:
    """The debiased averages (‖G‖², tr(Σ)); NaN before the first update."""
    return state.grad_sq / state.weight, state.trace / state.weight


def simple_noise_scale(state: NoiseScaleState) -> jax.Array:
    """B_simple = tr(Σ) / ‖G‖² from the averaged estimates (NaN before the first update)."""
    return state.trace / state.grad_sq


def squared_norms(local_grads: Any, mean_grads: Any, axis_name: Any) -> tuple[jax.Array, jax.Array]:
    """(‖G_b‖² averaged over the devices, ‖G_B‖²) inside a per-device (pmap/shard_map) step.

    `local_grads` is this device's gradient over its b examples, `mean_grads` their mean over
    `axis_name` (what the step applies, B = devices · b examples). The cost: two squared norms
    and one scalar all-reduce.
    """
    local = lax.pmean(optax.tree_utils.tree_norm(local_grads, squared=True), axis_name)
    return local, optax.tree_utils.tree_norm(mean_grads, squared=True)
