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
residual ‖w_k − λ_k v_k‖ / abs(λ_k) says how far v_k is from an eigenvector. The Lanczos
iteration (`method='lanczos'`) makes the same products into the largest eigenvalue of H on the
space they span, which converges much faster when the top eigenvalues lie close together, as in
a network's Hessian (`top_hessian_eigenvalue`).

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

from recipe import checks

AxisName = str | tuple[str, ...]


class Sharpness(NamedTuple):
    """What `top_hessian_eigenvalue` found.

    Attributes:
      eigenvalue: λ_max, the last iteration's estimate (a float32 scalar).
      estimates: each iteration's estimate, shape (iterations,): power iteration's Rayleigh
        quotient λ_k, or Lanczos's largest Ritz value after k products; it rises to λ_max, and
        its last relative changes say whether more iterations would move it.
      residuals: ‖H v_k − λ_k v_k‖ / abs(λ_k) of each iteration's estimate and vector, shape
        (iterations,): 0 at an exact eigenvector.
      eigenvector: the unit estimate of the top eigenvector after the last iteration (a pytree
        like the parameters), to warm-start the next measurement (`init_vector`) when the
        parameters have moved little.
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


METHODS = ("power", "lanczos")
# Lanczos: what is left of H q after reorthogonalisation, relative to ‖H q‖, below which it is
# rounding (a breakdown) rather than a new direction.
_BREAKDOWN = 1e-5


def top_hessian_eigenvalue(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    key: jax.Array,
    *,
    iterations: int = 20,
    axis_name: AxisName | None = None,
    init_vector: Any | None = None,
    method: str = "power",
    unroll: int | bool = 1,
) -> Sharpness:
    """λ_max of ∇²L(params) from `iterations` Hessian-vector products (see the module doc).

    'power' (the default) is power iteration,

        w_k = H v_k,    λ_k = v_kᵀ w_k,    v_{k+1} = w_k / ‖w_k‖

    which converges to the eigenvalue of largest magnitude. When that one is negative (strong
    negative curvature, e.g. in a loss spike), a second run on H − λ·I, shifted by it, finds
    the largest eigenvalue λ_max; it costs another `iterations` products, and `estimates` and
    `residuals` are then the second run's. Jit-able: `lax.scan`s of `iterations` products, each
    about two gradient evaluations; it holds two vectors the size of the parameters.

    'lanczos' is the Lanczos iteration with full reorthogonalisation (Golub & Van Loan,
    "Matrix Computations", §10.1; Ghorbani et al. 2019 measure neural-network Hessians so):
    the k products span a Krylov space q_0, …, q_{k−1}, in which H is the tridiagonal T_k
    (diagonal α_j = q_jᵀ H q_j, off-diagonal β_j = ‖H q_j − Σ_i (q_iᵀ H q_j) q_i‖), and the
    largest eigenvalue θ of T_k (its Ritz value) is the estimate of λ_max, with residual
    ‖H y − θ y‖ / abs(θ) = β_k · abs(s_k) / abs(θ) for its Ritz vector y = Σ_j s_j q_j. From the
    same products it converges far faster than power iteration when the top eigenvalues lie
    close together, as they do in a network's Hessian (power iteration's error shrinks by
    (λ₂/λ₁)² per product, Lanczos's at a rate set by the top gap relative to the whole
    spectrum's width; Saad, "Numerical Methods for Large Eigenvalue Problems", §6.6), and it
    finds the largest eigenvalue whatever the sign of the others, with no second run. It holds
    all `iterations` + 1 basis vectors (memory: `iterations` + 1 times the parameters); a
    `lax.fori_loop` of the products, each reorthogonalised against the basis.

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
      method: 'power' or 'lanczos'.
      unroll: the loop of products' unrolling, as in `lax.scan` (True: all of them, one
        program with `iterations` products in a row). On XLA:CPU a loop of products runs
        several times slower than the same products unrolled (20 products of BENCHMARKS.md
        §10's ResNet-8: about 8× slower), while the unrolled program takes longer to compile
        (about 4× there); on an accelerator the loop costs little and unrolling only
        lengthens the compile.

    Returns:
      A `Sharpness`: the eigenvalue, each iteration's estimate and residual, the eigenvector.

    >>> import jax, jax.numpy as jnp
    >>> loss = lambda w: 0.5 * w @ jnp.diag(jnp.array([5.0, 2.0, 1.0])) @ w
    >>> found = top_hessian_eigenvalue(loss, jnp.zeros(3), jax.random.key(1), iterations=30)
    >>> round(float(found.eigenvalue), 3), bool(found.residuals[-1] < 1e-3)
    (5.0, True)
    >>> close = lambda w: 0.5 * w @ jnp.diag(jnp.linspace(1.0, 2.0, 50)) @ w  # no gap at the top
    >>> key = jax.random.key(0)
    >>> power = top_hessian_eigenvalue(close, jnp.zeros(50), key, iterations=20)
    >>> lanczos = top_hessian_eigenvalue(close, jnp.zeros(50), key, iterations=20, method="lanczos")
    >>> round(float(power.eigenvalue), 2), round(float(lanczos.eigenvalue), 3)
    (1.9, 2.0)
    >>> bool(lanczos.residuals[-1] < 0.01 < power.residuals[-1])
    True
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    product = hessian_vector_product(loss_fn, params, axis_name)
    start = random_unit_vector(key, params) if init_vector is None else init_vector
    start = _laid_out_like(_scaled(start, lax.rsqrt(_dot(start, start))), params)
    if method == "lanczos":
        state = lax.fori_loop(
            0, iterations, lambda _, state: _lanczos_step(state, product),
            _lanczos_start(start, iterations), unroll=unroll,
        )  # fmt: skip
        return _lanczos_result(state)

    def power_iteration(shift: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        """Power iteration on H − shift·I; the estimates and residuals are of H."""

        def iteration(vector, _):
            image = jax.tree.map(lambda w, v: w - shift * v, product(vector), vector)
            estimate = _dot(vector, image)
            residual_vector = jax.tree.map(lambda w, v: w - estimate * v, image, vector)
            residual = jnp.sqrt(_dot(residual_vector, residual_vector))
            next_vector = _scaled(image, lax.rsqrt(_dot(image, image)))
            return next_vector, (estimate + shift, residual / jnp.abs(estimate + shift))

        eigenvector, (estimates, residuals) = lax.scan(
            iteration, start, None, length=iterations, unroll=unroll
        )
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


class _LanczosState(NamedTuple):
    """The Lanczos iteration between its products (`_lanczos_start`, `_lanczos_step`).

    Attributes:
      basis: the orthonormal vectors q_0, q_1, …: a pytree like the parameters whose leaves
        have a leading axis of `iterations` + 1 (rows not reached yet are 0).
      alpha: the diagonal of T, α_j = q_jᵀ H q_j, shape (iterations,).
      beta: its off-diagonal, β_j = ‖H q_j − Σ_i (q_iᵀ H q_j) q_i‖, shape (iterations,).
      in_space: whether row j of T belongs to the Krylov space (no breakdown before it).
      count: the products made so far (an int32 scalar).
    """

    basis: Any
    alpha: jax.Array
    beta: jax.Array
    in_space: jax.Array
    count: jax.Array


def _lanczos_start(start: Any, iterations: int) -> _LanczosState:
    """The Lanczos state before its first product, from a unit start vector like the
    parameters; `iterations` products follow (`_lanczos_step`)."""
    # Zeros like each leaf, sharded like it (the jit runner's split parameters), stacked.
    basis = jax.tree.map(lambda x: jnp.stack([x] + [jnp.zeros_like(x)] * iterations), start)
    # 0s that vary over shard_map's axes wherever the start vector does (a per-device key): the
    # loop's carry keeps the types its body gives α, β and the flags, which come from it.
    zeros = jnp.zeros(iterations, jnp.float32) + 0.0 * _dot(start, start)
    return _LanczosState(
        basis=basis,
        alpha=zeros,
        beta=zeros,
        in_space=(zeros != 0) | (jnp.arange(iterations) == 0),
        count=jnp.zeros((), jnp.int32),
    )


def _lanczos_step(state: _LanczosState, product: Callable[[Any], Any]) -> _LanczosState:
    """One Lanczos iteration: the product H q_j of the last basis vector, reorthogonalised
    against the whole basis (twice: in float32 the three-term recurrence alone loses
    orthogonality within a few steps), gives α_j, β_j and q_{j+1}. `product` is v ↦ H v
    (`hessian_vector_product`). A breakdown (what is left of H q_j is rounding: the space holds
    an invariant subspace, e.g. of a Hessian with fewer distinct eigenvalues than iterations)
    makes T exact: the rows after it leave the space and their vectors stay 0."""
    j = state.count
    vector = jax.tree.map(lambda b: b[j], state.basis)
    image = product(vector)
    size = jnp.sqrt(_dot(image, image))
    alpha = _dot(vector, image)
    for _ in range(2):
        # Rows not reached yet are 0: their coefficients are 0.
        coefficients = _stacked_dots(state.basis, image)
        image = jax.tree.map(
            lambda w, b, c=coefficients: w - jnp.tensordot(c, b, axes=1).astype(w.dtype),
            image,
            state.basis,
        )
    beta = jnp.sqrt(_dot(image, image))
    live = state.in_space[j] & (beta > _BREAKDOWN * size)
    following = _scaled(image, jnp.where(live, 1.0 / jnp.where(live, beta, 1.0), 0.0))
    iterations = state.alpha.shape[0]
    return _LanczosState(
        basis=jax.tree.map(lambda b, q: b.at[j + 1].set(q), state.basis, following),
        alpha=state.alpha.at[j].set(alpha),
        beta=state.beta.at[j].set(beta),
        in_space=state.in_space.at[jnp.minimum(j + 1, iterations - 1)].set(
            jnp.where(j + 1 < iterations, live, state.in_space[iterations - 1])
        ),
        count=j + 1,
    )


def _stacked_dots(basis: Any, vector: Any) -> jax.Array:
    """(q_iᵀ v)_i for the basis rows, shape (iterations + 1,)."""
    leaves = jax.tree.leaves(
        jax.tree.map(lambda b, v: jnp.sum(b * v[None], axis=tuple(range(1, b.ndim))), basis, vector)
    )
    return sum(leaves).astype(jnp.float32)


def _lanczos_result(state: _LanczosState) -> Sharpness:
    """λ_max and its Ritz vector from the Lanczos state after its products: for each k the
    largest eigenvalue θ_k of T_k (T's leading k rows), with residual β_k · abs(s_k) / abs(θ_k),
    s the eigenvector of T_k (`top_hessian_eigenvalue`)."""
    alpha, beta, in_space = state.alpha, state.beta, state.in_space
    iterations = alpha.shape[0]
    # T_k for k = 1 … iterations at once: T's leading k rows, the others decoupled and moved
    # below its spectrum (Gershgorin's bound), so that each T_k's largest eigenvalue is its own.
    scale = jnp.max(jnp.abs(alpha) * in_space) + 2.0 * jnp.max(beta * in_space)
    floor = -2.0 * scale - 1e-30
    rows = jnp.arange(iterations)
    leading = (rows[None, :] <= rows[:, None]) & in_space[None, :]  # [k, row]
    diagonals = jnp.where(leading, alpha[None, :], floor)
    couplings = jnp.where(leading[:, 1:], beta[None, :-1], 0.0)
    tridiagonals = jax.vmap(lambda d, e: jnp.diag(d) + jnp.diag(e, 1) + jnp.diag(e, -1))(
        diagonals, couplings
    )
    estimates, ritz = _top_eigenpairs(tridiagonals, floor)  # [k], [k, row]
    last_row = jnp.cumsum(in_space) - 1  # T_k's last row: min(k − 1, the space's last)
    residuals = jnp.abs(beta[last_row] * ritz[rows, last_row]) / jnp.abs(estimates)
    weights = ritz[-1] * in_space
    eigenvector = jax.tree.map(
        lambda b: jnp.tensordot(weights, b[:iterations], axes=1).astype(b.dtype), state.basis
    )
    eigenvector = _scaled(eigenvector, lax.rsqrt(_dot(eigenvector, eigenvector)))
    return Sharpness(
        eigenvalue=estimates[-1], estimates=estimates, residuals=residuals, eigenvector=eigenvector
    )


# Squarings of T − floor·I in `_top_eigenpairs`: the other eigenvalues' share falls as
# (λ_i / λ_1)^(2^n), below float32's resolution for any gap down to 1e-9 of the spectrum.
_SQUARINGS = 40


def _top_eigenpairs(matrices: jax.Array, floor: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The largest eigenvalue of each symmetric matrix of `matrices` ([k, n, n], every
    eigenvalue above `floor`) and a unit eigenvector of it, by repeated squaring of the
    positive semi-definite M = A − floor·I: M^(2^n), rescaled, tends to a multiple of the
    projector on the top eigenspace, whose largest column is the eigenvector. Only matrix
    products: under pmap on XLA:CPU, LAPACK's `eigh` in a per-device program with collectives
    hung the 4-device test at 20 × 20 (tests/test_sharpness.py)."""
    size = matrices.shape[-1]
    shifted = matrices - floor * jnp.eye(size, dtype=matrices.dtype)

    def square(_: int, m: jax.Array) -> jax.Array:
        m = m @ m
        return m / jnp.max(jnp.abs(m), axis=(-2, -1), keepdims=True)

    power = lax.fori_loop(0, _SQUARINGS, square, shifted)
    columns = jnp.linalg.norm(power, axis=-2)  # [k, n]
    vectors = jnp.take_along_axis(power, jnp.argmax(columns, -1)[:, None, None], axis=-1)[..., 0]
    vectors = vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    values = jnp.einsum("ki,kij,kj->k", vectors, matrices, vectors)
    return values, vectors


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


def stability_edge_learning_rate(
    sharpness: float, momentum: float = 0.0, nesterov: bool = False
) -> float:
    """The learning rate at the optimizer's stability edge for a loss of sharpness λ_max:

        η_edge = threshold / λ_max

    with the threshold of `stability_threshold`: 2 for plain SGD, 2 + 2β with heavy-ball
    momentum β, (2 + 2β) / (1 + 2β) with Nesterov momentum in optax's form. Kalra & Barkeshli
    2024 ("Why Warmup the Learning Rate? Underlying Mechanisms and Improvements", NeurIPS)
    start the warmup there, η_init = η_edge for λ_0 the sharpness at initialisation (measured
    with `top_hessian_eigenvalue`), rather than at a fraction of the target rate: the largest
    rate that does not overshoot at once, so a rate under it loses steps, not stability. Pass
    `min(η_edge, peak)` as the warmup's first rate (`gradual_warmup`'s `init_value`, optax's
    `linear_schedule`'s `init_value`).

    Args:
      sharpness: λ_max > 0.
      momentum: β in [0, 1).
      nesterov: Nesterov momentum (optax.sgd(nesterov=True), the recipe's optimizer).

    >>> round(stability_edge_learning_rate(4.0), 3)  # plain SGD: 2 / λ
    0.5
    >>> round(stability_edge_learning_rate(4.0, momentum=0.9, nesterov=True), 4)  # 1.357 / λ
    0.3393
    """
    sharpness = checks.check_positive("sharpness", sharpness)
    return stability_threshold(momentum, nesterov) / sharpness
