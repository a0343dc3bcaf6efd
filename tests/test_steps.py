"""The per-device train step under pmap and shard_map on forced CPU devices."""

import functools

import chex
import jax
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
