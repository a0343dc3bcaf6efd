"""The per-device train step under pmap and shard_map on forced CPU devices."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recipe import losses, mixing, models, optim
from train import runners, steps

NUM_DEVICES = 4
BATCH = 16
IMAGE_SHAPE = (8, 8, 1)


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(BATCH, *IMAGE_SHAPE)).astype(np.float32),
        "label": rng.integers(0, 10, size=BATCH).astype(np.int32),
    }


def _setup(bn_scope: str, weight_decay_in_loss: bool = True, model=None):
    model = model or models.create_model(
        "resnet8",
        stage_sizes=(1,),  # one block: these tests hold at any depth, and it compiles faster
        num_classes=10,
        num_filters=4,
        bn_scope=models.BNScope.across(steps.AXIS)
        if bn_scope == "global"
        else models.BNScope.per_device(),
    )
    variables = steps.init_variables(model, IMAGE_SHAPE, seed=0)
    optimizer = optim.build_optimizer(
        variables,
        batch_size=BATCH,
        steps_per_epoch=4,
        epochs=2,
        base_lr=0.4,
        warmup_epochs=1,
        decay_epochs=(1.5,),
        weight_decay=0.01,
        weight_decay_in_loss=weight_decay_in_loss,
    )
    step = functools.partial(
        steps.train_step,
        model=model,
        tx=optimizer.tx,
        label_smoothing=0.1,
        skip_nonfinite=False,
        loss_penalty=optimizer.loss_penalty,
    )
    return steps.TrainState.create(variables, optimizer.tx), step


def _run(runner: runners.Runner, state, step_fn, num_steps: int = 2):
    """Runs `num_steps` steps with the batch split over the runner's devices."""
    train_step = runner.map(step_fn)
    device_state = runner.place(state)
    losses = []
    for i in range(num_steps):
        batch = jax.tree_util.tree_map(
            lambda x: x.reshape(len(runner.devices), -1, *x.shape[1:]), _batch(i)
        )
        device_state, metrics = train_step(device_state, runner.put(batch))
        losses.append(float(runners.fetch_first(metrics)["loss"]))
    return device_state, losses


def test_global_bn_k_devices_equals_one_device_on_the_whole_batch():
    state, step_fn = _setup("global")
    sharded, sharded_losses = _run(runners.pmap_runner(jax.devices()[:NUM_DEVICES]), state, step_fn)
    single, single_losses = _run(runners.pmap_runner(jax.devices()[:1]), state, step_fn)
    np.testing.assert_allclose(sharded_losses, single_losses, atol=1e-5)
    chex.assert_trees_all_close(
        runners.fetch_first(sharded.params), runners.fetch_first(single.params), atol=1e-5
    )
    chex.assert_trees_all_close(
        runners.fetch_first(sharded.batch_stats), runners.fetch_first(single.batch_stats), atol=1e-5
    )


