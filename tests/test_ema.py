"""Weight EMA against timm's decay and the EMA recursion, in plain float64 Python."""

import re

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recipe import ema, optim


def timm_get_decay(step, decay, use_warmup, warmup_gamma, warmup_power, min_decay):
    """timm's `ModelEmaV3.get_decay(step)` (update_after_step = 0), transliterated."""
    step = max(0, step - 0 - 1)
    if step <= 0:
        return 0.0
    if use_warmup:
        d = 1 - (1 + step / warmup_gamma) ** -warmup_power
        return max(min(d, decay), min_decay)
    return decay


DECAY_CASES = [
    # decay, warmup, gamma, power, min_decay
    (0.9998, True, 1.0, 2 / 3, 0.0),  # timm's train.py values with --model-ema-warmup
    (0.99, True, 1.0, 3 / 4, 0.0),
    (0.95, True, 4.0, 1.0, 0.5),  # min_decay clips the first updates
    (0.9, False, 1.0, 2 / 3, 0.0),
]


@pytest.mark.parametrize("decay, warmup, gamma, power, min_decay", DECAY_CASES)
def test_ema_decay_is_timms(decay, warmup, gamma, power, min_decay):
    counts = np.arange(1, 3001)
    expected = [timm_get_decay(int(n), decay, warmup, gamma, power, min_decay) for n in counts]
    schedule = ema.ema_decay(
        decay, warmup=warmup, warmup_gamma=gamma, warmup_power=power, min_decay=min_decay
    )
    got = jax.jit(schedule)(jnp.asarray(counts, jnp.int32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-6, atol=1e-7)


def toy_updates(num_updates, seed=0):
    """A fixed sequence of updates for two parameters of different shapes."""
    rng = np.random.default_rng(seed)
    return [
        {"a": rng.normal(size=(3,)).astype(np.float32), "b": rng.normal(size=(2, 2)) * 0.1}
        for _ in range(num_updates)
    ]


def run(tx, params, updates, state=None):
    """Applies `updates` in turn through `tx` (jitted); returns (params, state)."""
    state = tx.init(params) if state is None else state
    step = jax.jit(tx.update)
    for u in updates:
        out, state = step(jax.tree_util.tree_map(jnp.asarray, u), state, params)
        params = optax.apply_updates(params, out)
    return params, state


@pytest.mark.parametrize("decay, warmup, gamma, power, min_decay", DECAY_CASES)
def test_weight_ema_is_the_closed_form_recursion(decay, warmup, gamma, power, min_decay):
    params = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2), jnp.float32)}
    updates = toy_updates(40)
    schedule = ema.ema_decay(
        decay, warmup=warmup, warmup_gamma=gamma, warmup_power=power, min_decay=min_decay
    )
    final, state = run(ema.weight_ema(schedule), params, updates)
    # float64: w_n = w_{n−1} + u_n; e_1 = w_1, e_n = d_n e_{n−1} + (1 − d_n) w_n.
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    e = None
    for n, u in enumerate(updates, start=1):
        w = {k: w[k] + u[k] for k in w}
        d = timm_get_decay(n, decay, warmup, gamma, power, min_decay)
        e = dict(w) if e is None else {k: d * e[k] + (1 - d) * w[k] for k in w}
    assert int(state.count) == 40
    for key in params:
        np.testing.assert_allclose(final[key], w[key], rtol=1e-6, atol=1e-6)  # unchanged updates
        np.testing.assert_allclose(ema.ema_params(state)[key], e[key], rtol=1e-5, atol=1e-6)


def test_a_float_decay_copies_first_then_decays():
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    updates = toy_updates(3)
    _, state = run(ema.weight_ema(0.5), params, updates)
    w1 = updates[0]["a"]
    w2, w3 = w1 + updates[1]["a"], w1 + updates[1]["a"] + updates[2]["a"]
    np.testing.assert_allclose(
        ema.ema_params(state)["a"], 0.25 * w1 + 0.25 * w2 + 0.5 * w3, rtol=1e-6
    )


def test_resume_mid_run_is_bitwise_equal():
    params = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2), jnp.float32)}
    tx = optax.chain(optim.goyal_sgd(0.1, weight_decay=1e-4), ema.weight_ema(ema.ema_decay(0.99)))
    grads = toy_updates(30, seed=3)
    straight_params, straight_state = run(tx, params, grads)
    # Stop after 13 updates, write everything to bytes and read it back, continue.
    half_params, half_state = run(tx, params, grads[:13])
    saved = flax.serialization.to_bytes((half_params, half_state))
    template = (params, tx.init(params))
    restored_params, restored_state = flax.serialization.from_bytes(template, saved)
    resumed_params, resumed_state = run(tx, restored_params, grads[13:], restored_state)
    for got, want in zip(
        jax.tree_util.tree_leaves((resumed_params, resumed_state)),
        jax.tree_util.tree_leaves((straight_params, straight_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_inside_multisteps_it_averages_once_per_real_update():
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    tx = optax.MultiSteps(optax.chain(optax.sgd(1.0), ema.weight_ema(0.5)), every_k_schedule=2)
    micro = toy_updates(6, seed=1)
    final, state = run(tx, params, micro)
    assert int(state.inner_opt_state[1].count) == 3
    # The average is over the weights after each real update: w_1, w_2, w_3.
    real = [-(micro[2 * i]["a"] + micro[2 * i + 1]["a"]) / 2 for i in range(3)]
    w = np.cumsum(real, axis=0)
    np.testing.assert_allclose(
        ema.ema_params(state)["a"], 0.25 * w[0] + 0.25 * w[1] + 0.5 * w[2], rtol=1e-6
    )
    np.testing.assert_allclose(final["a"], w[2], rtol=1e-6)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ema.ema_decay(1.5), "decay must be a number in [0, 1], got 1.5"),
        (lambda: ema.ema_decay(0.9, warmup_power=0.0), "warmup_power must be a finite number > 0"),
        (lambda: ema.ema_decay(0.9, warmup_gamma=-1.0), "warmup_gamma must be a finite number > 0"),
        (lambda: ema.ema_decay(0.9, min_decay=0.95), "min_decay (0.95) must not exceed decay"),
        (lambda: ema.weight_ema(float("nan")), "decay must be a number in [0, 1], got nan"),
        (lambda: ema.ema_params(optim.goyal_sgd(0.1).init({"a": jnp.zeros(2)})), "found 0"),
        (
            lambda: ema.weight_ema(0.9).update({"a": jnp.zeros(2)}, ema.weight_ema(0.9).init({})),
            "weight_ema needs the weights",
        ),
    ],
)
def test_bad_arguments_raise_naming_the_field(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
