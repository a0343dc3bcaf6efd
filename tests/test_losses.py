"""Label smoothing and cross-entropy against float64 numpy references."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recipe import losses

B, K = 6, 5
EPSILONS = [0.0, 0.1, 0.5, 1.0]


def note_smooth_labels(y, smooth_factor=0.1):
    """The study note's `smooth_labels`, transliterated to float64 numpy (on a copy)."""
    y = np.array(y, dtype=np.float64)
    assert len(y.shape) == 2
    if 0 <= smooth_factor <= 1:
        y *= 1 - smooth_factor
        y += smooth_factor / y.shape[1]
    else:
        raise Exception("Invalid label smoothing factor: " + str(smooth_factor))
    return y


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_smoothed_ce(logits, labels, eps):
    """mean_b −Σ_k q'_bk log p_bk with q' = (1 − ε)·onehot + ε/K, float64."""
    logp = np_log_softmax(logits)
    k = logp.shape[-1]
    q = np.eye(k)[labels] * (1.0 - eps) + eps / k
    return float(np.mean(-(q * logp).sum(-1)))


def np_torch_ce(logits, labels, eps):
    """PyTorch CrossEntropyLoss(label_smoothing=ε) by its definition, float64:
    loss = (1 − ε)·nll + ε·mean_k(−log p_k), averaged over the batch."""
    logp = np_log_softmax(logits)
    nll = -logp[np.arange(len(labels)), labels]
    uniform = -logp.mean(-1)
    return float(np.mean((1.0 - eps) * nll + eps * uniform))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.standard_normal((B, K))).astype(np.float32)
    labels = rng.integers(0, K, size=B).astype(np.int32)
    return logits, labels


@pytest.mark.parametrize("eps", EPSILONS + [0.3])
def test_smooth_labels_matches_note(data, eps):
    _, labels = data
    onehot = np.eye(K, dtype=np.float32)[labels]
    out = losses.smooth_labels(jnp.asarray(onehot), eps)
    chex.assert_shape(out, (B, K))
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(
        np.asarray(out, np.float64), note_smooth_labels(onehot, eps), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(np.asarray(out).sum(-1), 1.0, rtol=1e-6)


def test_smooth_labels_soft_targets_match_note():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(K), size=3).astype(np.float32)
    out = losses.smooth_labels(jnp.asarray(probs), 0.2)
    np.testing.assert_allclose(
        np.asarray(out, np.float64), note_smooth_labels(probs, 0.2), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("eps", [-0.1, 1.1, float("nan")])
def test_smooth_labels_rejects_eps_naming_value(eps):
    with pytest.raises(ValueError, match=re.escape(repr(eps))):
        losses.smooth_labels(jnp.eye(K), eps)


@pytest.mark.parametrize("eps", [-0.1, 1.1, float("nan")])
def test_cross_entropy_rejects_eps_naming_value(data, eps):
    logits, labels = data
    with pytest.raises(ValueError, match=re.escape(repr(eps))):
        losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)


@pytest.mark.parametrize("eps", EPSILONS)
def test_cross_entropy_matches_numpy(data, eps):
    logits, labels = data
    out = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)
    chex.assert_shape(out, ())
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(float(out), np_smoothed_ce(logits, labels, eps), rtol=1e-5)


@pytest.mark.parametrize("eps", EPSILONS)
def test_per_example_cross_entropy_matches_numpy(data, eps):
    logits, labels = data
    out = losses.per_example_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)
    chex.assert_shape(out, (B,))
    logp = np_log_softmax(logits)
    q = np.eye(K)[labels] * (1.0 - eps) + eps / K
    np.testing.assert_allclose(np.asarray(out, np.float64), -(q * logp).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("eps", EPSILONS)
def test_integer_and_one_hot_labels_agree(data, eps):
    logits, labels = data
    z = jnp.asarray(logits)
    by_id = losses.cross_entropy(z, jnp.asarray(labels), eps)
    by_onehot = losses.cross_entropy(z, jax.nn.one_hot(labels, K), eps)
    np.testing.assert_allclose(float(by_id), float(by_onehot), rtol=1e-6)


def test_eps_changes_the_loss(data):
    logits, labels = data
    z, y = jnp.asarray(logits), jnp.asarray(labels)
    assert abs(float(losses.cross_entropy(z, y, 0.1)) - float(losses.cross_entropy(z, y))) > 1e-3


@pytest.mark.parametrize("eps", EPSILONS)
def test_optax_with_smoothed_labels_equals_torch_definition(data, eps):
    logits, labels = data
    targets = losses.smooth_labels(jax.nn.one_hot(jnp.asarray(labels), K), eps)
    via_optax = jnp.mean(optax.softmax_cross_entropy(jnp.asarray(logits), targets))
    expected = np_torch_ce(logits, labels, eps)
    np.testing.assert_allclose(float(via_optax), expected, rtol=1e-5)
    via_recipe = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)
    np.testing.assert_allclose(float(via_recipe), expected, rtol=1e-5)