@pytest.mark.parametrize("bn_scope", ["device", "global"])
def test_pmap_and_shard_map_runners_agree(bn_scope):
    state, step_fn = _setup(bn_scope)
    devices = jax.devices()[:NUM_DEVICES]
    by_pmap, pmap_losses = _run(runners.pmap_runner(devices), state, step_fn)
    by_shard_map, shard_map_losses = _run(runners.shard_map_runner(devices), state, step_fn)
    np.testing.assert_allclose(pmap_losses, shard_map_losses, rtol=1e-6)
    chex.assert_trees_all_close(
        jax.device_get(by_pmap), jax.device_get(by_shard_map), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("bn_scope, expect_equal", [("device", False), ("global", True)])
def test_bn_statistics_per_device_or_shared(bn_scope, expect_equal):
    state, step_fn = _setup(bn_scope)
    device_state, _ = _run(runners.pmap_runner(jax.devices()[:NUM_DEVICES]), state, step_fn, 1)
    means = np.asarray(device_state.batch_stats["stem_bn"]["mean"])  # (devices, channels)
    assert means.shape[0] == NUM_DEVICES
    spread = np.abs(means - means[0]).max()
    if expect_equal:
        assert spread < 1e-6, spread
    else:
        assert spread > 1e-3, f"per-device BN statistics should differ, spread {spread}"
    # The parameters stay identical on every device: the gradients are averaged.
    kernel = np.asarray(device_state.params["stem_conv"]["kernel"])
    np.testing.assert_array_equal(kernel, np.broadcast_to(kernel[0], kernel.shape))


def test_average_batch_stats_makes_devices_agree():
    state, step_fn = _setup("device")
    runner = runners.pmap_runner(jax.devices()[:NUM_DEVICES])
    device_state, _ = _run(runner, state, step_fn, 1)
    before = np.asarray(device_state.batch_stats["stem_bn"]["var"])
    averaged = runner.map(steps.average_batch_stats)(device_state)
    after = np.asarray(averaged.batch_stats["stem_bn"]["var"])
    np.testing.assert_allclose(after, np.broadcast_to(before.mean(0), before.shape), rtol=1e-6)


def test_skip_nonfinite_keeps_the_old_state():
    state, step_fn = _setup("device")
    runner = runners.pmap_runner(jax.devices()[:1])
    skip_step = runner.map(functools.partial(step_fn, skip_nonfinite=True))
    batch = _batch()
    batch["image"][0, 0, 0, 0] = np.nan
    device_state = runner.place(state)
    new_state, metrics = skip_step(
        device_state, runner.put(jax.tree_util.tree_map(lambda x: x[None], batch))
    )
    assert float(runners.fetch_first(metrics)["finite"]) == 0.0
    chex.assert_trees_all_equal(jax.device_get(new_state), jax.device_get(device_state))


def test_weight_decay_in_the_loss_or_the_optimizer_trains_the_same():
    """The trainer's L2-in-the-loss step and `goyal_sgd`'s decay in the optax chain."""
    runner = runners.pmap_runner(jax.devices()[:NUM_DEVICES])
    in_loss, in_loss_losses = _run(runner, *_setup("device", weight_decay_in_loss=True), 3)
    in_tx, in_tx_losses = _run(runner, *_setup("device", weight_decay_in_loss=False), 3)
    np.testing.assert_allclose(in_loss_losses, in_tx_losses, rtol=1e-6)
    chex.assert_trees_all_close(
        runners.fetch_first(in_loss.params), runners.fetch_first(in_tx.params), rtol=1e-5, atol=1e-6
    )


def test_mixing_in_the_train_step_is_the_library_on_each_devices_slice_until_it_stops():
    """Step 0 mixes (its loss is the cross-entropy of each device's slice mixed by
    `recipe.mixing` with the device's key); from `stop_step` = 1 on, the step is the plain one."""
    model = models.ResNet(
        stage_sizes=(1,), block_cls=models.BasicBlock, num_classes=10, num_filters=4, stem="cifar"
    )
    state, step_fn = _setup("device", model=model)
    # Logits far from uniform, so that the loss tells the targets apart.
    fc = dict(state.params["fc"], kernel=jax.random.normal(jax.random.key(1), (4, 10)))
    state = state.replace(params={**state.params, "fc": fc})
    options = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "switch_prob": 0.5}
    mix = steps.mixing_fn(
        7, num_classes=10, label_smoothing=0.1, per_device=True, stop_step=1, **options
    )
    runner = runners.pmap_runner(jax.devices()[:NUM_DEVICES])
    mixed_step = runner.map(functools.partial(step_fn, mix=mix))
    plain_step = runner.map(step_fn)
    batches = [
        runner.put(jax.tree_util.tree_map(lambda x: x.reshape(NUM_DEVICES, -1, *x.shape[1:]), b))
        for b in (_batch(0), _batch(1))
    ]
    start = runner.place(state)
    after_mixed, mixed_metrics = mixed_step(start, batches[0])
    _, plain_metrics = plain_step(start, batches[0])

    @jax.jit
    def slice_loss(images, targets):
        logits, _ = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        return losses.cross_entropy(logits, targets)

    batch, per_slice = _batch(0), []
    for device in range(NUM_DEVICES):
        rows = slice(device * BATCH // NUM_DEVICES, (device + 1) * BATCH // NUM_DEVICES)
        key = jax.random.fold_in(mixing.mixing_key(7, 0), device)
        images, targets = mixing.mixup_cutmix(
            key, batch["image"][rows], batch["label"][rows], num_classes=10,
            label_smoothing=0.1, **options,
        )  # fmt: skip
        per_slice.append(float(slice_loss(images, targets)))
    mixed_loss = float(runners.fetch_first(mixed_metrics)["loss"])
    np.testing.assert_allclose(mixed_loss, np.mean(per_slice), rtol=1e-5)
    assert abs(mixed_loss - float(runners.fetch_first(plain_metrics)["loss"])) > 1e-3

    # Step 1 >= stop_step: exactly the plain step from the same state.
    switched_off = jax.device_get(mixed_step(after_mixed, batches[1]))
    chex.assert_trees_all_equal(switched_off, jax.device_get(plain_step(after_mixed, batches[1])))


def test_uint8_batches_normalised_in_the_step_train_as_host_normalised_floats():
    from recipe import data

    spec = data.get_dataset_spec("mnist5k")
    state, step_fn = _setup("device")
    runner = runners.pmap_runner(jax.devices()[:2])
    rng = np.random.default_rng(0)
    uint8_batch = {
        "image": rng.integers(0, 256, (2, BATCH // 2, *IMAGE_SHAPE), dtype=np.uint8),
        "label": rng.integers(0, 10, (2, BATCH // 2)).astype(np.int32),
    }
    float_batch = {**uint8_batch, "image": data.normalize_images(uint8_batch["image"], spec)}
    normalize = functools.partial(data.normalize_images, spec=spec)
    on_device = runner.map(functools.partial(step_fn, normalize=normalize))
    on_host = runner.map(step_fn)
    device_state = runner.place(state)
    state_a, metrics_a = on_device(device_state, runner.put(uint8_batch))
    state_b, metrics_b = on_host(device_state, runner.put(float_batch))
    chex.assert_trees_all_close(
        jax.device_get(state_a), jax.device_get(state_b), rtol=1e-5, atol=1e-7
    )
    assert float(runners.fetch_first(metrics_a)["loss"]) == pytest.approx(
        float(runners.fetch_first(metrics_b)["loss"]), rel=1e-6
    )
    model = step_fn.keywords["model"]
    evaluate = functools.partial(steps.eval_step, model=model, num_classes=10)
    eval_batch = {"mask": np.ones((2, BATCH // 2), np.float32)}
    sums_a = runner.map(functools.partial(evaluate, normalize=normalize))(
        state_a, runner.put({**uint8_batch, **eval_batch})
    )
    sums_b = runner.map(evaluate)(state_a, runner.put({**float_batch, **eval_batch}))
    chex.assert_trees_all_close(jax.device_get(sums_a), jax.device_get(sums_b), rtol=1e-5)


# ---- One update against a float64 computation by hand.


class _DenseBNNet(nn.Module):
    """Dense → the recipe's BatchNorm (per device) → ReLU → Dense: small enough to
    differentiate by hand."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(5, name="hidden")(x.reshape(x.shape[0], -1))
        x = models.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(3, name="fc")(nn.relu(x))


def _forward_backward_by_hand(params, x, labels, smoothing):
    """(loss, gradients, batch mean, batch variance) of `_DenseBNNet` on one device's batch, in
    float64: BN normalises with the batch's mean and biased variance (ε = 1e-5), the loss is the
    mean label-smoothed cross-entropy, q = (1 − ε)·onehot + ε/K."""
    w1, b1 = params["hidden"]["kernel"], params["hidden"]["bias"]
    gamma, beta = params["bn"]["scale"], params["bn"]["bias"]
    w2, b2 = params["fc"]["kernel"], params["fc"]["bias"]
    n, classes = len(x), w2.shape[1]
    z = x @ w1 + b1
    mean, var = z.mean(0), z.var(0)
    inv_std = 1 / np.sqrt(var + 1e-5)
    normalised = (z - mean) * inv_std
    h = gamma * normalised + beta
    a = np.maximum(h, 0)
    logits = a @ w2 + b2
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    q = (1 - smoothing) * np.eye(classes)[labels] + smoothing / classes
    loss = -np.mean(np.sum(q * log_p, 1))
    d_logits = (np.exp(log_p) - q) / n
    d_h = (d_logits @ w2.T) * (h > 0)
    d_normalised = d_h * gamma
    d_z = (
        inv_std
        / n
        * (n * d_normalised - d_normalised.sum(0) - normalised * (d_normalised * normalised).sum(0))
    )
    grads = {
        "hidden": {"kernel": x.T @ d_z, "bias": d_z.sum(0)},
        "bn": {"scale": (d_h * normalised).sum(0), "bias": d_h.sum(0)},
        "fc": {"kernel": a.T @ d_logits, "bias": d_logits.sum(0)},
    }
    return loss, grads, mean, var


def _nesterov_sgd(weights, trace, gradient, learning_rate: float, momentum: float):
    """optax's Nesterov momentum: u ← m·u + g, w ← w − η·(g + m·u); (weights, u)."""
    trace = jax.tree.map(lambda u, g: momentum * u + g, trace, gradient)
    weights = jax.tree.map(
        lambda w, g, u: w - learning_rate * (g + momentum * u), weights, gradient, trace
    )
    return weights, trace


def test_two_updates_equal_a_float64_computation_by_hand():
    """The trainer's step, on 2 devices of 4 examples each, against Goyal's update written out:
    per-device BN statistics, the label-smoothed loss, gradients averaged over the devices (a
    mean over the global batch), coupled L2 (λ = 0.01) on the kernels and biases but not on BN's
    γ and β, Nesterov momentum 0.9, and the gradual warmup's learning rate
    η + (kη − η)·t/W = 0.1, 0.125 (k = 2, W = 4 updates), for two updates."""
    devices, per_device, smoothing, decay, momentum = 2, 4, 0.1, 0.01, 0.9
    model = _DenseBNNet()
    rng = np.random.default_rng(3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), train=False)
    params = jax.tree.map(
        lambda w: rng.normal(size=w.shape).astype(np.float32), variables["params"]
    )
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    optimizer = optim.build_optimizer(
        variables,
        batch_size=devices * per_device,
        base_batch_size=devices * per_device // 2,  # k = 2: peak 0.2
        base_lr=0.1,
        steps_per_epoch=4,
        epochs=3,
        warmup_epochs=1,
        decay_epochs=(2,),
        weight_decay=decay,
        momentum=momentum,
        nesterov=True,
        weight_decay_in_loss=True,
    )
    step = functools.partial(
        steps.train_step,
        model=model,
        tx=optimizer.tx,
        label_smoothing=smoothing,
        skip_nonfinite=False,
        loss_penalty=optimizer.loss_penalty,
    )
    runner = runners.pmap_runner(jax.devices()[:devices])
    train_step = runner.map(step)
    device_state = runner.place(steps.TrainState.create(variables, optimizer.tx))
    batches = [
        {
            "image": rng.normal(size=(devices, per_device, 2, 2, 1)).astype(np.float32),
            "label": rng.integers(0, 3, size=(devices, per_device)).astype(np.int32),
        }
        for _ in range(2)
    ]

    weights = jax.tree.map(lambda w: np.asarray(w, np.float64), params)
    decayed = {"hidden": {"kernel": 1, "bias": 1}, "bn": {"scale": 0, "bias": 0}}
    decayed["fc"] = {"kernel": 1, "bias": 1}
    trace = jax.tree.map(np.zeros_like, weights)
    running = {"mean": np.zeros((devices, 5)), "var": np.ones((devices, 5))}
    for t, batch in enumerate(batches):
        device_state, metrics = train_step(device_state, runner.put(batch))
        learning_rate = 0.1 + (0.2 - 0.1) * t / 4
        results = [
            _forward_backward_by_hand(
                weights, batch["image"][d].reshape(per_device, -1).astype(np.float64),
                batch["label"][d], smoothing,
            )
            for d in range(devices)
        ]  # fmt: skip
        gradient = jax.tree.map(lambda *g: np.mean(g, 0), *[grads for _, grads, _, _ in results])
        gradient = jax.tree.map(lambda g, w, on: g + decay * on * w, gradient, weights, decayed)
        weights, trace = _nesterov_sgd(weights, trace, gradient, learning_rate, momentum)
        for d, (_, _, mean, var) in enumerate(results):
            running["mean"][d] = 0.9 * running["mean"][d] + 0.1 * mean
            running["var"][d] = 0.9 * running["var"][d] + 0.1 * var
        fetched = runners.fetch_first(metrics)
        assert float(fetched["loss"]) == pytest.approx(np.mean([r[0] for r in results]), rel=1e-5)
        assert float(fetched["learning_rate"]) == pytest.approx(learning_rate, rel=1e-6)
        chex.assert_trees_all_close(
            runners.fetch_first(device_state.params), weights, rtol=1e-4, atol=1e-6
        )
    for name in ("mean", "var"):
        np.testing.assert_allclose(
            np.asarray(device_state.batch_stats["bn"][name]), running[name], rtol=1e-4, atol=1e-6
        )
