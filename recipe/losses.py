"""Label-smoothed softmax cross-entropy (Szegedy et al. 2016, §7).

Under data parallelism (Goyal et al., Remark 3) the per-worker loss must be normalised by the
*global* batch kn, because the gradients are summed across workers. Each device here takes the
mean over its own n examples, and the train step averages the gradients with
`jax.lax.pmean(grads, axis_name)`; with equal per-device batches

    pmean_k( (1/n) Σ_local ∇l ) = (1/kn) Σ_global ∇l,

which is exactly Remark 3's normalisation (a `psum` of the local mean would be k× too large).
"""

import functools

import jax
import jax.numpy as jnp
import optax

from recipe import checks


def smooth_labels(labels: jax.Array, epsilon: float) -> jax.Array:
    """Smooths one-hot targets: q' = (1 − ε) · q + ε / K (Szegedy et al. §7).

    A checked front for `optax.smooth_labels`: the study note's version raises for ε outside
    [0, 1], and so does this one (NaN included), naming the value.

    Args:
      labels: one-hot (or any probability) targets of shape [..., K].
      epsilon: ε in [0, 1]; 0 leaves the targets unchanged, 1 makes them uniform.

    Returns:
      The smoothed targets, same shape and dtype.

    Raises:
      ValueError: if ε is outside [0, 1] or NaN.

    >>> smooth_labels(jnp.array([[0.0, 1.0]]), 0.1).tolist()
    [[0.05000000074505806, 0.949999988079071]]
    """
    checks.check_in_unit_interval("label_smoothing", epsilon)
    return optax.smooth_labels(labels, epsilon)


@functools.partial(jax.jit, static_argnames=("label_smoothing",))
def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean label-smoothed softmax cross-entropy over the batch.

        loss = −(1/B) Σ_b Σ_k q'_bk · log softmax(z_b)_k,   q' = (1 − ε) · onehot(y) + ε / K

    ε = 0.1 is the ImageNet setting (K = 1000). Equals PyTorch's
    `CrossEntropyLoss(label_smoothing=ε)`. Jitted, with ε static (validated when traced).

    Args:
      logits: [B, K] unnormalised scores.
      labels: [B] integer class ids, or [B, K] one-hot / probability targets.
      label_smoothing: ε in [0, 1].

    Returns:
      A float32 scalar: the mean over the batch. Under `pmap`, average it (and the gradients)
      across devices with `lax.pmean` to get Remark 3's normalisation by the global batch.

    Raises:
      ValueError: if ε is outside [0, 1] or NaN, or the label shape matches neither form.

    >>> logits = jnp.array([[2.0, 0.0, -1.0]])
    >>> bool(jnp.allclose(cross_entropy(logits, jnp.array([0])),
    ...                   cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]))))
    True
    """
    return jnp.mean(per_example_cross_entropy(logits, labels, label_smoothing))


def per_example_cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Label-smoothed softmax cross-entropy per example, shape [B] (see `cross_entropy`)."""
    num_classes = logits.shape[-1]
    if labels.shape == logits.shape[:-1]:
        targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    elif labels.shape == logits.shape:
        targets = labels.astype(jnp.float32)
    else:
        raise ValueError(
            f"labels must have shape {logits.shape[:-1]} (integer ids) or {logits.shape} "
            f"(one-hot), got {labels.shape}"
        )
    targets = smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
