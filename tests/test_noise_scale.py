"""The gradient noise scale (McCandlish et al. 2018, App. A): the estimator on a problem with a
known answer, its averages, and its measurement inside the train step under both runners."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recipe import losses, noise_scale, optim
from train import runners, steps

# ---------------------------------------------------------------------------------------------
# The estimator on linear regression: y = x·w* + ε, x ~ N(0, I_d), ε ~ N(0, σ²), loss ½(x·w − y)².
# At w = w* + δ the per-example gradient is g = x (x·δ − ε), so G = E[g] = δ and
# E[g gᵀ] = |δ|² I + 2 δδᵀ + σ² I: |G|² = |δ|², tr(Σ) = (d + 1)|δ|² + d σ².


DELTA = np.array([0.5, -0.3, 0.2, 0.1])
SIGMA = 0.5


def _regression_gradients(rng, trials: int, batch: int) -> np.ndarray:
    """Per-example gradients at w* + δ, shape (trials, batch, d)."""
    x = rng.standard_normal((trials, batch, DELTA.size))
    noise = SIGMA * rng.standard_normal((trials, batch))
    return x * (x @ DELTA - noise)[..., None]


@pytest.mark.parametrize("small, big", [(4, 16), (8, 64)])
def test_estimates_are_unbiased_on_linear_regression(small, big):
    trials = 4000
    per_example = _regression_gradients(np.random.default_rng(small), trials, big)
    small_sq = np.sum(per_example[:, :small].mean(1) ** 2, -1)
    big_sq = np.sum(per_example.mean(1) ** 2, -1)
    grad_sq, trace = (
        np.asarray(a, np.float64)
        for a in noise_scale.unbiased_estimates(small_sq, big_sq, small, big)
    )
    d = DELTA.size
    true_grad_sq = float(DELTA @ DELTA)
    true_trace = (d + 1) * true_grad_sq + d * SIGMA**2
    for estimate, truth in ((grad_sq, true_grad_sq), (trace, true_trace)):
        standard_error = estimate.std() / np.sqrt(trials)
        assert abs(estimate.mean() - truth) < 4 * standard_error, (estimate.mean(), truth)
    # |G_B|² alone is biased by tr(Σ)/B: the correction is what makes the estimate right.
    naive_error = big_sq.mean() - true_grad_sq
    assert naive_error > 4 * big_sq.std() / np.sqrt(trials)
    np.testing.assert_allclose(naive_error, true_trace / big, rtol=0.2)


def test_unbiased_estimates_closed_form():
    grad_sq, trace = noise_scale.unbiased_estimates(5.0, 2.0, 2, 8)
    assert float(grad_sq) == pytest.approx((8 * 2.0 - 2 * 5.0) / 6)
    assert float(trace) == pytest.approx((5.0 - 2.0) / (1 / 2 - 1 / 8))


@pytest.mark.parametrize("small, big", [(0, 8), (8, 8), (9, 8)])
def test_unbiased_estimates_need_a_smaller_batch(small, big):
    with pytest.raises(ValueError, match="small_batch must be > 0 and < big_batch"):
        noise_scale.unbiased_estimates(1.0, 1.0, small, big)


def test_ema_averages_numerator_and_denominator_separately():
    decay = 0.6
    ema = noise_scale.noise_scale_ema(decay)
    observations = [(3.0, 1.5, 8, 32), (2.0, 1.8, 8, 32), (4.0, 1.0, 4, 32)]
    state = ema.init()
    for observation in observations:
        state = ema.update(state, *observation)
    estimates = [
        ((big * b_sq - small * s_sq) / (big - small), (s_sq - b_sq) / (1 / small - 1 / big))
        for s_sq, b_sq, small, big in observations
    ]
    weights = [(1 - decay) * decay ** (len(observations) - 1 - i) for i in range(3)]
    grad_sq = sum(w * g for w, (g, _) in zip(weights, estimates, strict=True)) / sum(weights)
    trace = sum(w * t for w, (_, t) in zip(weights, estimates, strict=True)) / sum(weights)
    smoothed = noise_scale.smoothed_estimates(state)
    np.testing.assert_allclose([float(s) for s in smoothed], [grad_sq, trace], rtol=1e-6)
    np.testing.assert_allclose(
        float(noise_scale.simple_noise_scale(state)), trace / grad_sq, rtol=1e-6
    )
    # Not the average of the ratios.
    mean_ratio = sum(w * t / g for w, (g, t) in zip(weights, estimates, strict=True)) / sum(weights)
    assert abs(mean_ratio - trace / grad_sq) > 0.1


@pytest.mark.parametrize("decay", [-0.1, 1.0, float("nan")])
def test_ema_decay_must_lie_in_the_unit_interval(decay):
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        noise_scale.noise_scale_ema(decay)


# ---------------------------------------------------------------------------------------------
# In the train step: softmax regression (no BatchNorm, so examples are independent), checked
# against per-example gradients computed separately.

GLOBAL_BATCH = 16
IMAGE_SHAPE = (2, 2, 1)
NUM_CLASSES = 3
WEIGHT_DECAY = 0.05
SMOOTHING = 0.1


class SoftmaxRegression(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        del train
        return nn.Dense(NUM_CLASSES)(x.reshape((x.shape[0], -1)))


def _problem():
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(GLOBAL_BATCH, *IMAGE_SHAPE)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, GLOBAL_BATCH).astype(np.int32),
    }
    model = SoftmaxRegression()
    variables = model.init(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)), train=False)
    variables = jax.tree.map(lambda w: w + 0.3, variables)  # away from a symmetric point
    return model, variables, batch


def _penalty(params):
    return losses.l2_penalty(params, WEIGHT_DECAY)


@functools.cache
def _step(runner_name: str, device_count: int, measure: bool = True):
    """(metrics, new host state) of one train step on `device_count` devices."""
    model, variables, batch = _problem()
    runner = runners.RUNNERS[runner_name](jax.devices()[:device_count])
    tx = optim.goyal_sgd(0.1, weight_decay=0.0, momentum=0.9)
    ema = noise_scale.noise_scale_ema(decay=0.0) if measure else None
    step = runner.map(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            label_smoothing=SMOOTHING,
            skip_nonfinite=False,
            loss_penalty=_penalty,
            axis_name=runner.axis_name,
            noise_scale_ema=ema,
        )
    )
    device_batch = jax.tree.map(lambda x: x.reshape(device_count, -1, *x.shape[1:]), batch)
    state = runner.place(steps.TrainState.create(variables, tx, ema))
    new_state, metrics = step(state, runner.put(device_batch))
    return runners.fetch_first(metrics), runners.fetch_first(new_state)


def _expected(device_count: int) -> tuple[float, float]:
    """|G|² and tr(Σ) from per-example gradients (float64), split as the step splits them."""
    model, variables, batch = _problem()

    def example_objective(params, image, label):
        logits = model.apply({"params": params}, image[None], train=True)
        return losses.cross_entropy(logits, label[None], SMOOTHING) + _penalty(params)

    per_example = jax.vmap(jax.grad(example_objective), in_axes=(None, 0, 0))(
        variables["params"], batch["image"], batch["label"]
    )
    flat = np.concatenate(
        [np.asarray(g, np.float64).reshape(GLOBAL_BATCH, -1) for g in jax.tree.leaves(per_example)],
        axis=1,
    )
    chunks = max(device_count, 2)  # one device: its two halves
    small = GLOBAL_BATCH // chunks
    small_sq = np.mean([np.sum(c.mean(0) ** 2) for c in np.split(flat, chunks)])
    big_sq = np.sum(flat.mean(0) ** 2)
    big = GLOBAL_BATCH
    return (
        (big * big_sq - small * small_sq) / (big - small),
        (small_sq - big_sq) / (1 / small - 1 / big),
    )


@pytest.mark.parametrize("runner_name", ["pmap", "shard_map"])
@pytest.mark.parametrize("device_count", [1, 2, 4])
def test_train_step_measures_the_estimates_of_its_split(runner_name, device_count):
    metrics, state = _step(runner_name, device_count)
    grad_sq, trace = _expected(device_count)
    np.testing.assert_allclose(metrics["noise_grad_sq"], grad_sq, rtol=1e-4)
    np.testing.assert_allclose(metrics["noise_trace"], trace, rtol=1e-4)
    np.testing.assert_allclose(metrics["noise_scale"], trace / grad_sq, rtol=2e-4)
    assert float(state.noise_scale.weight) == pytest.approx(1.0)  # decay 0: one estimate


def test_same_measurement_under_both_runners_and_for_one_or_two_devices():
    """One device splits its batch in the halves two devices hold: the same estimates."""
    for device_count in (1, 2, 4):
        chex.assert_trees_all_close(
            _step("pmap", device_count)[0], _step("shard_map", device_count)[0], rtol=1e-6
        )
    chex.assert_trees_all_close(_step("pmap", 1)[0], _step("pmap", 2)[0], rtol=1e-5)
    # Four devices hold quarters: another estimate of the same quantities.
    assert _step("pmap", 4)[0]["noise_trace"] != pytest.approx(_step("pmap", 2)[0]["noise_trace"])


@pytest.mark.parametrize("device_count", [1, 2])
def test_measuring_does_not_change_the_update(device_count):
    measured = _step("pmap", device_count)[1]
    plain = _step("pmap", device_count, measure=False)[1]
    chex.assert_trees_all_close(measured.params, plain.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(measured.opt_state, plain.opt_state, rtol=1e-6, atol=1e-7)
    assert plain.noise_scale is None


def test_one_device_needs_an_even_batch():
    model, variables, batch = _problem()
    tx = optim.goyal_sgd(0.1, weight_decay=0.0)
    ema = noise_scale.noise_scale_ema()
    runner = runners.pmap_runner(jax.devices()[:1])
    step = runner.map(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            label_smoothing=0.0,
            skip_nonfinite=False,
            noise_scale_ema=ema,
        )
    )
    odd = jax.tree.map(lambda x: x[None, :5], batch)
    with pytest.raises(ValueError, match="the batch must be even, got 5"):
        step(runner.place(steps.TrainState.create(variables, tx, ema)), runner.put(odd))


def _mixup_losses(measure: bool, num_steps: int = 3) -> list[float]:
    """The loss `train_step` logs at each of `num_steps` Mixup steps on one device."""
    model, variables, batch = _problem()
    runner = runners.pmap_runner(jax.devices()[:1])
    tx = optim.goyal_sgd(0.1, weight_decay=0.0, momentum=0.9)
    ema = noise_scale.noise_scale_ema() if measure else None
    mix = steps.mixing_fn(
        0,
        num_classes=NUM_CLASSES,
        label_smoothing=SMOOTHING,
        per_device=False,
        mixup_alpha=1.0,
        cutmix_alpha=0.0,
        switch_prob=0.5,
        prob=1.0,
    )
    step = runner.map(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            label_smoothing=SMOOTHING,
            skip_nonfinite=False,
            loss_penalty=_penalty,
            noise_scale_ema=ema,
            mix=mix,
        )
    )
    state = runner.place(steps.TrainState.create(variables, tx, ema))
    device_batch = runner.put(jax.tree.map(lambda x: x[None], batch))
    logged = []
    for _ in range(num_steps):
        state, metrics = step(state, device_batch)
        logged.append(float(runners.fetch_first(metrics)["loss"]))
    return logged


def test_one_device_measurement_trains_on_the_mixed_targets():
    """Regression: the one-device noise-scale path once had its own forward pass and loss, on
    the unmixed labels, so with Mixup it trained on mixed images against the wrong targets."""
    np.testing.assert_allclose(_mixup_losses(measure=True), _mixup_losses(measure=False), rtol=1e-6)
