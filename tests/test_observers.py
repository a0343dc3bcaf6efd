"""Observers only read: a run with one on ends with weights bitwise equal to the run without it,
and logs the same training loss at every step.

An observer measures or evaluates the training (the gradient noise scale, precise BN, the weight
EMA's evaluation, the loss's sharpness) and must never change it. Each entry of `OBSERVERS` is one
observer (or all of them) on one base config; a new observer is one more entry. The sharpness
measurement is checked the same way by the run that tests its records (tests/test_sharpness.py):
its Hessian-vector products are the costliest programs to compile, so they are compiled for one
run, not two. The runs are the trainer's, on a tiny config of 2 epochs of 1 step (2 micro-steps
with gradient accumulation), an evaluation after each (where precise BN and the EMA act) and a loss
logged at every step; a run without observers is shared by the entries on its base config.
"""

import json

import chex
import pytest
import tiny_config as tiny
from conftest import checkpoint_state, visible_devices

from train.loop import train_and_evaluate

BASE = {
    "train_examples": 1000,  # mnist5k's first 1,000 training examples, in one batch:
    "batch_size": 1000,  # 1 step per epoch
    "image_size": 7,  # 28 / 4: the loader resizes by whole factors as one array
    "num_epochs": 2,
    "optimizer.base_lr": 0.01,
    "optimizer.warmup_epochs": 1,
    "optimizer.decay": "constant",
    "optimizer.decay_epochs": None,
    "bn.precise_batches": 0,
    "log_every_steps": 1,
    "checkpoint_every_steps": 1000,  # only the last step's
}
MIXING = {"mixing.mixup_alpha": 0.2, "mixing.cutmix_alpha": 1.0}
NOISE_SCALE = {"noise_scale.enabled": True}
# The EMA is evaluated with statistics of its own weights: it needs precise BN.
PRECISE_BN_AND_EMA = {"bn.precise_batches": 1, "ema.decay": 0.9}
ALL = {**NOISE_SCALE, **PRECISE_BN_AND_EMA}
SHARPNESS = {"sharpness.every_steps": 1, "sharpness.iterations": 2}

# (devices, base overrides, the observer's overrides)
OBSERVERS = [
    pytest.param(4, {}, NOISE_SCALE, id="noise_scale"),
    pytest.param(1, {}, NOISE_SCALE, id="noise_scale-one_device"),
    # Before the trainer's layout change, the one-device noise-scale path ran a second forward
    # pass against the unmixed labels: with Mixup/CutMix the loss changed from the first step.
    pytest.param(1, MIXING, NOISE_SCALE, id="noise_scale-one_device-mixing"),
    pytest.param(4, {}, PRECISE_BN_AND_EMA, id="precise_bn-ema"),
    pytest.param(4, {"bn.scope": "global", **MIXING}, ALL, id="all-global_bn-mixing"),
    pytest.param(
        4,
        {"bn.scope": "group", "batch_size": 500, "accumulation_steps": 2},
        ALL,
        id="all-group_bn-accumulation",
    ),
    pytest.param(
        4,
        {"bn.scope": "ghost", "bn.ghost_batch_size": 125, "mixing.per_device": True, **MIXING},
        ALL,
        id="all-ghost_bn-mixing_per_device",
    ),
    # The NNX model (recipe.nnx) through the same observers, the sharpness's too.
    pytest.param(
        4,
        {"flax_api": "nnx", "bn.scope": "global", **MIXING},
        {**ALL, **SHARPNESS},
        id="nnx-all-sharpness-global_bn-mixing",
    ),  # fmt: skip
    pytest.param(1, {"flax_api": "nnx"}, NOISE_SCALE, id="nnx-noise_scale-one_device"),
    # The jit runner (the step on the global batch), its parameters split over the devices.
    pytest.param(
        4,
        {
            "runner": "jit",
            "shard_params": True,
            "bn.scope": "group",
            "batch_size": 500,
            "accumulation_steps": 2,
            "on_nonfinite": "skip",
            **MIXING,
        },
        {**ALL, **SHARPNESS},
        id="jit-all-sharpness-group_bn-accumulation-mixing",
    ),  # fmt: skip
]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """(devices, overrides) → (final params, {step: logged training loss}), each run once."""
    runs = {}

    def run(devices: int, overrides: dict) -> tuple[dict, dict[int, float]]:
        key = (devices, json.dumps(overrides, sort_keys=True))
        if key not in runs:
            workdir = tmp_path_factory.mktemp("observers")
            config = tiny.make_config(data_dir, **{**BASE, **overrides})
            with visible_devices(devices):
                train_and_evaluate(config, str(workdir))
            records = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            losses = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
            runs[key] = checkpoint_state(workdir, max(losses))["params"], losses
        return runs[key]

    return run


@pytest.mark.parametrize("devices, base, observer", OBSERVERS)
def test_an_observer_leaves_the_training_unchanged(trained, devices, base, observer):
    params, losses = trained(devices, {**base, **observer})
    params_without, losses_without = trained(devices, base)
    assert list(losses) == list(range(1, len(losses) + 1))  # every step's, to the last
    assert losses == losses_without
    chex.assert_trees_all_equal(params, params_without)
