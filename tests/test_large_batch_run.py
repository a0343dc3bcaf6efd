"""The large-batch tools in the trainer: the MLPerf configs describe themselves, and a run with
LARS, BatchNorm over device groups and the noise scale logs it and resumes exactly."""

import shutil

import chex
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tiny_config as tiny
from tensorboard.backend.event_processing import event_file_loader

from configs import imagenet_resnet50_lars
from train import describe, loop, resolve
from train.metrics import read_metrics

# Regime: (peak lr, warmup epochs, epochs, momentum, weight decay) of the MLPerf table.
MLPERF = {
    "8k": ("10", 5, 56, "0.9", "0.0002"),
    "16k": ("25", 5, 56, "0.9", "0.0002"),
    "32k": ("29", 18, 64, "0.929", "0.0001"),
    "64k": ("23.081", 33, 92, "0.9537213777059405", "0.0001"),
}


@pytest.mark.parametrize("regime", MLPERF)
def test_mlperf_configs_describe_their_settings(regime):
    config = imagenet_resnet50_lars.get_config(regime)  # --config ...lars.py:<regime>
    text = describe.describe(config)
    peak, warmup, epochs, momentum, weight_decay = MLPERF[regime]
    assert f"= {peak} (linear scaling rule)" in text
    assert f"({warmup} epochs) from" in text
    assert f"({epochs} epochs ×" in text
    assert f"poly, power 2, from {peak} to 0.0001" in text
    assert "LARS (You et al. 2017, optax.lars), trust coefficient 0.001" in text
    assert f"momentum {momentum}, nesterov False, weight decay {weight_decay}" in text
    assert "BN γ/β and biases: plain momentum, no trust ratio, no decay" in text
    assert "label smoothing    0.1" in text


def _saved_state(workdir, step: int) -> dict:
    """The whole train state a run checkpointed at `step` (the noise scale's averages too)."""
    path = (workdir / "checkpoints" / str(step) / "state").absolute()
    return ocp.StandardCheckpointer().restore(path)


LARGE_BATCH = {
    "optimizer.name": "lars",
    "optimizer.nesterov": False,
    "optimizer.decay": "poly",
    "optimizer.base_lr": 1.0,
    "optimizer.decay_epochs": None,
    "bn.scope": "group",
    "bn.group_size": 2,
    "noise_scale.enabled": True,
    "noise_scale.decay": 0.5,
    "runner": "shard_map",
    "image_size": 7,  # 28 / 4: the loader resizes by whole factors as one array
    "num_epochs": 1,  # 4 steps: 2 of warmup, 2 of decay; a checkpoint after each pair
    "optimizer.warmup_epochs": 0.5,
    "checkpoint_every_steps": 2,
}


def test_lars_group_bn_noise_scale_run_logs_and_resumes_exactly(data_dir, tmp_path):
    config = tiny.make_config(data_dir, **LARGE_BATCH)
    text = describe.describe(config)
    assert "over groups of 2 devices, 500 examples each" in text
    assert "from the gradients of each device's 250 examples and of all 1000" in text
    workdir = tmp_path / "run"
    loop.train_and_evaluate(config, str(workdir))

    train = [r for r in read_metrics(workdir) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4]
    for record in train:
        assert np.isfinite([record["noise_scale"], record["noise_trace"]]).all(), record
        assert record["noise_trace"] > 0, record
    (event_file,) = (workdir / "tensorboard").iterdir()
    tags = {
        value.tag
        for event in event_file_loader.EventFileLoader(str(event_file)).Load()
        for value in event.summary.value
    }
    assert {"train/noise_scale", "train/noise_grad_sq", "train/noise_trace"} <= tags
    final = _saved_state(workdir, 4)
    assert float(final["noise_scale"]["weight"]) == pytest.approx(1 - 0.5**4)

    # Killed after the step-2 checkpoint: the resumed run continues the same averages.
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    loop.train_and_evaluate(config, str(resumed))
    chex.assert_trees_all_equal(_saved_state(resumed, 4), final)
    again = [r for r in read_metrics(resumed) if r["kind"] == "train"]
    for key in ("noise_scale", "noise_grad_sq", "noise_trace", "loss"):
        assert [r[key] for r in again] == [r[key] for r in train], key


def test_the_noise_scale_on_one_device_needs_an_even_batch(data_dir):
    config = tiny.make_config(data_dir, batch_size=999, **{"noise_scale.enabled": True})
    with pytest.raises(resolve.ConfigError, match=r"^batch_size must be even .*fix: --config"):
        resolve.resolve(config, device_count=1)
