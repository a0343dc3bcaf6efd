"""Config validation: every bad value is a `ValueError` naming the field, the value and what is
allowed, raised before anything is compiled or loaded."""

import os
import pathlib

import ml_collections

from recipe import checks, models
from recipe.configs import default
from recipe.data import datasets

BN_SCOPES = ("device", "global", "ghost")
RUNNERS = ("pmap", "shard_map")
DTYPES = ("float32", "bfloat16")
ON_NONFINITE = ("stop", "skip")


def check_config(config: ml_collections.ConfigDict, device_count: int) -> None:
    """Raises `ValueError` for the first field of `config` that is out of range."""
    unknown = sorted(_flat_keys(config) - _flat_keys(default.get_config()))
    if unknown:
        raise ValueError(
            f"unknown config field(s) {', '.join(unknown)}; the fields are those of "
            "recipe/configs/default.py"
        )
    checks.check_choice("dataset", config.dataset, datasets.DATASET_NAMES)
    checks.check_choice("model", config.model, models.MODEL_NAMES)
    checks.check_choice("bn.scope", config.bn.scope, BN_SCOPES)
    checks.check_choice("runner", config.runner, RUNNERS)
    checks.check_choice("dtype", config.dtype, DTYPES)
    checks.check_choice("on_nonfinite", config.on_nonfinite, ON_NONFINITE)
    checks.check_in_unit_interval("label_smoothing", config.label_smoothing)
    checks.check_positive_int("num_epochs", config.num_epochs)
    checks.check_non_negative("optimizer.warmup_epochs", config.optimizer.warmup_epochs)
    if config.optimizer.warmup != "none" and config.optimizer.warmup_epochs > config.num_epochs:
        raise ValueError(
            f"optimizer.warmup_epochs must be <= num_epochs ({config.num_epochs}), got "
            f"{config.optimizer.warmup_epochs}"
        )
    checks.check_positive_int("num_filters", config.num_filters)
    checks.check_non_negative_int("seed", config.seed)
    for field in (
        "accumulation_steps",
        "log_every_steps",
        "sync_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "eval_every_epochs",
    ):
        checks.check_positive_int(field, config[field])
    if config.image_size is not None:
        checks.check_positive_int("image_size", config.image_size)
    for field in ("batch_size", "eval_batch_size"):
        batch = checks.check_positive_int(field, config[field])
        if batch < device_count or batch % device_count:
            raise ValueError(
                f"{field} must be a multiple of the device count {device_count} (at least one "
                f"example per device), got {batch}"
            )
    per_device = config.batch_size // device_count
    if config.bn.scope == "ghost":
        ghost = checks.check_positive_int("bn.ghost_batch_size", config.bn.ghost_batch_size)
        if per_device % ghost:
            raise ValueError(
                f"bn.ghost_batch_size must divide the per-device batch {per_device} "
                f"(batch_size {config.batch_size} / {device_count} devices), got {ghost}"
            )
    checks.check_in_unit_interval("bn.momentum", config.bn.momentum)
    spec = datasets.get_dataset_spec(config.dataset)
    if config.batch_size * config.accumulation_steps > spec.num_train:
        raise ValueError(
            f"batch_size × accumulation_steps must be <= the {spec.num_train} training examples "
            f"of {config.dataset}, got {config.batch_size * config.accumulation_steps}"
        )


def check_workdir(workdir: pathlib.Path) -> None:
    """Raises `ValueError` if `workdir` cannot be created or written."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"workdir {str(workdir)!r} cannot be created: {error}") from error
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"workdir {str(workdir)!r} is not writable")


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys
