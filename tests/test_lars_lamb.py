"""LARS and LAMB, called directly and through `build_optimizer`: optax's own transforms with the
BatchNorm-free mask, plain momentum (LARS) or plain Adam (LAMB) on the excluded leaves, against
their definitions in float64, and the MLPerf schedule."""

import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recipe import optim, schedules

STEPS_PER_EPOCH = 4
EPOCHS = 3


def _variables():
    model = nn.Sequential([nn.Dense(3), nn.BatchNorm(use_running_average=True), nn.Dense(2)])
    return model.init(jax.random.key(0), jnp.ones((1, 4)))


def _mask(decay_bias: bool) -> dict:
    """Written out by hand for `_variables`: BN's γ/β never, biases only with decay_bias."""
    return {
        "layers_0": {"kernel": True, "bias": decay_bias},
        "layers_1": {"scale": False, "bias": False},
        "layers_2": {"kernel": True, "bias": decay_bias},
    }


def _gradients(params, steps: int) -> list:
    rng = np.random.default_rng(0)
    return [
        jax.tree.map(lambda w: jnp.asarray(rng.standard_normal(w.shape), w.dtype), params)
        for _ in range(steps)
    ]


def _run(tx, params, gradients):
    """Params after applying `tx` to a fixed sequence of gradients (one compiled scan)."""

    def step(carry, grads):
        params, state = carry
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    stacked = jax.tree.map(lambda *g: jnp.stack(g), *gradients)
    (params, state), _ = jax.jit(lambda c, g: jax.lax.scan(step, c, g))(
        (params, tx.init(params)), stacked
    )
    return params, state


def _build(name: str, **kwargs) -> optim.Optimizer:
    settings = dict(
        batch_size=256,
        steps_per_epoch=STEPS_PER_EPOCH,
        epochs=EPOCHS,
        base_lr=0.5,
        warmup_epochs=1,
        decay="poly",
        weight_decay=0.01,
        momentum=0.9,
        nesterov=False,
    )
    settings.update(kwargs)
    return optim.build_optimizer(_variables(), name=name, **settings)


@pytest.mark.parametrize(
    "decay_bias, nesterov, accumulation_steps", [(True, False, 1), (False, True, 2)]
)
def test_lars_equals_optax_lars_with_the_same_masks(decay_bias, nesterov, accumulation_steps):
    opt = _build(
        "lars",
        decay_bias=decay_bias,
        nesterov=nesterov,
        trust_coefficient=0.02,
        accumulation_steps=accumulation_steps,
        steps_per_epoch=STEPS_PER_EPOCH * accumulation_steps,
    )
    mask = _mask(decay_bias)
    reference = optax.lars(
        opt.schedule,
        weight_decay=0.01,
        weight_decay_mask=mask,
        trust_coefficient=0.02,
        trust_ratio_mask=mask,
        momentum=0.9,
        nesterov=nesterov,
    )
    if accumulation_steps > 1:
        reference = optax.MultiSteps(reference, accumulation_steps).gradient_transformation()
    params = jax.tree.map(lambda w: w + 0.5, _variables()["params"])
    gradients = _gradients(params, EPOCHS * STEPS_PER_EPOCH * accumulation_steps)
    ours, state = _run(opt.tx, params, gradients)
    theirs, _ = _run(reference, params, gradients)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-6)
    # The learning rate of the last real update stays readable.
    last = EPOCHS * STEPS_PER_EPOCH - 1
    assert float(optim.current_learning_rate(state)) == pytest.approx(
        float(opt.schedule(last)), rel=1e-6
    )


def test_lars_excluded_leaves_get_plain_momentum_and_the_rest_the_trust_ratio():
    opt = _build("lars", decay_bias=False, trust_coefficient=0.02)
    params = jax.tree.map(lambda w: w + 0.5, _variables()["params"])
    gradients = _gradients(params, 6)
    ours, _ = _run(opt.tx, params, gradients)
    # Heavy-ball momentum in float64: v ← m·v + η_t·g, w ← w − v.
    for path in (("layers_1", "scale"), ("layers_1", "bias"), ("layers_0", "bias")):
        w = np.asarray(params[path[0]][path[1]], np.float64)
        v = np.zeros_like(w)
        for t, grads in enumerate(gradients):
            v = 0.9 * v + float(opt.schedule(t)) * np.asarray(grads[path[0]][path[1]], np.float64)
            w = w - v
        np.testing.assert_allclose(np.asarray(ours[path[0]][path[1]]), w, rtol=1e-5, atol=1e-6)
    # A kernel's first update is −η_0 · c · ‖w‖ / ‖g + λw‖ · (g + λw), not −η_0 · g.
    first, _ = _run(opt.tx, params, gradients[:1])
    w = np.asarray(params["layers_0"]["kernel"], np.float64)
    d = np.asarray(gradients[0]["layers_0"]["kernel"], np.float64) + 0.01 * w
    expected = w - float(opt.schedule(0)) * 0.02 * np.linalg.norm(w) / np.linalg.norm(d) * d
    np.testing.assert_allclose(np.asarray(first["layers_0"]["kernel"]), expected, rtol=1e-5)


def test_lars_weight_decay_in_the_loss_gives_the_same_updates():
    """optax.lars adds λw before the trust ratio, so the L2 term can move into the loss."""
    params = jax.tree.map(lambda w: w + 0.5, _variables()["params"])
    gradients = _gradients(params, 6)
    in_tx, _ = _run(_build("lars", decay_bias=False).tx, params, gradients)
    opt = _build("lars", decay_bias=False, weight_decay_in_loss=True)
    update = jax.jit(opt.tx.update)
    state, in_loss = opt.tx.init(params), params
    for grads in gradients:
        grads = jax.tree.map(jnp.add, grads, jax.grad(opt.loss_penalty)(in_loss))
        updates, state = update(grads, state, in_loss)
        in_loss = optax.apply_updates(in_loss, updates)
    chex.assert_trees_all_close(in_loss, in_tx, rtol=1e-5, atol=1e-6)


def test_lamb_is_optax_lamb_on_masked_leaves_and_adam_elsewhere():
    opt = _build("lamb", base_lr=0.05, decay_bias=False, beta2=0.99)
    mask = _mask(decay_bias=False)
    params = jax.tree.map(lambda w: w + 0.5, _variables()["params"])
    gradients = _gradients(params, EPOCHS * STEPS_PER_EPOCH)
    ours, state = _run(opt.tx, params, gradients)
    lamb, _ = _run(
        optax.lamb(opt.schedule, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.01, mask=mask),
        params,
        gradients,
    )
    adam, _ = _run(optax.adam(opt.schedule, b1=0.9, b2=0.99, eps=1e-6), params, gradients)
    reference = jax.tree.map(lambda on, a, b: a if on else b, mask, lamb, adam)
    chex.assert_trees_all_close(ours, reference, rtol=1e-6, atol=1e-6)
    # optax.lamb alone would scale the BN leaves by the trust ratio too.
    assert np.abs(np.asarray(lamb["layers_1"]["scale"] - adam["layers_1"]["scale"])).max() > 1e-3
    assert float(optim.current_learning_rate(state)) == pytest.approx(
        float(opt.schedule(EPOCHS * STEPS_PER_EPOCH - 1)), rel=1e-6
    )


def _leaves(tree) -> dict[str, np.ndarray]:
    """{'layer/name': float64 array} of a two-level params (or mask) dict."""
    return {
        f"{layer}/{name}": np.asarray(v, np.float64)
        for layer, d in tree.items()
        for name, v in d.items()
    }


def _trust_ratio(w: np.ndarray, d: np.ndarray, coefficient: float = 1.0) -> float:
    """c · ‖w‖ / ‖d‖, or 1 where either norm is 0 (optax's `scale_by_trust_ratio`)."""
    w_norm, d_norm = np.linalg.norm(w), np.linalg.norm(d)
    return 1.0 if w_norm == 0 or d_norm == 0 else coefficient * w_norm / d_norm


