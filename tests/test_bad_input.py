"""Every bad input of the trainer guide's table: one line naming the dotted field, the value,
what is allowed and the flag that fixes it, raised before anything is compiled, loaded or
written; a config field's the same from training, `--describe` and `--eval_only`, a dataset that
is not prepared from training and `--eval_only` (`--describe` reads no data); an existing work
dir is left byte for byte as it was.
"""

import ast
import hashlib
import io
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import pytest
import tiny_config as tiny
from conftest import xla_flags
from PIL import Image

from configs import default
from recipe.data import datasets
from train import checkpoints, describe, evaluation, loop, resolve

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKEND_COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: (
        BACKEND_COMPILES.append(event) if event.endswith("backend_compile_duration") else None
    )
)

# (overrides, message): the message must match at the start of the error, which must also
# end with a `fix: --config.<field>=<value>` that passes the field's rules.
BAD_INPUTS = {
    "flax api unknown": (
        {"flax_api": "haiku"},
        r"flax_api must be one of 'linen', 'nnx'; got 'haiku'; fix: --config\.flax_api=linen",
    ),
    "sharded parameters without the jit runner": (
        {"shard_params": True},
        r"shard_params=true splits .* under runner='jit' only, got runner='pmap'; fix: "
        r"--config\.runner=jit",
    ),
    "label smoothing below 0": ({"label_smoothing": -0.1}, r"label_smoothing .*\[0, 1\].*-0\.1"),
    "label smoothing above 1": ({"label_smoothing": 1.5}, r"label_smoothing .*\[0, 1\].*1\.5"),
    "label smoothing NaN": ({"label_smoothing": math.nan}, r"label_smoothing .*\[0, 1\].*nan"),
    "negative epochs": ({"num_epochs": -1}, r"num_epochs must be an integer > 0, got -1"),
    "a stage of no blocks": (
        {"stage_sizes": (2, 0)},
        r"stage_sizes\[1\] must be an integer > 0, got 0",
    ),
    "no stages": ({"stage_sizes": ()}, r"stage_sizes must be a non-empty tuple .*, got \(\)"),
    "negative warmup": (
        {"optimizer.warmup_epochs": -1.0},
        r"optimizer\.warmup_epochs must be a finite number >= 0, got -1",
    ),
    "warmup as long as training": (
        {"optimizer.warmup_epochs": 3.0},
        r"optimizer\.warmup_epochs must be < num_epochs \(3\), got 3",
    ),
    "base lr 0": ({"optimizer.base_lr": 0.0}, r"optimizer\.base_lr must be a finite number > 0"),
    "base lr negative": ({"optimizer.base_lr": -0.1}, r"optimizer\.base_lr .* > 0, got -0\.1"),
    "base lr infinite": ({"optimizer.base_lr": math.inf}, r"optimizer\.base_lr .* > 0, got inf"),
    "base batch 0": (
        {"optimizer.base_batch_size": 0},
        r"optimizer\.base_batch_size must be an integer > 0, got 0",
    ),
    "negative weight decay": (
        {"optimizer.weight_decay": -1e-4},
        r"optimizer\.weight_decay must be a finite number >= 0",
    ),
    "momentum 1": ({"optimizer.momentum": 1.0}, r"optimizer\.momentum .*\[0, 1\), got 1\.0"),
    "decay factor 0": ({"optimizer.decay_factor": 0.0}, r"optimizer\.decay_factor .*\(0, 1\]"),
    "decay factor 2": ({"optimizer.decay_factor": 2.0}, r"optimizer\.decay_factor .*got 2\.0"),
    "unknown warmup": (
        {"optimizer.warmup": "linear"},
        r"optimizer\.warmup must be one of 'gradual', 'constant', 'none'; got 'linear'",
    ),
    "unknown decay": ({"optimizer.decay": "exp"}, r"optimizer\.decay must be one of 'step'"),
    "decay epochs unsorted": (
        {"optimizer.decay_epochs": (2.5, 2.0)},
        r"optimizer\.decay_epochs must be strictly increasing .*got \(2\.5, 2\.0\)",
    ),
    "decay epoch past the end": (
        {"optimizer.decay_epochs": (2, 3)},
        r"optimizer\.decay_epochs must lie strictly between optimizer\.warmup_epochs \(1\) and "
        r"num_epochs \(3\), got \(2, 3\)",
    ),
    "decay inside the warmup": (
        {"optimizer.decay_epochs": (1, 2)},
        r"optimizer\.decay_epochs must lie strictly between optimizer\.warmup_epochs \(1\)",
    ),
    "decays on the same update": (
        {"optimizer.decay_epochs": (2.0, 2.1)},
        r"optimizer\.decay_epochs \(2\.0, 2\.1\) fall on updates \[8, 8\]",
    ),
    "batch not divisible by the devices": (
        {"batch_size": 1001},
        r"batch_size must be a multiple of the device count 4 .*got 1001",
    ),
    "batch smaller than the devices": (
        {"batch_size": 2},
        r"batch_size must be a multiple of the device count 4 .*got 2",
    ),
    "eval batch not divisible by the devices": (
        {"eval_batch_size": 999},
        r"eval_batch_size must be a multiple of the device count 4 .*got 999",
    ),
    "accumulated batch larger than the dataset": (
        {"accumulation_steps": 5},
        r"batch_size × accumulation_steps must be <= the 4000 training examples of mnist5k",
    ),
    "ghost batch not dividing the per-device batch": (
        {"bn.scope": "ghost", "bn.ghost_batch_size": 32},
        r"bn\.ghost_batch_size must divide the per-device batch 250 .*got 32",
    ),
    "BN group not dividing the devices": (
        {"bn.scope": "group", "bn.group_size": 3},
        r"bn\.group_size must divide the device count 4, got 3",
    ),
    "BN group of 0 devices": ({"bn.group_size": 0}, r"bn\.group_size must be an integer > 0"),
    "unknown optimizer": (
        {"optimizer.name": "adam"},
        r"optimizer\.name must be one of 'sgd', 'lars', 'lamb'; got 'adam'",
    ),
    "trust coefficient 0": (
        {"optimizer.trust_coefficient": 0.0},
        r"optimizer\.trust_coefficient must be a finite number > 0, got 0\.0",
    ),
    "LAMB's beta2 1": ({"optimizer.beta2": 1.0}, r"optimizer\.beta2 .*\[0, 1\), got 1\.0"),
    "LAMB with Nesterov": (
        {"optimizer.name": "lamb"},
        r"optimizer\.nesterov must be False for name='lamb'",
    ),
    "poly power 0": (
        {"optimizer.decay": "poly", "optimizer.poly_power": 0.0},
        r"optimizer\.poly_power must be a finite number > 0, got 0\.0",
    ),
    "poly end above the peak": (
        {"optimizer.decay": "poly", "optimizer.poly_end_lr": 10.0},
        r"optimizer\.poly_end_lr must be a number in \[0, 3\.125\] \(the peak learning rate\)",
    ),
    "noise scale EMA decay 1": (
        {"noise_scale.decay": 1.0},
        r"noise_scale\.decay must be a number in \[0, 1\), got 1\.0",
    ),
    "sharpness every negative steps": (
        {"sharpness.every_steps": -1},
        r"sharpness\.every_steps must be an integer >= 0, got -1",
    ),
    "sharpness without iterations": (
        {"sharpness.iterations": 0},
        r"sharpness\.iterations must be an integer > 0, got 0",
    ),
    "sharpness with LARS": (
        {"sharpness.every_steps": 5, "optimizer.name": "lars", "optimizer.nesterov": False},
        r"sharpness\.every_steps > 0 needs optimizer\.name='sgd'",
    ),
    "unknown warmup start": (
        {"optimizer.warmup_start": "edge"},
        r"optimizer\.warmup_start must be one of 'base_lr', 'stability_edge'; got 'edge'",
    ),
    "warmup at the stability edge with LARS": (
        {
            "optimizer.warmup_start": "stability_edge",
            "optimizer.name": "lars",
            "optimizer.nesterov": False,
        },
        r"optimizer\.warmup_start='stability_edge' needs optimizer\.name='sgd'.*"
        r"fix: --config\.optimizer\.warmup_start=base_lr",
    ),
    "stability edge without a warmup": (
        {"optimizer.warmup_start": "stability_edge", "optimizer.warmup": "none"},
        r"optimizer\.warmup_start='stability_edge' needs .* a warmup to start, "
        r"got optimizer\.name='sgd' and optimizer\.warmup='none'",
    ),
    "bn momentum above 1": ({"bn.momentum": 1.5}, r"bn\.momentum must be a number in \[0, 1\)"),
    "bn momentum 1 (precise BN divides by 1 − m)": (
        {"bn.momentum": 1.0},
        r"bn\.momentum must be a number in \[0, 1\), got 1\.0; fix: --config\.bn\.momentum=0\.9",
    ),
    "unknown bn scope": ({"bn.scope": "sync"}, r"bn\.scope must be one of 'device', 'global'"),
    "unknown dataset": (
        {"dataset": "mnist5"},
        r"dataset 'mnist5' is none of mnist5k, cifar10, .*no dataset TFDS knows, and not "
        r"folder:PATH \(did you mean mnist5k\?\); fix: --config\.dataset=mnist5k",
    ),
    "a TFDS dataset that is not image classification": (
        {"dataset": "glue"},
        r"dataset glue is not an image-classification dataset recipe can read",
    ),
    "unknown augmentation family": (
        {"augmentation_family": "cifar"},
        r"augmentation_family must be one of 'small', 'imagenet'; got 'cifar'",
    ),
    "'small' augmentation for images of varying size": (
        {
            "dataset": "synthetic_imagenet_small",
            "augmentation_family": "small",
            "batch_size": 16,
            "data_in_memory": False,
        },
        r"augmentation_family 'small' does not fit synthetic_imagenet_small: the 'small' "
        r"augmentation family pads and crops images of one size",
    ),
    "image mean above 1": ({"image_mean": (2.0,), "image_std": (0.3,)}, r"image_mean\[0\] must"),
    "image std 0": ({"image_mean": (0.1,), "image_std": (0.0,)}, r"image_std\[0\] must be"),
    "image mean without std": (
        {"image_mean": (0.1,)},
        r"image_mean and image_std must be set together",
    ),
    "image statistics for another channel count": (
        {"image_mean": (0.5, 0.5, 0.5), "image_std": (0.3,)},
        r"image_mean must have one value per channel \(1 for mnist5k\), got \(0\.5, 0\.5, 0\.5\)",
    ),
    "unknown unreadable_images": (
        {"unreadable_images": "ignore"},
        r"unreadable_images must be one of 'stop', 'skip'; got 'ignore'",
    ),
    "allow_unbalanced_subset unset": (
        {"allow_unbalanced_subset": None},
        r"allow_unbalanced_subset must be True or False, got None",
    ),
    "unknown model": ({"model": "resnet51"}, r"model must be one of 'resnet8', 'resnet20'"),
    "unknown runner": ({"runner": "pjit"}, r"runner must be one of 'pmap', 'shard_map'"),
    "unknown dtype": ({"dtype": "float16"}, r"dtype must be one of 'float32', 'bfloat16'"),
    "width 0": ({"num_filters": 0}, r"num_filters must be an integer > 0, got 0"),
    "image size 0": ({"image_size": 0}, r"image_size must be an integer > 0, got 0"),
    "no training examples": ({"train_examples": 0}, r"train_examples must be an integer > 0"),
    "more training examples than the split": (
        {"train_examples": 4001},
        r"train_examples must be <= the 4000 training examples of mnist5k, got 4001",
    ),
    "JPEG dataset held in memory": (
        {"dataset": "synthetic_imagenet_small", "batch_size": 16, "data_in_memory": True},
        r"data_in_memory holds every decoded image in memory, for the 'small' datasets only; "
        r"synthetic_imagenet_small is of the 'imagenet' family; "
        r"fix: --config\.data_in_memory=false",
    ),
    "negative data workers": ({"data_workers": -1}, r"data_workers must be an integer >= 0"),
    "device prefetch 0": ({"device_prefetch": 0}, r"device_prefetch must be an integer > 0"),
    "negative seed": ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
    "seed too large": ({"seed": 2**40}, r"seed must be an integer in \[0, 2\^32\)"),
    "sync interval 0": ({"sync_every_steps": 0}, r"sync_every_steps must be an integer > 0"),
    "checkpoint interval 0": (
        {"checkpoint_every_steps": 0},
        r"checkpoint_every_steps must be an integer > 0",
    ),
    "unknown on_nonfinite": ({"on_nonfinite": "ignore"}, r"on_nonfinite must be one of 'stop'"),
    "negative precise BN batches": (
        {"bn.precise_batches": -1},
        r"bn\.precise_batches must be an integer >= 0, got -1",
    ),
    "negative mixup alpha": (
        {"mixing.mixup_alpha": -0.2},
        r"mixing\.mixup_alpha must be a finite number >= 0, got -0\.2",
    ),
    "infinite cutmix alpha": (
        {"mixing.cutmix_alpha": math.inf},
        r"mixing\.cutmix_alpha must be a finite number >= 0, got inf",
    ),
    "mixing switch probability above 1": (
        {"mixing.switch_prob": 1.5},
        r"mixing\.switch_prob must be a number in \[0, 1\], got 1\.5",
    ),
    "mixing probability NaN": (
        {"mixing.prob": math.nan},
        r"mixing\.prob must be a number in \[0, 1\], got nan",
    ),
    "mixing stop epoch past the end": (
        {"mixing.stop_epoch": 4},
        r"mixing\.stop_epoch must be <= num_epochs \(3\) or None \(mix to the end\), got 4",
    ),
    "negative mixing stop epoch": (
        {"mixing.stop_epoch": -1},
        r"mixing\.stop_epoch must be an integer >= 0, got -1",
    ),
    "per-device mixing unset": (
        {"mixing.per_device": None},
        r"mixing\.per_device must be True or False, got None",
    ),
    "EMA decay 1": ({"ema.decay": 1.0}, r"ema\.decay must be a number in \[0, 1\), got 1\.0"),
    "negative EMA decay": ({"ema.decay": -0.5}, r"ema\.decay must be a number in \[0, 1\)"),
    "EMA warmup unset": ({"ema.warmup": None}, r"ema\.warmup must be True or False, got None"),
    "plot_curves unset": ({"plot_curves": None}, r"plot_curves must be True or False, got None"),
    "EMA without precise BN": (
        {"ema.decay": 0.99, "bn.precise_batches": 0},
        r"ema\.decay > 0 needs bn\.precise_batches > 0 .*got ema\.decay=0\.99 and "
        r"bn\.precise_batches=0",
    ),
    "process id without the others": (
        {"distributed.process_id": 1},
        r"distributed\.coordinator_address, distributed\.num_processes and "
        r"distributed\.process_id must be set together",
    ),
}


