"""Every bad input of the README's table: a clear error naming the field, the value and what
is allowed, raised before anything is compiled or loaded."""

import math
import os

import pytest
import tiny_config as tiny

from recipe.train import trainer


@pytest.fixture(autouse=True)
def nothing_is_built(monkeypatch):
    """Fails the test if the trainer gets as far as building (compiling) the model."""

    def build(*args, **kwargs):
        raise AssertionError("bad input must be rejected before the model is built")

    monkeypatch.setattr(trainer, "build", build)


BAD_INPUTS = {
    "label smoothing below 0": ({"label_smoothing": -0.1}, r"label_smoothing .*\[0, 1\].*-0\.1"),
    "label smoothing above 1": ({"label_smoothing": 1.5}, r"label_smoothing .*\[0, 1\].*1\.5"),
    "label smoothing NaN": ({"label_smoothing": math.nan}, r"label_smoothing .*\[0, 1\].*nan"),
    "negative epochs": ({"num_epochs": -1}, r"num_epochs must be an integer > 0, got -1"),
    "negative warmup": (
        {"optimizer.warmup_epochs": -1.0},
        r"optimizer\.warmup_epochs must be a finite number >= 0, got -1",
    ),
    "warmup longer than training": (
        {"optimizer.warmup_epochs": 4.0},
        r"optimizer\.warmup_epochs must be <= num_epochs \(3\), got 4",
    ),
    "batch not divisible by the devices": (
        {"batch_size": 1001},
        r"batch_size must be a multiple of the device count 4 .*got 1001",
    ),
    "batch smaller than the devices": (
        {"batch_size": 2},
        r"batch_size must be a multiple of the device count 4 .*got 2",
    ),
    "ghost batch not dividing the per-device batch": (
        {"bn.scope": "ghost", "bn.ghost_batch_size": 32},
        r"bn\.ghost_batch_size must divide the per-device batch 250 .*got 32",
    ),
    "unknown bn scope": ({"bn.scope": "sync"}, r"bn\.scope must be one of 'device', 'global'"),
    "unknown dataset": ({"dataset": "mnist"}, r"dataset must be one of 'mnist5k', 'cifar10'"),
    "unknown model": ({"model": "resnet51"}, r"model must be one of 'resnet8', 'resnet20'"),
    "unknown runner": ({"runner": "pjit"}, r"runner must be one of 'pmap', 'shard_map'"),
    "sync interval 0": ({"sync_every_steps": 0}, r"sync_every_steps must be an integer > 0"),
}


@pytest.mark.parametrize("overrides, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_config_field(overrides, message, data_dir, tmp_path):
    config = tiny.make_config(data_dir)
    with config.unlocked():
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            section = config
            for parent in parents:
                section = section[parent]
            section[leaf] = value  # unchecked types: what a hand-written config could hold
    with pytest.raises(trainer.ConfigError, match=message):
        trainer.train_and_evaluate(config, str(tmp_path))


def test_non_integer_epochs_are_refused_when_set():
    # ConfigDict keeps each field's type: 2.5 cannot even be assigned to the integer num_epochs.
    with pytest.raises(TypeError, match=r"field 'num_epochs'.*2\.5.*float.*int"):
        tiny.get_config().num_epochs = 2.5


def test_unknown_config_field(data_dir, tmp_path):
    config = tiny.make_config(data_dir)
    config.optimizer.lr = 0.1  # a typo for base_lr
    with pytest.raises(trainer.ConfigError, match=r"unknown config field\(s\) optimizer\.lr"):
        trainer.train_and_evaluate(config, str(tmp_path))


def test_dataset_not_prepared_offline(tmp_path):
    config = tiny.make_config(str(tmp_path / "empty_data_dir"), dataset="cifar10")
    with pytest.raises(trainer.ConfigError, match=r"(?s)cifar10 is not prepared.*prepare_dataset"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_workdir_that_cannot_be_written(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(trainer.ConfigError, match=r"workdir .*a_file/run.* cannot be created"):
        trainer.train_and_evaluate(tiny.make_config(data_dir), str(blocker / "run"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_workdir_without_write_permission(data_dir, tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(trainer.ConfigError, match=r"workdir .* is not writable"):
            trainer.train_and_evaluate(tiny.make_config(data_dir), str(tmp_path))
    finally:
        tmp_path.chmod(0o700)
