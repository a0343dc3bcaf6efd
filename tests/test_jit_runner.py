"""The jit runner: the step on the global batch, explicitly sharded (train/runners.py), against
the per-device runners.

The same config gives the same step: per-worker BatchNorm statistics over groups of the global
batch are the per-device statistics, so the losses agree to float32 round-off at every step
(measured: bitwise equal at every step of the tiny run and of the step tests below; asserted to
a relative 1e-6, since XLA may sum in another order) and the BN running averages to the same
(the per-device runners average their devices' EMAs, the jit runner keeps the EMA of the
average). A run resumes under the other runner both ways, and one with its parameters and
optimizer state split over the devices (`shard_params`) computes the same run and restores on
another device count.
"""

import functools
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config as tiny
from conftest import checkpoint_state, visible_devices

from recipe import models, optim
from train import checkpoints, evaluation, loop, resolve, runners, steps
from train.metrics import read_metrics

DEVICES = 4
PER_DEVICE = 8
IMAGE_SHAPE = (8, 8, 1)
LOSS_RTOL = 1e-6  # see the module doc
STATE_ATOL = 1e-6


def _batches(count: int, devices: int):
    rng = np.random.default_rng(0)
    for _ in range(count):
        yield {
            "image": rng.integers(0, 256, (devices, PER_DEVICE, *IMAGE_SHAPE), dtype=np.uint8),
            "label": rng.integers(0, 10, (devices, PER_DEVICE)).astype(np.int32),
        }


def _model(scope: models.BNScope) -> models.ResNet:
    return models.create_model(
        "resnet8", stage_sizes=(1,), num_classes=10, num_filters=4, bn_scope=scope
    )


def _per_device_scope(scope: str, runner: str, devices: int) -> models.BNScope:
    if scope == "ghost":
        return models.BNScope.ghost(4)
    if scope == "global":
        return models.BNScope.across(steps.AXIS)
    if scope == "group":
        return runners.group_bn_scope(runner, devices, 2)
    return models.BNScope.per_device()


STEP_CASES = [
    pytest.param("device", 4, False, id="device_bn"),
    pytest.param("device", 1, False, id="device_bn-one_device"),
    pytest.param("ghost", 4, True, id="ghost_bn-mixing_per_device"),
    pytest.param("global", 4, False, id="global_bn-mixing"),
    pytest.param("group", 4, False, id="group_bn-mixing"),
]


@pytest.mark.parametrize("scope, devices, per_device_mixing", STEP_CASES)
def test_the_jit_step_equals_the_per_device_step_over_16_steps(scope, devices, per_device_mixing):
    """16 steps with weight decay in the loss, label smoothing, Mixup/CutMix (paired within each
    worker's slice, as under pmap) and 2 micro-batches per update: the same losses, weights and
    optimizer state, and BN statistics equal to the per-device runner's averaged ones."""
    group_size = 2 if scope == "group" else None
    variables = steps.init_variables(_model(models.BNScope.per_device()), IMAGE_SHAPE, seed=0)
    optimizer = optim.build_optimizer(
        variables, batch_size=devices * PER_DEVICE, steps_per_epoch=4, epochs=4, base_lr=0.2,
        warmup_epochs=1, weight_decay=5e-4, weight_decay_in_loss=True, accumulation_steps=2,
    )  # fmt: skip
    results = {}
    for name in ("pmap", "jit"):
        if name == "jit":
            runner = runners.jit_runner(
                jax.devices()[:devices], groups=devices // group_size if group_size else None
            )
            model = _model(
                runners.global_bn_scope(scope, PER_DEVICE, ghost_batch_size=4, group_size=2)
            )
        else:
            runner = runners.pmap_runner(jax.devices()[:devices])
            model = _model(_per_device_scope(scope, name, devices))
        mix = steps.mixing_fn(
            0, num_classes=10, label_smoothing=0.1, per_device=per_device_mixing,
            workers=devices if name == "jit" else None, mixup_alpha=0.2, cutmix_alpha=1.0,
        )  # fmt: skip
        step = runner.map(
            functools.partial(
                steps.train_step, model=model, tx=optimizer.tx, label_smoothing=0.1,
                skip_nonfinite=False, loss_penalty=optimizer.loss_penalty,
                axis_name=runner.axis_name, normalize=lambda x: x.astype(jnp.float32) / 255,
                mix=None if scope == "device" else mix,
            ),
            donate_argnums=(0,),
        )  # fmt: skip
        average = runner.map(
            functools.partial(steps.average_batch_stats, axis_name=runner.axis_name)
        )
        state = runner.place(steps.TrainState.create(variables, optimizer.tx))
        losses = []
        for batch in _batches(16, devices):
            state, metrics = step(state, runner.put(batch))
            losses.append(float(runner.fetch(metrics)["loss"]))
        results[name] = losses, runner.fetch(average(state))
    (pmap_losses, pmap_state), (jit_losses, jit_state) = results["pmap"], results["jit"]
    np.testing.assert_allclose(jit_losses, pmap_losses, rtol=LOSS_RTOL)
    assert len(set(pmap_losses)) > 8, "the steps trained"
    chex.assert_trees_all_close(jit_state, pmap_state, rtol=1e-5, atol=STATE_ATOL)