def _bad_config(data_dir: str, overrides: dict):
    config = tiny.make_config(data_dir)
    with config.unlocked():
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            section = config
            for parent in parents:
                section = section[parent]
            section[leaf] = value  # unchecked types: what a hand-written config could hold
    return config


def _checksums(directory: pathlib.Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    } | {str(p.relative_to(directory)) + "/": "dir" for p in directory.rglob("*") if p.is_dir()}


@pytest.fixture(scope="module")
def existing_workdir(finished_run, tmp_path_factory) -> pathlib.Path:
    """A copy of a finished run's work dir that every bad input is pointed at."""
    workdir = tmp_path_factory.mktemp("existing") / "run"
    shutil.copytree(finished_run[0], workdir)
    return workdir


NOT_LOADED = "bad input must be rejected before the data is opened"


@pytest.fixture
def nothing_is_loaded(monkeypatch):
    """Opening the data fails the test, whichever way the trainer opens it: `load_source`, or
    `load_in_memory` (tests/tiny_config.py's `data_in_memory`), whose cache `finished_run`
    has filled in this process already."""

    def load(*args, **kwargs):
        raise AssertionError(NOT_LOADED)

    for name in ("load_source", "load_in_memory"):
        monkeypatch.setattr(datasets, name, load)


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_nothing_is_loaded_guard_fires_on_a_good_config(
    in_memory, data_dir, finished_run, tmp_path, nothing_is_loaded
):
    """The guard itself: a config that passes every check reaches the data, and fails there,
    though `finished_run` (trained in this process) left the same splits in memory."""
    config = tiny.make_config(data_dir, data_in_memory=in_memory)
    with pytest.raises(AssertionError, match=NOT_LOADED):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    with pytest.raises(AssertionError, match=NOT_LOADED):
        evaluation.evaluate_checkpoint(config, str(finished_run[0]))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_config_field(overrides, message, data_dir, existing_workdir, nothing_is_loaded):
    config = _bad_config(data_dir, overrides)
    before, compiles = _checksums(existing_workdir), len(BACKEND_COMPILES)
    with pytest.raises(resolve.ConfigError) as from_training:
        loop.train_and_evaluate(config, str(existing_workdir))
    with pytest.raises(resolve.ConfigError) as from_describe:
        describe.describe(config)
    with pytest.raises(resolve.ConfigError) as from_evaluation:
        evaluation.evaluate_checkpoint(config, str(existing_workdir))
    text = str(from_training.value)
    assert re.match(message, text), text
    assert str(from_describe.value) == text, "describe and training must say the same"
    assert str(from_evaluation.value) == text, "--eval_only and training must say the same"
    assert "\n" not in text
    assert len(BACKEND_COMPILES) == compiles, "bad input must be rejected before compiling"
    assert _checksums(existing_workdir) == before, "the work dir must be left as it was"
    # The suggested flag fixes the input.
    fix = re.search(r"; fix: --config\.([\w.]+)=(\S+)$", text)
    if fix is None:
        assert text.endswith("; fix: set all three, or none"), text
        return
    field, value = fix.groups()
    resolve.resolve(
        _bad_config(data_dir, {**overrides, field: _parse_cli_value(value)}), jax.device_count()
    )