def test_torch_known_value():
    # A hand-checkable case: uniform logits give log K for any ε.
    logits = np.zeros((2, 4), np.float32)
    out = losses.cross_entropy(jnp.asarray(logits), jnp.array([0, 3]), 0.1)
    np.testing.assert_allclose(float(out), np.log(4.0), rtol=1e-6)
    # One confident example: nll = log(1 + 3e^-2), mean_k −log p_k by hand.
    logits = np.array([[2.0, 0.0, 0.0, 0.0]], np.float32)
    lse = np.log(np.exp(2.0) + 3.0)
    nll = lse - 2.0
    uniform = (nll + 3 * lse) / 4
    out = losses.cross_entropy(jnp.asarray(logits), jnp.array([0]), 0.1)
    np.testing.assert_allclose(float(out), 0.9 * nll + 0.1 * uniform, rtol=1e-6)


@pytest.mark.parametrize("shape", [(B + 1,), (B, K + 1), (B, K, 1), (1, B)])
def test_bad_label_shape_rejected(data, shape):
    logits, _ = data
    with pytest.raises(ValueError, match="labels must have shape"):
        losses.cross_entropy(jnp.asarray(logits), jnp.zeros(shape, jnp.int32), 0.1)


def test_remark3_mean_of_device_means_is_global_mean():
    k, n = 4, 3
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((k * n, K)).astype(np.float32)
    labels = rng.integers(0, K, size=k * n).astype(np.int32)
    expected = np_smoothed_ce(logits, labels, 0.1)

    def per_device(z, y):
        local = losses.cross_entropy(z, y, 0.1)
        return jax.lax.pmean(local, "d"), jax.lax.psum(local, "d")

    z = jnp.asarray(logits).reshape(k, n, K)
    y = jnp.asarray(labels).reshape(k, n)
    pmeaned, psummed = jax.vmap(per_device, axis_name="d")(z, y)
    chex.assert_shape(pmeaned, (k,))
    np.testing.assert_allclose(np.asarray(pmeaned, np.float64), expected, rtol=1e-5)
    # A psum of local means would be k× too large.
    np.testing.assert_allclose(np.asarray(psummed, np.float64), k * expected, rtol=1e-5)


def test_remark3_gradients_pmean_equals_global_gradient():
    k, n, d = 3, 4, 2
    rng = np.random.default_rng(3)
    x = rng.standard_normal((k * n, d)).astype(np.float32)
    y = rng.integers(0, K, size=k * n).astype(np.int32)
    w = jnp.asarray(rng.standard_normal((d, K)).astype(np.float32))

    def loss(w, x, y):
        return losses.cross_entropy(x @ w, y, 0.1)

    def per_device(x, y):
        return jax.lax.pmean(jax.grad(loss)(w, x, y), "d")

    local = jax.vmap(per_device, axis_name="d")(
        jnp.asarray(x).reshape(k, n, d), jnp.asarray(y).reshape(k, n)
    )
    # Global gradient in float64 numpy: ∂/∂W mean_b CE = Xᵀ(softmax − q')/(kn).
    p = np.exp(np_log_softmax(x.astype(np.float64) @ np.asarray(w, np.float64)))
    q = np.eye(K)[y] * 0.9 + 0.1 / K
    expected = x.astype(np.float64).T @ (p - q) / (k * n)
    for i in range(k):
        np.testing.assert_allclose(np.asarray(local[i], np.float64), expected, rtol=1e-4, atol=1e-6)


L2_PARAMS = {
    "conv": {"kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3) - 2.0},
    "bn": {"scale": np.array([1.5, -0.5], np.float32), "bias": np.array([0.25, 2.0], np.float32)},
}
L2_MASK = {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False}}


