"""BatchNorm over groups of devices (Ying et al. 2018) under both runners, on 4 forced devices.

The reference for every group size g is a single-device BatchNorm applied to each group's
concatenated batch: g = all devices is then the global scope, g = 1 the per-device scope.
"""

import functools

import chex
import jax
import numpy as np
import pytest

from recipe import models, optim
from train import runners, steps

NUM_DEVICES = 4
PER_DEVICE = 3
FEATURES = 2


def _runner(name: str, group_size: int | None) -> runners.Runner:
    devices = jax.devices()[:NUM_DEVICES]
    if name == "pmap":
        return runners.pmap_runner(devices)
    return runners.shard_map_runner(devices, bn_group_size=group_size)


def _normalise(bn: models.BatchNorm, x: np.ndarray):
    """(output, updated batch_stats) of `bn` in training mode on `x`, mapped by nothing."""
    variables = bn.init(jax.random.key(0), x, use_running_average=True)
    y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    return np.asarray(y), jax.device_get(updates["batch_stats"])


def _grouped(runner_name: str, group_size: int, x: np.ndarray):
    """Outputs (devices, per-device, features) and per-device running stats of the grouped BN."""
    runner = _runner(runner_name, group_size)
    scope = runners.group_bn_scope(runner_name, NUM_DEVICES, group_size)
    bn = models.BatchNorm(bn_scope=scope, momentum=0.5)
    variables = bn.init(jax.random.key(0), x[0], use_running_average=True)

    def apply(variables, x):
        y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        return y, updates["batch_stats"]

    y, stats = runner.map(apply)(runner.place(variables), runner.put(x))
    return np.asarray(y), jax.device_get(stats)


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    scale = np.arange(1, NUM_DEVICES + 1, dtype=np.float32)[:, None, None]  # devices differ
    return (rng.normal(size=(NUM_DEVICES, PER_DEVICE, FEATURES)) * scale + scale).astype(np.float32)


@pytest.mark.parametrize("runner_name", ["pmap", "shard_map"])
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_group_bn_is_bn_of_each_groups_concatenated_batch(runner_name, group_size):
    x = _inputs()
    y, stats = _grouped(runner_name, group_size, x)
    single = models.BatchNorm(momentum=0.5)
    for start in range(0, NUM_DEVICES, group_size):
        members = slice(start, start + group_size)
        y_ref, stats_ref = _normalise(single, x[members].reshape(-1, FEATURES))
        np.testing.assert_allclose(y[members].reshape(-1, FEATURES), y_ref, rtol=1e-5, atol=1e-5)
        for device in range(start, start + group_size):
            chex.assert_trees_all_close(
                jax.tree.map(lambda s, d=device: s[d], stats), stats_ref, rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("runner_name", ["pmap", "shard_map"])
def test_group_of_all_devices_is_the_global_scope_and_of_one_the_per_device_scope(runner_name):
    x = _inputs()
    runner = _runner(runner_name, None)
    scopes = {}
    for scope, bn_scope in (
        ("global", models.BNScope.across(steps.AXIS)),
        ("device", models.BNScope.per_device()),
    ):
        bn = models.BatchNorm(bn_scope=bn_scope, momentum=0.5)
        variables = bn.init(jax.random.key(0), x[0], use_running_average=True)

        def apply(variables, x, bn=bn):
            return bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])[0]

        scopes[scope] = np.asarray(runner.map(apply)(runner.place(variables), runner.put(x)))
    np.testing.assert_allclose(
        _grouped(runner_name, NUM_DEVICES, x)[0], scopes["global"], atol=1e-5
    )
    np.testing.assert_allclose(_grouped(runner_name, 1, x)[0], scopes["device"], atol=1e-5)
    # The two scopes differ on these inputs, so the equalities above can fail.
    assert np.abs(scopes["global"] - scopes["device"]).max() > 0.1


def test_group_size_must_divide_the_device_count():
    with pytest.raises(ValueError, match="group_size must divide the device count 4"):
        models.device_groups(4, 3)
    with pytest.raises(ValueError, match="group_size must be an integer > 0"):
        runners.group_bn_scope("pmap", 4, 0)


def test_grouped_train_step_is_the_same_under_pmap_and_shard_map():
    """Gradients averaged over the whole 2-D mesh, BN over its inner axis: the runners agree."""
    group_size = 2
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.normal(size=(NUM_DEVICES, 2, 6, 6, 1)).astype(np.float32),
        "label": rng.integers(0, 3, size=(NUM_DEVICES, 2)).astype(np.int32),
    }
    results = {}
    for runner_name in ("pmap", "shard_map"):
        runner = _runner(runner_name, group_size)
        bn_scope = runners.group_bn_scope(runner_name, NUM_DEVICES, group_size)
        model = models.ResNet(
            stage_sizes=(1,),
            block_cls=models.BasicBlock,
            num_classes=3,
            num_filters=2,
            stem="cifar",
            bn_scope=bn_scope,
        )
        variables = steps.init_variables(model, (6, 6, 1), seed=0)
        tx = optim.goyal_sgd(0.5, weight_decay=1e-3, momentum=0.9)
        step = runner.map(
            functools.partial(
                steps.train_step,
                model=model,
                tx=tx,
                label_smoothing=0.1,
                skip_nonfinite=False,
                axis_name=runner.axis_name,
            )
        )
        state = runner.place(steps.TrainState.create(variables, tx))
        for _ in range(2):
            state, metrics = step(state, runner.put(batch))
        results[runner_name] = jax.device_get((state, metrics))
    chex.assert_trees_all_close(results["pmap"], results["shard_map"], rtol=1e-5, atol=1e-6)
    state, _ = results["pmap"]
    # Parameters are the same on every device (gradients averaged over all of them); running
    # statistics are shared within each group of two devices and differ between the groups.
    for leaf in jax.tree.leaves(state.params):
        np.testing.assert_allclose(leaf, np.broadcast_to(leaf[0], leaf.shape), rtol=1e-6)
    for leaf in jax.tree.leaves(state.batch_stats):
        np.testing.assert_allclose(leaf[1], leaf[0], rtol=1e-6)
        np.testing.assert_allclose(leaf[3], leaf[2], rtol=1e-6)
    mean = state.batch_stats["stem_bn"]["mean"]
    assert np.abs(mean[2] - mean[0]).max() > 1e-3