def test_the_jit_runner_is_explicitly_sharded():
    """The batch's first axis is split over the mesh's data axis (both axes for BN over
    groups), the state replicated, or with `shard_params` split on its largest divisible axis;
    the jitted step keeps those shardings."""
    runner = runners.jit_runner(jax.devices()[:DEVICES])
    batch = runner.put(next(_batches(1, DEVICES)))
    assert batch["image"].shape == (DEVICES * PER_DEVICE, *IMAGE_SHAPE)
    assert batch["image"].sharding.spec == jax.P("data")
    assert batch["image"].sharding.mesh.axis_types == (jax.sharding.AxisType.Explicit,)
    grouped = runners.jit_runner(jax.devices()[:DEVICES], groups=2)
    assert grouped.put(next(_batches(1, DEVICES)))["label"].sharding.spec == jax.P(
        ("bn_groups", "bn_group")
    )
    params = {"kernel": np.ones((3, 3, 4, 8), np.float32), "bias": np.ones(10, np.float32)}
    state = steps.TrainState(
        step=np.int32(0), params=params, batch_stats={"mean": np.zeros(8, np.float32)},
        opt_state={"momentum": params},
    )  # fmt: skip
    placed = runners.jit_runner(jax.devices()[:DEVICES], shard_params=True).place(state)
    for tree in (placed.params, placed.opt_state["momentum"]):
        assert tree["kernel"].sharding.spec == jax.P(None, None, None, "data")
        assert tree["bias"].sharding.spec == jax.P()  # 10: no axis that 4 divides
    assert placed.batch_stats["mean"].sharding.spec == jax.P()  # statistics stay whole
    assert runner.place(state).params["kernel"].sharding.spec == jax.P()
    chex.assert_trees_all_equal(runner.fetch(placed), state)


# ---- The trainer: tests/tiny_config.py under the jit runner against the uninterrupted pmap run
# (conftest.finished_run).


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["kind"] == "train"}


def _assert_same_run(workdir, reference) -> None:
    losses, expected = _losses(workdir), _losses(reference)
    assert list(losses) == list(expected)
    np.testing.assert_allclose(list(losses.values()), list(expected.values()), rtol=LOSS_RTOL)
    chex.assert_trees_all_close(
        checkpoint_state(workdir, tiny.TOTAL_STEPS),
        checkpoint_state(reference, tiny.TOTAL_STEPS),
        atol=STATE_ATOL,
    )


@pytest.fixture(scope="module")
def jit_run(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("jit")
    result = loop.train_and_evaluate(tiny.make_config(data_dir, runner="jit"), str(workdir))
    return workdir, result


def test_a_jit_run_equals_the_pmap_run(jit_run, finished_run):
    """Losses, weights and the evaluations, precise BN's statistics included."""
    (workdir, result), (reference, expected) = jit_run, finished_run
    _assert_same_run(workdir, reference)
    chex.assert_trees_all_close(result, expected, rtol=1e-5)


@pytest.mark.parametrize("first, then", [("pmap", "jit"), ("jit", "pmap")])
def test_a_run_resumes_under_the_other_runner(
    first, then, jit_run, finished_run, data_dir, tmp_path
):
    started = (finished_run if first == "pmap" else jit_run)[0]
    workdir = tmp_path / "resumed"
    shutil.copytree(started, workdir)
    for step in (8, tiny.TOTAL_STEPS):  # as if it had stopped after its step-4 checkpoint
        shutil.rmtree(workdir / "checkpoints" / str(step))
    loop.train_and_evaluate(tiny.make_config(data_dir, runner=then), str(workdir))
    _assert_same_run(workdir, started)


def test_sharded_parameters_give_the_same_run_and_restore_on_other_device_counts(
    jit_run, data_dir, tmp_path
):
    config = tiny.make_config(data_dir, runner="jit", shard_params=True)
    loop.train_and_evaluate(config, str(tmp_path))
    _assert_same_run(tmp_path, jit_run[0])
    saved = checkpoint_state(tmp_path, tiny.TOTAL_STEPS)
    for devices in (1, 2):
        with visible_devices(devices):
            setup = resolve.resolve(config, devices)
            step, state = checkpoints.restore_checkpoint(setup, str(tmp_path))
            scored = evaluation.evaluate_checkpoint(config, str(tmp_path))
        assert step == scored["step"] == tiny.TOTAL_STEPS
        chex.assert_trees_all_equal(state.params, saved["params"])
        assert len(jax.tree.leaves(state.opt_state)) == len(jax.tree.leaves(saved["opt_state"]))
        assert 0.0 < scored["accuracy"] <= 1.0


def test_a_nonfinite_update_is_skipped_on_the_global_batch():
    """`on_nonfinite='skip'` under the jit runner: a step whose loss is NaN (one NaN image)
    leaves the whole state as it was and says so in its `finite` metric."""
    runner = runners.jit_runner(jax.devices()[:DEVICES])
    model = _model(runners.global_bn_scope("device", PER_DEVICE, ghost_batch_size=4, group_size=2))
    variables = steps.init_variables(model, IMAGE_SHAPE, seed=0)
    tx = optim.goyal_sgd(0.1)
    step = runner.map(
        functools.partial(
            steps.train_step, model=model, tx=tx, label_smoothing=0.1, skip_nonfinite=True,
            axis_name=None,
        )
    )  # fmt: skip
    state = runner.place(steps.TrainState.create(variables, tx))
    batch = next(_batches(1, DEVICES))
    images = batch["image"].astype(np.float32)
    images[3, 5, 0, 0, 0] = np.nan  # one pixel of one worker's example
    skipped, metrics = step(state, runner.put({**batch, "image": images}))
    assert float(runner.fetch(metrics)["finite"]) == 0.0
    chex.assert_trees_all_equal(runner.fetch(skipped), runner.fetch(state))
    applied, metrics = step(
        state, runner.put({**batch, "image": batch["image"].astype(np.float32)})
    )
    assert float(runner.fetch(metrics)["finite"]) == 1.0
    assert int(runner.fetch(applied).step) == 1