def _lars_by_hand(params, gradients, *, lr, weight_decay, mask, coefficient, momentum, nesterov):
    """LARS in float64 from its definition (the docstring of `optim.lars`), per tensor."""
    weights, masked = _leaves(params), _leaves(mask)
    velocity = {key: np.zeros_like(w) for key, w in weights.items()}
    for grads in map(_leaves, gradients):
        for key, w in weights.items():
            d = grads[key] + weight_decay * w if masked[key] else grads[key]
            if masked[key]:
                d = _trust_ratio(w, d, coefficient) * d
            velocity[key] = momentum * velocity[key] + lr * d
            step = momentum * velocity[key] + lr * d if nesterov else velocity[key]
            weights[key] = w - step
    return weights


def _lamb_by_hand(params, gradients, *, lr, weight_decay, mask, b1, b2, eps):
    """LAMB in float64 from its definition (the docstring of `optim.lamb`), per tensor: Adam's
    bias-corrected moments, the decoupled decay and the trust ratio where `mask` is True."""
    weights, masked = _leaves(params), _leaves(mask)
    first = {key: np.zeros_like(w) for key, w in weights.items()}
    second = {key: np.zeros_like(w) for key, w in weights.items()}
    for t, grads in enumerate(map(_leaves, gradients), start=1):
        for key, w in weights.items():
            first[key] = b1 * first[key] + (1 - b1) * grads[key]
            second[key] = b2 * second[key] + (1 - b2) * grads[key] ** 2
            adam = (first[key] / (1 - b1**t)) / (np.sqrt(second[key] / (1 - b2**t)) + eps)
            d = adam + weight_decay * w if masked[key] else adam
            if masked[key]:
                d = _trust_ratio(w, d) * d
            weights[key] = w - lr * d
    return weights


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_follows_its_definition_in_float64_over_several_steps(nesterov):
    """`optim.lars` called directly, 8 steps with momentum, against LARS written out by hand:
    the trust ratio of every step (not only the first), the decay and momentum where the mask
    is True, plain momentum on the leaves it leaves out."""
    mask = _mask(decay_bias=False)
    params = jax.tree.map(lambda w: w + 0.5, _variables()["params"])
    gradients = _gradients(params, 8)
    settings = dict(weight_decay=0.005, mask=mask, momentum=0.8, nesterov=nesterov)
    ours, _ = _run(optim.lars(0.3, trust_coefficient=0.05, **settings), params, gradients)
    expected = _lars_by_hand(params, gradients, lr=0.3, coefficient=0.05, **settings)
    for key, value in _leaves(ours).items():
        np.testing.assert_allclose(value, expected[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_lamb_follows_its_definition_in_float64_over_several_steps():
    """`optim.lamb` called directly, 8 steps, against LAMB written out by hand."""
    mask = _mask(decay_bias=True)
    params = jax.tree.map(lambda w: w + 0.5, _variables()["params"])
    gradients = _gradients(params, 8)
    settings = dict(weight_decay=0.02, mask=mask, b1=0.8, b2=0.95, eps=1e-4)
    ours, _ = _run(optim.lamb(0.02, **settings), params, gradients)
    expected = _lamb_by_hand(params, gradients, lr=0.02, **settings)
    for key, value in _leaves(ours).items():
        np.testing.assert_allclose(value, expected[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_optimizer_names_are_what_build_optimizer_builds():
    """`OPTIMIZER_NAMES` lists exactly the names `build_optimizer` accepts, and each builds
    its own optimizer: the same gradients move the weights differently under each."""
    assert optim.OPTIMIZER_NAMES == ("sgd", "lars", "lamb")
    params = jax.tree.map(lambda w: w + 0.5, _variables()["params"])
    gradients = _gradients(params, 3)
    trained = {
        name: _run(_build(name, base_lr=0.05).tx, params, gradients)[0]
        for name in optim.OPTIMIZER_NAMES
    }
    for a, b in itertools.combinations(optim.OPTIMIZER_NAMES, 2):
        difference = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), trained[a], trained[b])
        assert max(jax.tree.leaves(difference)) > 1e-3, (a, b)
    with pytest.raises(ValueError, match=r"name must be one of 'sgd', 'lars', 'lamb'; got 'adam'"):
        _build("adam")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="adam"), "name must be one of 'sgd', 'lars', 'lamb'"),
        (dict(name="lamb", weight_decay_in_loss=True), "weight_decay_in_loss must be False"),
        (dict(name="lamb", nesterov=True), "nesterov must be False for name='lamb'"),
        (dict(name="lars", trust_coefficient=0.0), "trust_coefficient must be a finite number"),
        (dict(name="lamb", beta2=1.0), r"b2 must be a number in \[0, 1\)"),
    ],
)
def test_bad_optimizer_settings_are_refused(kwargs, message):
    settings = dict(
        batch_size=256, steps_per_epoch=4, epochs=2, warmup_epochs=1, decay="poly", nesterov=False
    )
    settings.update(kwargs)
    with pytest.raises(ValueError, match=message):
        optim.build_optimizer(_variables(), **settings)


