"""Label-smoothed softmax cross-entropy (Szegedy et al. 2016, §7).

Under data parallelism (Goyal et al., Remark 3) the per-worker loss must be normalised by the
*global* batch kn, because the gradients are summed across workers. Each device here takes the
mean over its own n examples, and the train step averages the gradients with
`jax.lax.pmean(grads, axis_name)`; with equal per-device batches

    pmean_k( (1/n) Σ_local ∇l ) = (1/kn) Σ_global ∇l,

which is exactly Remark 3's normalisation (a `psum` of the local mean would be k× too large).

Weight decay is, by Remark 1's definition, the gradient of an L2 term of the loss; `l2_penalty`
is that term, for training steps that add it to the loss instead of decaying in the optimizer.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recipe import checks


def smooth_labels(labels: jax.Array, epsilon: float | jax.Array) -> jax.Array:
    """Smooths one-hot targets: q' = (1 − ε) · q + ε / K (Szegedy et al. §7).

    A checked front for `optax.smooth_labels`: the study note's version raises for ε outside
    [0, 1], and so does this one (NaN included), naming the value. ε may be a Python float, a
    NumPy/JAX scalar, or a value traced under `jax.jit` (as in optax), which is checked only when
    it is concrete.

    Args:
      labels: one-hot (or any probability) targets of shape [..., K].
      epsilon: ε in [0, 1]; 0 leaves the targets unchanged, 1 makes them uniform.

    Returns:
      The smoothed targets, same shape and dtype.

    Raises:
      ValueError: if a concrete ε is outside [0, 1] or NaN.

    >>> smooth_labels(jnp.array([[0.0, 1.0]]), 0.1).tolist()
    [[0.05000000074505806, 0.949999988079071]]
    """
    checks.check_in_unit_interval("label_smoothing", epsilon, allow_traced=True)
    return optax.smooth_labels(labels, epsilon)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float | jax.Array = 0.0
) -> jax.Array:
    """Mean label-smoothed softmax cross-entropy over the batch.

        loss = −(1/B) Σ_b Σ_k q'_bk · log softmax(z_b)_k,   q' = (1 − ε) · onehot(y) + ε / K

    ε = 0.1 is the ImageNet setting (K = 1000). Equals PyTorch's
    `CrossEntropyLoss(label_smoothing=ε)`. The computation is jitted; ε may be traced.

    Integer labels outside [0, K) raise `ValueError` when they are concrete (called outside
    `jax.jit`). Under `jax.jit` they cannot be checked: such a label has an all-zero one-hot row,
    so its example contributes only the smoothing term ε · mean_k(−log p_k); check labels where
    they are produced (the trainer's datasets declare their class counts).

    Args:
      logits: [B, K] unnormalised scores.
      labels: [B] integer class ids in [0, K), or [B, K] one-hot / probability targets.
      label_smoothing: ε in [0, 1].

    Returns:
      A float32 scalar: the mean over the batch. Under `pmap`, average it (and the gradients)
      across devices with `lax.pmean` to get Remark 3's normalisation by the global batch.

    Raises:
      ValueError: if ε is outside [0, 1] or NaN, a concrete integer label is outside [0, K), or
        the label shape matches neither form.

    >>> logits = jnp.array([[2.0, 0.0, -1.0]])
    >>> bool(jnp.allclose(cross_entropy(logits, jnp.array([0])),
    ...                   cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]))))
    True
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels)
    checks.check_in_unit_interval("label_smoothing", label_smoothing, allow_traced=True)
    return _mean_cross_entropy(logits, labels, label_smoothing)


@jax.jit
def _mean_cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: jax.Array):
    return jnp.mean(per_example_cross_entropy(logits, labels, label_smoothing))


def per_example_cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float | jax.Array = 0.0
) -> jax.Array:
    """Label-smoothed softmax cross-entropy per example, shape [B] (see `cross_entropy`)."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels)
    num_classes = logits.shape[-1]
    if labels.shape == logits.shape[:-1]:
        targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    else:
        targets = labels.astype(jnp.float32)
    targets = smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _check_labels(logits: jax.Array, labels: jax.Array) -> None:
    """Raises `ValueError` for a label shape of neither form, or concrete ids outside [0, K)."""
    num_classes = logits.shape[-1]
    if labels.shape == logits.shape[:-1]:
        if isinstance(labels, jax.core.Tracer):
            return
        ids = np.asarray(labels)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"integer labels must have an integer dtype, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            bad = ids[(ids < 0) | (ids >= num_classes)]
            raise ValueError(
                f"labels must be class ids in [0, {num_classes}), got {bad.tolist()[:5]}"
            )
    elif labels.shape != logits.shape:
        raise ValueError(
            f"labels must have shape {logits.shape[:-1]} (integer ids) or {logits.shape} "
            f"(one-hot), got {labels.shape}"
        )


def l2_penalty(params: Any, weight_decay: float, mask: Any = None) -> jax.Array:
    """Coupled weight decay as a loss term: (λ/2) · Σ_i mask_i · ‖w_i‖² (Goyal et al., Remark 1).

    Its gradient, λ · mask ⊙ w, is what `optax.add_decayed_weights(λ, mask)` adds to the loss
    gradient, so `loss + l2_penalty(params, λ, mask)` under a decay-free SGD gives the same
    updates as `recipe.goyal_sgd(..., weight_decay=λ, weight_decay_mask=mask)`. Computed in
    the loss, the decay joins the backward pass instead of running as extra per-parameter work
    after it (faster on CPU, see BENCHMARKS.md §1). Under data parallelism add it on every
    device: the weights are the same everywhere, so `pmean` of the gradients keeps λ · w.

    Args:
      params: the parameter pytree.
      weight_decay: λ >= 0.
      mask: a bool pytree matching `params` or a callable returning one (as optax masks and
        `recipe.masks.weight_decay_mask`); None decays every parameter.

    Returns:
      A float32 scalar.

    >>> params = {'kernel': jnp.array([3.0, 4.0]), 'scale': jnp.array([1.0])}
    >>> float(l2_penalty(params, 0.1, {'kernel': True, 'scale': False}))
    1.25
    """
    checks.check_non_negative("weight_decay", weight_decay)
    if mask is None:
        mask = jax.tree_util.tree_map(lambda _: True, params)
    elif callable(mask):
        mask = mask(params)
    leaves = jax.tree_util.tree_leaves(params)
    flags = jax.tree_util.tree_structure(params).flatten_up_to(mask)
    squares = [
        jnp.sum(jnp.square(w.astype(jnp.float32)))
        for w, on in zip(leaves, flags, strict=True)
        if on
    ]
    return 0.5 * weight_decay * sum(squares, jnp.zeros((), jnp.float32))