def _parse_cli_value(text: str):
    text = text.strip("'")
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _image(path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


# An image folder laid out wrong (`--config.dataset=folder:PATH`): (the files written under
# PATH, what the error says after `dataset 'folder:PATH': `).
BAD_LAYOUTS = {
    "no class folders": (
        ["train/a.png", "val/b.png"],
        r"{root}/train holds no class folders; fix: put each class's images in a folder of its "
        r"own, {root}/train/<class>/\*\.jpg",
    ),
    "train and val with different classes": (
        ["train/cat/a.png", "train/dog/a.png", "val/cat/a.png", "val/bird/a.png"],
        r"{root}/train and {root}/val hold different classes \(only in train: dog; only in val: "
        r"bird\); fix: give both splits the same class folders",
    ),
    "an empty class": (
        ["train/cat/a.png", "train/dog/", "val/cat/a.png", "val/dog/a.png"],
        r"class folder dog in {root}/train holds no images \(\.jpg, \.jpeg, \.png\); fix: add "
        r"images, or remove the class from both splits",
    ),
    "no images at all": (
        ["train/cat/notes.txt", "val/cat/"],
        r"{root} holds no images \(\.jpg, \.jpeg, \.png\) in its class folders; fix: add them",
    ),
    "no val folder": (
        ["train/cat/a.png"],
        r"{root} has no val/ folder \(it holds train\); fix: lay it out as "
        r"{root}/train/<class>/\*\.jpg and {root}/val/<class>/\*\.jpg",
    ),
}


@pytest.mark.parametrize("files, message", BAD_LAYOUTS.values(), ids=BAD_LAYOUTS.keys())
def test_bad_image_folder_layout(files, message, tmp_path, existing_workdir, nothing_is_loaded):
    root = tmp_path / "photos"
    for name in files:
        if name.endswith("/"):
            (root / name).mkdir(parents=True)
        elif name.endswith(".png"):
            _image(root / name)
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("not an image")
    config = tiny.make_config("/unused", dataset=f"folder:{root}", data_in_memory=False)
    before, compiles = _checksums(existing_workdir), len(BACKEND_COMPILES)
    with pytest.raises(resolve.ConfigError) as from_training:
        loop.train_and_evaluate(config, str(existing_workdir))
    with pytest.raises(resolve.ConfigError) as from_describe:
        describe.describe(config)
    text = str(from_training.value)
    expected = f"dataset 'folder:{re.escape(str(root))}': " + message.format(
        root=re.escape(str(root))
    )
    assert re.match(expected, text), text
    assert str(from_describe.value) == text and "\n" not in text
    assert len(BACKEND_COMPILES) == compiles and _checksums(existing_workdir) == before


def test_every_config_field_has_a_rule():
    assert set(resolve.FIELD_RULES) == set(resolve.flat_fields(default.get_config()))


def test_unknown_config_field_suggests_the_closest(data_dir, nothing_is_loaded):
    config = tiny.make_config(data_dir)
    config.optimizer.warmup_epoch = 3  # a typo for warmup_epochs
    with pytest.raises(resolve.ConfigError, match=r"unknown config field\(s\) optimizer\."
                       r"warmup_epoch \(did you mean optimizer\.warmup_epochs\?\)"):  # fmt: skip
        loop.train_and_evaluate(config, "/nonexistent/never/created")
    assert not pathlib.Path("/nonexistent").exists()


def test_non_integer_epochs_are_refused_when_set():
    # ConfigDict keeps each field's type: 2.5 cannot even be assigned to the integer num_epochs
    # (on the command line, see CLI_BAD_INPUTS).
    with pytest.raises(TypeError, match=r"field 'num_epochs'.*2\.5.*float.*int"):
        tiny.get_config().num_epochs = 2.5


@pytest.mark.parametrize(
    "overrides",
    [
        {"model": "resnet20"},
        {"num_filters": 8},
        {"batch_size": 500},
        {"label_smoothing": 0.2},
        {"optimizer.base_lr": 0.2},
        {"seed": 1},
    ],
    ids=lambda o: ",".join(o),
)
def test_another_runs_config_leaves_the_work_dir_intact(overrides, data_dir, existing_workdir):
    before, compiles = _checksums(existing_workdir), len(BACKEND_COMPILES)
    field = next(iter(overrides))
    with pytest.raises(
        checkpoints.IncompatibleCheckpointError, match=rf"different run \(.*{field}"
    ):
        loop.train_and_evaluate(tiny.make_config(data_dir, **overrides), str(existing_workdir))
    assert _checksums(existing_workdir) == before
    assert len(BACKEND_COMPILES) == compiles


def test_another_dataset_leaves_the_work_dir_intact(tmp_path, existing_workdir):
    before = _checksums(existing_workdir)
    config = tiny.make_config(str(tmp_path / "empty_data_dir"), dataset="cifar10")
    with pytest.raises(resolve.ConfigError, match=r"cifar10 is not prepared"):
        loop.train_and_evaluate(config, str(existing_workdir))
    assert _checksums(existing_workdir) == before


def test_dataset_not_prepared_offline(tmp_path, finished_run):
    config = tiny.make_config(str(tmp_path / "empty_data_dir"), dataset="cifar10")
    with pytest.raises(resolve.ConfigError) as from_training:
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert re.match(r"dataset cifar10 is not prepared.*prepare_dataset", str(from_training.value))
    assert not (tmp_path / "run").exists(), "nothing is created for a dataset that is missing"
    # How to prepare it, with the distribution's name (`recipe` on the index is another project).
    assert "`pip install 'large-batch-recipe[prepare]'`" in str(from_training.value)
    with pytest.raises(resolve.ConfigError) as from_evaluation:
        evaluation.evaluate_checkpoint(config, str(finished_run[0]))
    assert str(from_evaluation.value) == str(from_training.value)
    # --describe reads no data: it describes a run whose dataset is still to be prepared.
    assert describe.describe(config).startswith("dataset            cifar10: 50000 train")


def test_workdir_that_cannot_be_written(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(resolve.ConfigError, match=r"workdir .*a_file/run.* cannot be created"):
        loop.train_and_evaluate(tiny.make_config(data_dir), str(blocker / "run"))


def test_workdir_without_write_permission(data_dir, tmp_path, monkeypatch):
    """The kernel's refusal is injected: root (as CI runs) writes through any permissions."""
    workdir, access = tmp_path / "read_only", os.access

    def no_writes_to_the_workdir(path, mode, **kwargs):
        if pathlib.Path(path) == workdir and mode & os.W_OK:
            return False
        return access(path, mode, **kwargs)

    workdir.mkdir()
    monkeypatch.setattr(os, "access", no_writes_to_the_workdir)
    with pytest.raises(resolve.ConfigError, match=rf"^workdir '{workdir}' is not writable$"):
        loop.train_and_evaluate(tiny.make_config(data_dir), str(workdir))
    assert list(workdir.iterdir()) == []


# The command line: what absl and ml_collections refuse while parsing flags is one line too.
CLI_BAD_INPUTS = {
    "unknown field": (
        ["--config.lr_warmup=5"],
        r"^error: unknown config field\(s\) lr_warmup "
        r"\(did you mean ema\.warmup or optimizer\.warmup\?\)",
    ),
    "misspelled nested field": (
        ["--config.optimizer.warmup_epoch=3"],
        r"^error: unknown config field\(s\) optimizer\.warmup_epoch \(did you mean "
        r"optimizer\.warmup_epochs\?\)",
    ),
    "float for an integer field": (
        ["--config.num_epochs=2.5"],
        r"^error: num_epochs must be an integer, got '2\.5'; fix: --config\.num_epochs=3$",
    ),
    "bad field value": (
        ["--config.optimizer.decay_epochs=(4,2)"],
        r"^error: optimizer\.decay_epochs must be strictly increasing",
    ),
    "missing config file": (["--config=nosuch.py"], r"^error: --config=nosuch\.py: no such file"),
}


def test_cli_bad_input_is_one_line_with_exit_status_2(data_dir, existing_workdir):
    from train import __main__ as cli

    before = _checksums(existing_workdir)
    env = {**os.environ, "XLA_FLAGS": xla_flags(4)}
    processes = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "train",
                f"--config={REPO / 'tests' / 'tiny_config.py'}",
                f"--config.data_dir={data_dir}",
                f"--workdir={existing_workdir}",
                *args,
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _) in CLI_BAD_INPUTS.items()
    }
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == cli.EXIT_BAD_INPUT, (name, stderr[-2000:])
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (name, stderr[-2000:])
        assert re.search(CLI_BAD_INPUTS[name][1], lines[0]), (name, lines[0])
    assert _checksums(existing_workdir) == before