# ---------------------------------------------------------------------------------------------
# The MLPerf ResNet-50 LARS schedule: linear warmup to the peak, then polynomial decay of power 2
# to the end value (mlcommons/training_results_v0.7, Google/benchmarks/resnet/implementations/
# resnet-research-JAX-tpu-v3-8192/train.py, polynomial_learning_rate_fn). The reference warms up
# from 0 (a wasted first update); here from η = peak · 256 / batch, as every warmup here does.

PEAK, BATCH, WARMUP, TOTAL, END = 10.0, 8192, 5 * 156, 56 * 156, 1e-4
ETA = PEAK * 256 / BATCH


def _mlperf_reference(step):
    """The reference's step_fn transliterated (its decay spans train − warmup + 1 steps)."""
    decay_steps = TOTAL - WARMUP + 1
    if step <= WARMUP:
        return PEAK * step / WARMUP
    decay_step = min(step - WARMUP, decay_steps)
    return END + (PEAK - END) * (1 - decay_step / decay_steps) ** 2


def _mlperf_schedule(power=2.0):
    return schedules.goyal_schedule(
        batch_size=BATCH,
        base_lr=ETA,
        steps_per_epoch=156,
        epochs=56,
        warmup_epochs=5,
        decay="poly",
        poly_power=power,
        poly_end_lr=END,
    )


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_poly_schedule_at_its_boundaries(power):
    schedule = _mlperf_schedule(power)
    assert (schedule.warmup_steps, schedule.total_steps) == (WARMUP, TOTAL)
    assert schedule.peak_lr == pytest.approx(PEAK)

    def closed_form(t):
        if t < WARMUP:
            return ETA + (PEAK - ETA) * t / WARMUP
        s = min(t - WARMUP, TOTAL - WARMUP)
        return END + (PEAK - END) * (1 - s / (TOTAL - WARMUP)) ** power

    for t in [0, 1, WARMUP - 1, WARMUP, WARMUP + 1, TOTAL // 2, TOTAL - 1, TOTAL, TOTAL + 7]:
        assert float(schedule(t)) == pytest.approx(closed_form(t), rel=1e-5, abs=2e-6), t
    assert float(schedule(TOTAL)) == pytest.approx(END, rel=1e-4)


def test_poly_schedule_follows_the_mlperf_reference():
    steps = np.arange(TOTAL)
    ours = np.asarray(jax.vmap(_mlperf_schedule())(jnp.asarray(steps)), np.float64)
    reference = np.array([_mlperf_reference(int(t)) for t in steps])
    # The warmup differs by η · (1 − t/W) (the start), the decay by the reference's extra step.
    np.testing.assert_allclose(
        ours[: WARMUP + 1] - reference[: WARMUP + 1],
        ETA * (1 - steps[: WARMUP + 1] / WARMUP),
        rtol=1e-4,
        atol=1e-5,
    )
    assert np.abs(ours - reference)[WARMUP:].max() < 2 * PEAK / (TOTAL - WARMUP)


def test_poly_end_value_must_not_exceed_the_peak():
    with pytest.raises(ValueError, match=r"poly_end_lr must be a number in \[0, 0.1\]"):
        schedules.goyal_schedule(
            batch_size=256,
            steps_per_epoch=10,
            epochs=2,
            decay="poly",
            poly_end_lr=0.2,
            warmup_epochs=1,
        )
