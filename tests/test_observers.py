"""Observers only read: a run with one on ends with weights bitwise equal to the run without it,
and logs the same training loss at every step.

An observer measures or evaluates the training (the gradient noise scale, precise BN, the weight
EMA's evaluation, the relative update size, the loss's sharpness) and must never change it. Each
entry of `OBSERVERS` is one observer (or all of them) on one base config; a new observer is one
more entry. The sharpness
measurement is checked the same way by the run that tests its records (tests/test_sharpness.py):
its Hessian-vector products are the costliest programs to compile, so they are compiled for one
run, not two. The runs are the trainer's, on a tiny config of 2 epochs of 1 step (2 micro-steps
with gradient accumulation), an evaluation after each (where precise BN and the EMA act) and a loss
logged at every step; a run without observers is shared by the entries on its base config.
"""

import json
import math

import chex
import pytest
import tiny_config as tiny
from conftest import checkpoint_state, visible_devices

from train import sharpness, steps
from train.loop import train_and_evaluate
from train.metrics import read_metrics

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
RELATIVE_UPDATE = {"relative_update.enabled": True}
# The EMA is evaluated with statistics of its own weights: it needs precise BN.
PRECISE_BN_AND_EMA = {"bn.precise_batches": 1, "ema.decay": 0.9}
ALL = {**NOISE_SCALE, **PRECISE_BN_AND_EMA, **RELATIVE_UPDATE}
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
        {"flax_api": "nnx", "bn.scope": "global", "on_nonfinite": "skip", **MIXING},
        {**ALL, **SHARPNESS},
        id="nnx-all-sharpness-global_bn-mixing-skip",
    ),  # fmt: skip
    pytest.param(1, {"flax_api": "nnx"}, NOISE_SCALE, id="nnx-noise_scale-one_device"),
    # shard_map's per-device program, BN over groups of 2 devices (a 2 × 2 mesh).
    pytest.param(
        4,
        {"runner": "shard_map", "bn.scope": "group", **MIXING},
        ALL,
        id="shard_map-all-group_bn-mixing",
    ),
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
    """(devices, overrides) → (final params, metrics.jsonl's records), each run once."""
    runs = {}

    def run(devices: int, overrides: dict) -> tuple[dict, list[dict]]:
        key = (devices, json.dumps(overrides, sort_keys=True))
        if key not in runs:
            workdir = tmp_path_factory.mktemp("observers")
            config = tiny.make_config(data_dir, **{**BASE, **overrides})
            with visible_devices(devices):
                train_and_evaluate(config, str(workdir))
            records = read_metrics(workdir)
            last = max(r["step"] for r in records)
            runs[key] = checkpoint_state(workdir, last)["params"], records
        return runs[key]

    return run


def _of_kind(records: list[dict], kind: str) -> dict[int, dict]:
    return {r["step"]: r for r in records if r["kind"] == kind}


def _assert_the_observer_observed(observer: dict, records: list[dict], without: list[dict]):
    """Each observer's own records, which the run without it lacks: an observer switched off
    leaves the training unchanged too."""
    train, evals = _of_kind(records, "train"), _of_kind(records, "eval")
    train_without, evals_without = _of_kind(without, "train"), _of_kind(without, "eval")
    if observer.get("noise_scale.enabled"):  # B_simple, |G|² and tr(Σ) at every step
        for record in train.values():
            values = [record[name] for name in steps.NOISE_SCALE_METRICS]
            # Unbiased estimates (McCandlish et al. 2018, App. A): on a few noisy steps |G|²
            # may come out negative, as the paper says; measured, each is a finite non-zero.
            assert all(math.isfinite(v) and v != 0 for v in values), record
        assert not set(steps.NOISE_SCALE_METRICS) & set(train_without[1])
    if observer.get("bn.precise_batches"):  # precise BN's statistics, not the running averages
        assert list(evals) == list(evals_without) and len(evals) == 2  # one per epoch
        for step, record in evals.items():
            assert record["loss"] != evals_without[step]["loss"], (record, evals_without[step])
    if observer.get("ema.decay"):  # the EMA scored beside the weights
        assert all(math.isfinite(record["ema_loss"]) for record in evals.values())
        # timm's decay warmup, 1 − n^(−2/3), is 0 at the first update (the EMA is the weights)
        # and 0.37 at the second: the last evaluation scores other weights.
        last = evals[max(evals)]
        assert last["ema_loss"] != last["loss"], last
        assert "ema_loss" not in evals_without[max(evals)]
    if observer.get("relative_update.enabled"):  # ‖Δw‖/‖w‖ per parameter group at every step
        sizes = [
            {k: v for k, v in record.items() if k.startswith(steps.RELATIVE_UPDATE)}
            for record in train.values()
        ]
        assert all(len(s) > 2 and all(math.isfinite(v) for v in s.values()) for s in sizes)
        assert all(s[steps.RELATIVE_UPDATE_MAX] == max(s.values()) for s in sizes), sizes
        assert max(s[steps.RELATIVE_UPDATE_MAX] for s in sizes) > 0
        assert not any(k.startswith(steps.RELATIVE_UPDATE) for k in train_without[1])
    if observer.get("sharpness.every_steps"):  # λ_max at every step
        measured = _of_kind(records, sharpness.KIND)
        assert list(measured) == list(train) and all(r["sharpness"] > 0 for r in measured.values())
        assert not _of_kind(without, sharpness.KIND)


@pytest.mark.parametrize("devices, base, observer", OBSERVERS)
def test_an_observer_leaves_the_training_unchanged(trained, devices, base, observer):
    params, records = trained(devices, {**base, **observer})
    params_without, records_without = trained(devices, base)
    losses = {step: r["loss"] for step, r in _of_kind(records, "train").items()}
    assert list(losses) == list(range(1, len(losses) + 1))  # every step's, to the last
    assert losses == {step: r["loss"] for step, r in _of_kind(records_without, "train").items()}
    chex.assert_trees_all_equal(params, params_without)
    _assert_the_observer_observed(observer, records, records_without)
