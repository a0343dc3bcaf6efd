"""Weight-decay masks: BatchNorm found by what it is, not by its name."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from recipe import masks, optim

LR, WD, MOM = 0.5, 0.1, 0.9


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(4, (3, 3), name="conv_a")(x)
        return nn.BatchNorm(use_running_average=not train, name="my_norm")(x)


class LinenNet(nn.Module):
    """BN under misleading names ('dense', 'my_norm', inside a Sequential); a Dense named 'bn'."""

    def setup(self):
        self.block = LinenBlock()
        self.seq = nn.Sequential([nn.Conv(4, (1, 1)), nn.BatchNorm(use_running_average=True)])
        self.dense = nn.BatchNorm(use_running_average=True)
        self.bn = nn.Dense(5)
        self.head = nn.Dense(3)

    def __call__(self, x, train=False):
        x = self.dense(self.seq(self.block(x, train)))
        return self.head(self.bn(x.mean((1, 2))))


@functools.cache
def _linen_variables():
    return LinenNet().init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))


LINEN_EXPECTED = {
    "block": {
        "conv_a": {"kernel": True, "bias": True},
        "my_norm": {"scale": False, "bias": False},
    },
    "seq": {
        "layers_0": {"kernel": True, "bias": True},
        "layers_1": {"scale": False, "bias": False},
    },
    "dense": {"scale": False, "bias": False},
    "bn": {"kernel": True, "bias": True},
    "head": {"kernel": True, "bias": True},
}


def _no_bias(tree):
    return {k: _no_bias(v) if isinstance(v, dict) else (v and k != "bias") for k, v in tree.items()}


def _is_bn_leaf(names):
    return names[:2] in (("block", "my_norm"), ("seq", "layers_1")) or names[0] == "dense"


@pytest.mark.parametrize("decay_bias", [True, False])
def test_linen_mask(decay_bias):
    variables = _linen_variables()
    mask = masks.weight_decay_mask(variables, decay_bias=decay_bias)
    expected = LINEN_EXPECTED if decay_bias else _no_bias(LINEN_EXPECTED)
    assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(variables["params"])
    assert mask == expected


def test_linen_decay_report():
    report = masks.decay_report(_linen_variables())
    assert sorted(report.not_decayed) == sorted(
        [
            "block/my_norm/bias",
            "block/my_norm/scale",
            "seq/layers_1/bias",
            "seq/layers_1/scale",
            "dense/bias",
            "dense/scale",
        ]
    )
    assert sorted(report.decayed) == sorted(
        [
            "block/conv_a/bias",
            "block/conv_a/kernel",
            "seq/layers_0/bias",
            "seq/layers_0/kernel",
            "bn/bias",
            "bn/kernel",
            "head/bias",
            "head/kernel",
        ]
    )


@pytest.mark.parametrize("fn", [masks.weight_decay_mask, masks.decay_report])
def test_params_without_params_key_rejected(fn):
    variables = _linen_variables()
    with pytest.raises(ValueError, match="'params'"):
        fn(variables["params"])
    with pytest.raises(ValueError, match="'params'"):
        fn([1, 2])


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(4, 4, (1, 1), rngs=rngs)
        self.gamma = nnx.BatchNorm(4, rngs=rngs)  # a BN under a name that says nothing

    def __call__(self, x):
        return self.gamma(self.conv(x))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.linear = nnx.BatchNorm(4, rngs=rngs)
        self.block = NNXBlock(rngs)
        self.bn = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        x = self.block(self.linear(self.stem(x)))
        return self.bn(x.mean((1, 2)))


NNX_NOT_DECAYED = ["block/gamma/bias", "block/gamma/scale", "linear/bias", "linear/scale"]
NNX_WEIGHTS = ["block/conv/kernel", "bn/kernel", "stem/kernel"]
NNX_BIASES = ["block/conv/bias", "bn/bias", "stem/bias"]


@pytest.mark.parametrize("decay_bias", [True, False])
def test_nnx_decay_report(decay_bias):
    model = NNXNet(nnx.Rngs(0))
    report = masks.decay_report(model, decay_bias=decay_bias)
    if decay_bias:
        assert sorted(report.decayed) == sorted(NNX_WEIGHTS + NNX_BIASES)
        assert sorted(report.not_decayed) == sorted(NNX_NOT_DECAYED)
    else:
        assert sorted(report.decayed) == sorted(NNX_WEIGHTS)
        assert sorted(report.not_decayed) == sorted(NNX_NOT_DECAYED + NNX_BIASES)


def _names(path):
    return tuple(
        str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
        for k in path
        if getattr(k, "name", None) != "value"
    )


def _expected_step(w, decayed, nesterov):
    """One step from a zero momentum buffer with zero loss gradient, float64.

    g = 0 + λ·w (decayed leaves) ; u = m·0 + g = g ;
    plain: Δ = −η·u = −η·λ·w ; Nesterov: Δ = −η·(g + m·u) = −η·(1 + m)·λ·w.
    """
    w = np.asarray(w, np.float64)
    if not decayed:
        return w
    return w - LR * (1.0 + (MOM if nesterov else 0.0)) * WD * w


@pytest.mark.parametrize("nesterov", [False, True])
def test_linen_zero_grad_step_decays_exactly_the_masked_leaves(nesterov):
    variables = _linen_variables()
    params = variables["params"]
    mask = masks.weight_decay_mask(variables)
    tx = optim.goyal_sgd(
        LR, weight_decay=WD, weight_decay_mask=mask, momentum=MOM, nesterov=nesterov
    )
    state = tx.init(params)
    # BN scale is 1 and bias 0 at init; perturb so an unwanted decay would be visible.
    params = jax.tree.map(lambda w: w + 0.25, params)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    new = optax.apply_updates(params, updates)
    n_decayed = n_kept = 0
    for (path, w0), w1 in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(new), strict=True
    ):
        names = _names(path)
        decayed = not _is_bn_leaf(names)
        if decayed:
            n_decayed += 1
            np.testing.assert_allclose(
                np.asarray(w1, np.float64),
                _expected_step(w0, True, nesterov),
                rtol=1e-6,
                atol=1e-7,
                err_msg=str(names),
            )
            assert not np.array_equal(np.asarray(w1), np.asarray(w0)), names
        else:
            n_kept += 1
            np.testing.assert_array_equal(np.asarray(w1), np.asarray(w0), err_msg=str(names))
    assert (n_decayed, n_kept) == (8, 6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_nnx_zero_grad_step_decays_exactly_the_masked_leaves(nesterov):
    model = NNXNet(nnx.Rngs(1))
    # Make BN γ/β non-trivial so that decaying them would show.
    for bn in (model.linear, model.block.gamma):
        bn.scale[...] = bn.scale[...] + 0.5
        bn.bias[...] = bn.bias[...] + 0.25
    model(jnp.ones((2, 4, 4, 3)))  # train mode: updates the running stats once
    stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    tx = optim.goyal_sgd(
        LR,
        weight_decay=WD,
        weight_decay_mask=masks.weight_decay_mask(model),
        momentum=MOM,
        nesterov=nesterov,
    )
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    after = nnx.state(model, nnx.Param)
    not_decayed = {tuple(p.split("/")) for p in NNX_NOT_DECAYED}
    leaves_before = jax.tree_util.tree_leaves_with_path(before)
    leaves_after = jax.tree.leaves(after)
    assert len(leaves_before) == len(leaves_after) == 10
    for (path, w0), w1 in zip(leaves_before, leaves_after, strict=True):
        names = _names(path)
        if names in not_decayed:
            np.testing.assert_array_equal(np.asarray(w1), w0, err_msg=str(names))
        else:
            np.testing.assert_allclose(
                np.asarray(w1, np.float64),
                _expected_step(w0, True, nesterov),
                rtol=1e-6,
                atol=1e-7,
                err_msg=str(names),
            )
    stats_after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, stats_after, stats_before)


def test_plain_momentum_second_zero_grad_step():
    """Two zero-gradient steps, plain momentum: u₂ = m·λw₀ + λw₁, w₂ = w₁ − η·u₂."""
    variables = _linen_variables()
    params = jax.tree.map(lambda w: w + 0.25, variables["params"])
    mask = masks.weight_decay_mask(variables)
    tx = optim.goyal_sgd(LR, weight_decay=WD, weight_decay_mask=mask, momentum=MOM, nesterov=False)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    p = params
    for _ in range(2):
        updates, state = tx.update(zeros, state, p)
        p = optax.apply_updates(p, updates)
    w0 = np.asarray(params["head"]["kernel"], np.float64)
    w1 = w0 - LR * WD * w0
    w2 = w1 - LR * (MOM * WD * w0 + WD * w1)
    np.testing.assert_allclose(np.asarray(p["head"]["kernel"], np.float64), w2, rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(p["dense"]["scale"]), np.asarray(params["dense"]["scale"])
    )
