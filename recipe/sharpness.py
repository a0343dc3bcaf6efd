"""The loss's sharpness λ_max, the Hessian's top eigenvalue, and the optimizer's stability edge.

Why warmup works, measured. On a quadratic L(w) = ½ λ w², gradient descent w ← w − η λ w is
stable only while η·λ < 2. A network's loss is locally a quadratic whose steepest direction has
curvature λ_max = the largest eigenvalue of the Hessian ∇²L, the *sharpness*; training at a
learning rate η with η·λ_max above the optimizer's threshold makes the loss blow up along that
direction until the weights move somewhere flatter (a "catapult") or diverge. Cohen et al. 2021
("Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability", ICLR) show that
full-batch training drives λ_max up to the threshold and then holds η·λ_max there; Kalra &
Barkeshli 2024 ("Why Warmup the Learning Rate? Underlying Mechanisms and Improvements",
NeurIPS) show that warmup lets the sharpness fall while η rises, so the network reaches a large η
without crossing the threshold, whereas the same η applied at once overshoots it.

λ_max is found by power iteration on Hessian-vector products, each one forward-over-reverse
differentiation (`jax.jvp` of `jax.grad`), which costs about two gradient evaluations:

    v₀ random, ‖v₀‖ = 1;    w_k = H v_k;    λ_k = v_kᵀ w_k;    v_{k+1} = w_k / ‖w_k‖

λ_k is the Rayleigh quotient, which converges to the eigenvalue of largest magnitude at the rate
(abs(λ₂) / abs(λ₁))^(2k); when that is negative, power iteration on H − λ·I finds the top one. The
residual ‖w_k − λ_k v_k‖ / abs(λ_k) says how far v_k is from an eigenvector.

The threshold η·λ_max < threshold of the optimizer (`stability_threshold`), with momentum β in
optax's form (v ← β v + g) on the quadratic:

    plain gradient descent         2
    heavy ball    w ← w − η v      2 + 2β                (3.8 at β = 0.9)
    Nesterov      w ← w − η (g + β v)   (2 + 2β) / (1 + 2β)   (1.357 at β = 0.9)

>>> import jax, jax.numpy as jnp
>>> loss = lambda w: 0.5 * (3.0 * w[0] ** 2 + 1.0 * w[1] ** 2)  # spectrum {3, 1}
>>> found = top_hessian_eigenvalue(loss, jnp.ones(2), jax.random.key(0), iterations=20)
>>> round(float(found.eigenvalue), 4)
3.0
>>> round(stability_threshold(momentum=0.9, nesterov=True), 3)
1.357
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

AxisName = str | tuple[str, ...]


class Sharpness(NamedTuple):
    """What `top_hessian_eigenvalue` found.

    Attributes:
      eigenvalue: λ_max, the last iteration's Rayleigh quotient (a float32 scalar).
      estimates: the Rayleigh quotient λ_k of each iteration, shape (iterations,): it rises to
        λ_max; its last relative changes say whether more iterations would move it.
      residuals: ‖H v_k − λ_k v_k‖ / abs(λ_k) of each iteration, shape (iterations,): 0 at an exact
        eigenvector.
      eigenvector: the unit vector H v_k / ‖H v_k‖ after the last iteration (a pytree like the
        parameters), to warm-start the next measurement (`init_vector`) when the parameters have
        moved little.
    """

    eigenvalue: jax.Array
    estimates: jax.Array
    residuals: jax.Array
    eigenvector: Any


def hessian_vector_product(
    loss_fn: Callable[[Any], jax.Array], params: Any, axis_name: AxisName | None = None
) -> Callable[[Any], Any]:
    """v ↦ ∇²L(params) v by forward-over-reverse differentiation: jvp(grad L, (params,), (v,)).

    Under `pmap` or `shard_map` with `axis_name`, each device's `loss_fn` is the loss on its own
    slice of the batch and the products are averaged with `lax.pmean`: the Hessian of the global
    loss, the mean of the per-device losses (with equal slices, the loss over the whole batch).

    Args:
      loss_fn: a scalar function of the parameters (the batch and any BN statistics bound in it).
      params: where to differentiate.
      axis_name: the mapped axis (or axes) over all devices; None on one device.

    >>> import jax.numpy as jnp
    >>> hvp = hessian_vector_product(lambda w: jnp.sum(w**3), jnp.array([1.0, 2.0]))
    >>> hvp(jnp.array([1.0, 1.0])).tolist()  # diag(6 w) v
    [6.0, 12.0]
    """
    grad_fn = jax.grad(loss_fn)

    def product(vector: Any) -> Any:
        _, tangent = jax.jvp(grad_fn, (params,), (vector,))
        return tangent if axis_name is None else lax.pmean(tangent, axis_name)

    return product


def fixed_batch_loss(
    apply_fn: Callable[..., Any],
    batch_stats: Any,
    inputs: jax.Array,
    loss_of_outputs: Callable[[jax.Array], jax.Array],
    **apply_kwargs: Any,
) -> Callable[[Any], jax.Array]:
    """The training-mode loss of one fixed batch as a function of the parameters alone.

        L(θ) = loss_of_outputs(apply_fn({'params': θ, 'batch_stats': s}, inputs, mutable=...))

    A Flax model with BatchNorm is applied in training mode (pass e.g. `train=True` in
    `apply_kwargs`): each BN layer normalises with the statistics of `inputs`, which depend on θ
    and are differentiated through, as in the training step; the running averages the call would
    update are thrown away, so measuring changes no state. `batch_stats` is only read (its
    running averages are not used in training mode; {} for a model without BN).

    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> model = nn.Dense(1)
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 2)))["params"]
    >>> loss = fixed_batch_loss(model.apply, {}, jnp.ones((4, 2)), lambda y: jnp.mean(y**2))
    >>> loss(params).shape
    ()
    """

    def loss_fn(params: Any) -> jax.Array:
        outputs, _ = apply_fn(
            {"params": params, "batch_stats": batch_stats},
            inputs,
            mutable=["batch_stats"],
            **apply_kwargs,
        )
        return loss_of_outputs(outputs)

    return loss_fn


def _dot(a: Any, b: Any) -> jax.Array:
    # A sum of products, not jnp.vdot: vdot flattens, which an array split over an explicitly
    # sharded mesh's axis cannot be without a layout of the result.
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.sum(jnp.conj(x) * y).real, a, b))
    return sum(leaves, jnp.zeros((), jnp.float32)).astype(jnp.float32)


def _laid_out_like(tree: Any, like: Any) -> Any:
    """`tree` split over an explicitly sharded mesh as `like` is (parameters held split, as
    FSDP holds them, give Hessian-vector products split alike), so that the power iteration's
    vector keeps one layout; elsewhere `tree` itself."""

    def one(x: jax.Array, reference: Any) -> jax.Array:
        spec = jax.typeof(reference).sharding.spec
        return jax.sharding.reshard(x, spec) if any(a is not None for a in spec) else x

    return jax.tree.map(one, tree, like)


def _scaled(tree: Any, factor: jax.Array) -> Any:
    return jax.tree.map(lambda x: (x * factor).astype(x.dtype), tree)


def random_unit_vector(key: jax.Array, like: Any) -> Any:
    """A random unit vector (standard normal, normalised) in the space of the pytree `like`.

    >>> import jax, jax.numpy as jnp
    >>> v = random_unit_vector(jax.random.key(0), {"a": jnp.zeros(3), "b": jnp.zeros(4)})
    >>> round(float(sum(jnp.sum(x**2) for x in jax.tree.leaves(v))), 5)
    1.0
    """
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(key, len(leaves))
    normals = [
        jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype)
        for k, x in zip(keys, leaves, strict=True)
    ]
    vector = treedef.unflatten(normals)
    return _scaled(vector, lax.rsqrt(_dot(vector, vector)))


def top_hessian_eigenvalue(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    key: jax.Array,
    *,
    iterations: int = 20,
    axis_name: AxisName | None = None,
    init_vector: Any | None = None,
) -> Sharpness:
    """λ_max of ∇²L(params) by power iteration on Hessian-vector products (see the module doc).

        w_k = H v_k,    λ_k = v_kᵀ w_k,    v_{k+1} = w_k / ‖w_k‖

    Power iteration converges to the eigenvalue of largest magnitude. When that one is negative
    (strong negative curvature, e.g. in a loss spike), a second run on H − λ·I, shifted by it,
    finds the largest eigenvalue λ_max; it costs another `iterations` products, and `estimates`
    and `residuals` are then the second run's. Jit-able: `lax.scan`s of `iterations` products,
    each about two gradient evaluations.
    With BatchNorm, bind the batch statistics in `loss_fn` the way the training step does: the
    model in training mode with `mutable=['batch_stats']`, the updated running averages thrown
    away. Then the loss seen is the training loss of the fixed batch, normalised by that batch's
    statistics (a function of the parameters, differentiated as in training), and nothing in the
    model's state changes. Under `pmap`/`shard_map` pass `axis_name` and the same `key` on every
    device (a replicated argument): the start vector, every product and so the result are then
    the same on all of them.

    Args:
      loss_fn: a scalar function of the parameters alone.
      params: where the Hessian is taken.
      key: for the random start vector (ignored with `init_vector`).
      iterations: the number of Hessian-vector products, ≥ 1.
      axis_name: the mapped axis (or axes) over all devices, for the Hessian of the global loss.
      init_vector: a start vector like `params` (e.g. the last measurement's `eigenvector`).

    Returns:
      A `Sharpness`: the eigenvalue, each iteration's estimate and residual, the eigenvector.

    >>> import jax, jax.numpy as jnp
    >>> loss = lambda w: 0.5 * w @ jnp.diag(jnp.array([5.0, 2.0, 1.0])) @ w
    >>> found = top_hessian_eigenvalue(loss, jnp.zeros(3), jax.random.key(1), iterations=30)
    >>> round(float(found.eigenvalue), 3), bool(found.residuals[-1] < 1e-3)
    (5.0, True)
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations!r}")
    product = hessian_vector_product(loss_fn, params, axis_name)
    start = random_unit_vector(key, params) if init_vector is None else init_vector
    start = _laid_out_like(_scaled(start, lax.rsqrt(_dot(start, start))), params)

    def power_iteration(shift: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        """Power iteration on H − shift·I; the estimates and residuals are of H."""

        def iteration(vector, _):
            image = jax.tree.map(lambda w, v: w - shift * v, product(vector), vector)
            estimate = _dot(vector, image)
            residual_vector = jax.tree.map(lambda w, v: w - estimate * v, image, vector)
            residual = jnp.sqrt(_dot(residual_vector, residual_vector))
            next_vector = _scaled(image, lax.rsqrt(_dot(image, image)))
            return next_vector, (estimate + shift, residual / jnp.abs(estimate + shift))

        eigenvector, (estimates, residuals) = lax.scan(iteration, start, None, length=iterations)
        return eigenvector, estimates, residuals

    dominant = power_iteration(jnp.zeros((), jnp.float32))
    # The largest |λ| is negative: every eigenvalue of H − λ·I is ≥ 0, the largest λ_max − λ.
    eigenvector, estimates, residuals = lax.cond(
        dominant[1][-1] < 0, lambda: power_iteration(dominant[1][-1]), lambda: dominant
    )
    return Sharpness(
        eigenvalue=estimates[-1],
        estimates=estimates,
        residuals=residuals,
        eigenvector=eigenvector,
    )


def stability_threshold(momentum: float = 0.0, nesterov: bool = False) -> float:
    """The largest η·λ at which the optimizer is stable on the quadratic ½ λ w² (see module doc).

    With v ← β v + g (optax.sgd's momentum), heavy ball w ← w − η v has the characteristic
    polynomial z² − (1 + β − ηλ) z + β, whose roots stay inside the unit circle while
    ηλ < 2 + 2β; Nesterov w ← w − η (g + β v) has z² − (1 + β − ηλ(1 + β)) z + β(1 − ηλ),
    stable while ηλ < (2 + 2β) / (1 + 2β). β = 0 is plain gradient descent: 2. Cohen et al.
    2021 state the same thresholds for momentum (as λ_max < threshold / η).

    Args:
      momentum: β in [0, 1).
      nesterov: Nesterov momentum (optax.sgd(nesterov=True), the recipe's optimizer).

    >>> stability_threshold(), stability_threshold(0.9), round(stability_threshold(0.9, True), 4)
    (2.0, 3.8, 1.3571)
    """
    if not 0.0 <= momentum < 1.0:  # NaN fails too
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    beta = float(momentum)
    return (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta) if nesterov else 2.0 + 2.0 * beta