@pytest.mark.parametrize("mask", [None, L2_MASK, lambda params: L2_MASK], ids=["all", "tree", "fn"])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-4, 0.3])
def test_l2_penalty_value_and_gradient(mask, weight_decay):
    params = jax.tree.map(jnp.asarray, L2_PARAMS)
    flags = L2_MASK if mask is not None else jax.tree.map(lambda _: True, L2_PARAMS)
    expected = 0.5 * weight_decay * sum(
        np.sum(np.square(np.float64(w))) for w, on in zip(
            jax.tree.leaves(L2_PARAMS), jax.tree.leaves(flags), strict=True
        ) if on
    )  # fmt: skip
    np.testing.assert_allclose(float(losses.l2_penalty(params, weight_decay, mask)), expected)
    # The gradient is optax.add_decayed_weights' term: λ·mask⊙w.
    grads = jax.grad(losses.l2_penalty)(params, weight_decay, mask)
    chex.assert_trees_all_close(
        grads, jax.tree.map(lambda w, on: weight_decay * w * on, L2_PARAMS, flags), rtol=1e-6
    )


@pytest.mark.parametrize("weight_decay", [-1e-4, float("nan"), float("inf")])
def test_l2_penalty_rejects_bad_weight_decay(weight_decay):
    with pytest.raises(ValueError, match=r"^weight_decay must be a finite number >= 0"):
        losses.l2_penalty(L2_PARAMS, weight_decay)


@pytest.mark.parametrize("labels", [[0, 1, 2, K], [-1, 0, 1, 2], np.array([0, 1, 2, 99])])
def test_out_of_range_labels_are_refused_when_concrete(labels):
    logits = jnp.zeros((4, K))
    with pytest.raises(ValueError, match=rf"labels must be class ids in \[0, {K}\)"):
        losses.cross_entropy(logits, labels)
    with pytest.raises(ValueError, match=rf"labels must be class ids in \[0, {K}\)"):
        losses.per_example_cross_entropy(logits, jnp.asarray(labels))


def test_out_of_range_labels_under_jit_count_only_the_smoothing_term():
    # Documented: traced labels cannot be checked; an id past K has an all-zero one-hot row.
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, K)), jnp.float32)
    per_example = jax.jit(lambda x, y: losses.per_example_cross_entropy(x, y, 0.1))
    out = per_example(logits, jnp.array([0, K + 3]))
    log_p = jax.nn.log_softmax(logits[1])
    np.testing.assert_allclose(out[1], -0.1 * jnp.mean(log_p), rtol=1e-6)


@pytest.mark.parametrize("eps", [np.float32(0.1), jnp.array(0.1), np.array(0.1)])
def test_label_smoothing_may_be_a_scalar_array(eps):
    targets = losses.smooth_labels(jnp.eye(K), eps)
    np.testing.assert_allclose(targets, losses.smooth_labels(jnp.eye(K), 0.1), rtol=1e-6)


def test_label_smoothing_may_be_traced():
    smooth = jax.jit(losses.smooth_labels)
    np.testing.assert_allclose(
        smooth(jnp.eye(K), 0.2), losses.smooth_labels(jnp.eye(K), 0.2), rtol=1e-6
    )
    # Logits far from uniform, whose loss changes with ε (uniform logits give log K for any ε):
    # the loss of a traced ε against float64 by hand, q = (1 − ε)·onehot + ε/K.
    logits = np.random.default_rng(0).normal(scale=3.0, size=(2, K))
    labels = np.array([0, 1])
    loss = jax.jit(lambda eps: losses.cross_entropy(jnp.asarray(logits, jnp.float32), labels, eps))
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    for eps in (0.0, 0.3, 0.9):
        q = (1 - eps) * np.eye(K)[labels] + eps / K
        np.testing.assert_allclose(loss(eps), -np.mean(np.sum(q * log_p, -1)), rtol=1e-5)
    assert abs(float(loss(0.9)) - float(loss(0.0))) > 0.5


@pytest.mark.parametrize("eps", [jnp.array(1.5), np.float32(-0.1), jnp.array(float("nan"))])
def test_bad_scalar_array_label_smoothing_is_refused(eps):
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\]"):
        losses.smooth_labels(jnp.eye(K), eps)
