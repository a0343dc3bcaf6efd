"""Orbax checkpoints of the train state beside the identity of the run that wrote them.

Saving is asynchronous: `save` returns once the host copy of the state is handed to orbax, and
the files are written in the background while training goes on; the next `save`, `wait` and
`close` wait for it. Orbax writes each step into a temporary directory and renames it when
complete, so a directory it lists as a step is whole; temporary directories left by a killed run
are removed on start.

Before anything is restored, `check_compatible` compares the latest checkpoint's stored run
identity (the 'meta' item) and the structure and shapes of its state with the current run: a
mismatch is `IncompatibleCheckpointError` and nothing is touched. Only a checkpoint that cannot
be read (truncated or corrupt files) is reported and moved aside to `<step>.unreadable` (nothing
is deleted), and the previous one is used. A failed write (disk full, permissions, a lost
bucket) is `CheckpointWriteError` (a `train.metrics.WorkdirWriteError`, as a failed write of the
metrics or the plot is): the previous checkpoints stay intact and the failed step's temporary
files are removed.

A work dir is one run's: `claim_workdir` writes the run's config as `config.json` (and its
dataset's spec as `dataset.json`) on its first start and refuses a work dir whose `config.json`
differs in a field of `run_identity`; `restore_checkpoint` reads a checkpoint back after the
same check.
"""

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from recipe import saved_run
from train import steps
from train.metrics import WorkdirWriteError, error_summary
from train.resolve import ConfigError, Setup

_TMP_MARKER = ".orbax-checkpoint-tmp"
# How long a failed save's temporary directory is retried for removal, and how long the loop
# waits between tries for orbax's write tasks that had not failed yet to settle.
_TMP_REMOVAL_SECONDS, _TMP_REMOVAL_PAUSE_SECONDS = 10.0, 0.2
# The run's config in its work dir (`recipe.load_run` reads it, and the dataset's spec,
# `recipe.saved_run.DATASET_FILE`).
CONFIG_FILE = "config.json"
# Config fields that may change between a run and its resumption: they do not affect the result,
# but for `runner`, whose steps differ in float32 rounding where a sum is taken in another order
# (docs/trainer.md, "The runners' rounding").
RESUMABLE_FIELDS = (
    "data_dir",
    "runner",
    "shard_params",
    "distributed",
    "log_every_steps",
    "sync_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "progress_bar",
    "plot_curves",
    "eval_batch_size",
    "data_workers",
    "data_in_memory",
    "device_prefetch",
    # A stopped run may go on skipping the unreadable image it stopped at; the subset is the
    # same whether or not its balance is allowed.
    "unreadable_images",
    "allow_unbalanced_subset",
)


def run_identity(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
    """The config fields a checkpoint must agree with to be resumed (JSON-normalised): all but
    `RESUMABLE_FIELDS` and the settings that do not apply to the run (`inapplicable_fields`),
    which may change without changing it."""
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    fields = json.loads(json.dumps({k: v for k, v in values.items() if k not in RESUMABLE_FIELDS}))
    for dotted in inapplicable_fields(values):
        section, _, name = dotted.rpartition(".")
        fields.get(section, {}).pop(name, None)
    return fields


def inapplicable_fields(values: dict[str, Any]) -> list[str]:
    """The dotted fields of a config (as a nested dict) that its other settings leave unused:
    a ghost batch without ghost BN, milestones without a step decay, LARS's trust coefficient
    under SGD, Mixup's options with both α at 0, and so on.

    >>> config = {"bn": {"scope": "device"}, "optimizer": {"name": "sgd", "decay": "step",
    ...     "warmup": "gradual"}, "mixing": {"mixup_alpha": 0.2, "cutmix_alpha": 0.0},
    ...     "ema": {"decay": 0.0}, "noise_scale": {"enabled": False},
    ...     "sharpness": {"every_steps": 0}}
    >>> inapplicable_fields(config)  # doctest: +NORMALIZE_WHITESPACE
    ['bn.ghost_batch_size', 'bn.group_size', 'optimizer.trust_coefficient', 'optimizer.beta2',
     'optimizer.poly_power', 'optimizer.poly_end_lr', 'mixing.switch_prob', 'ema.warmup',
     'noise_scale.decay', 'sharpness.iterations', 'sharpness.method', 'sharpness.unroll']
    """
    bn, o, mixing = values["bn"], values["optimizer"], values["mixing"]
    unused = {
        "bn.ghost_batch_size": bn["scope"] != "ghost",
        "bn.group_size": bn["scope"] != "group",
        "optimizer.trust_coefficient": o["name"] != "lars",
        "optimizer.beta2": o["name"] != "lamb",
        "optimizer.warmup_epochs": o["warmup"] == "none",
        "optimizer.warmup_start": o["warmup"] == "none",
        "optimizer.decay_epochs": o["decay"] != "step",
        "optimizer.decay_factor": o["decay"] != "step",
        "optimizer.poly_power": o["decay"] != "poly",
        "optimizer.poly_end_lr": o["decay"] != "poly",
        "mixing.switch_prob": not (mixing["mixup_alpha"] > 0 and mixing["cutmix_alpha"] > 0),
        "ema.warmup": values["ema"]["decay"] == 0,
        "noise_scale.decay": not values["noise_scale"]["enabled"],
        "sharpness.iterations": values["sharpness"]["every_steps"] == 0,
        "sharpness.method": values["sharpness"]["every_steps"] == 0,
        "sharpness.unroll": values["sharpness"]["every_steps"] == 0,
    }
    no_mixing = mixing["mixup_alpha"] == 0 and mixing["cutmix_alpha"] == 0
    for name in ("prob", "per_device", "stop_epoch"):
        unused[f"mixing.{name}"] = no_mixing
    return [field for field, is_unused in unused.items() if is_unused]


def create_workdir(workdir: str) -> epath.Path:
    """The work dir, created if needed.

    Raises:
      ConfigError: it cannot be created, or is not writable.
    """
    path = epath.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"workdir {workdir!r} cannot be created: {error}") from error
    if isinstance(path, os.PathLike) and not str(path).startswith(("gs://", "s3://")):
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"workdir {workdir!r} is not writable")
    return path


def claim_workdir(workdir: epath.Path, setup: Setup) -> None:
    """Refuses a work dir whose `config.json` belongs to another run; writes it for a new one,
    and `dataset.json` (the dataset's spec, which `recipe.load_run` needs without the data)
    where it is missing (from the first process).

    The checkpoints carry the run identity too; `config.json` also guards a run that stopped
    before its first checkpoint, and tells a reader which config made the work dir.

    Raises:
      IncompatibleCheckpointError: `config.json` differs from `config` in a field of the run
        identity.
    """
    config = setup.config
    path = workdir / CONFIG_FILE
    if path.exists():
        check_same_run(workdir, run_identity(json.loads(path.read_text())), run_identity(config))
    elif jax.process_index() == 0:
        path.write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True) + "\n")
    dataset_path = workdir / saved_run.DATASET_FILE
    if jax.process_index() == 0 and not dataset_path.exists():
        dataset_path.write_text(json.dumps(setup.spec.to_json(), indent=1) + "\n")


def abstract_train_state(setup: Setup) -> steps.TrainState:
    """The shapes and dtypes of the run's train state (nothing is computed)."""
    return jax.eval_shape(
        lambda variables: steps.TrainState.create(
            variables, setup.optimizer.tx, setup.noise_scale_ema
        ),
        setup.abstract_variables,
    )


def restore_checkpoint(
    setup: Setup, workdir: str, step: int | None = None
) -> tuple[int, steps.TrainState]:
    """(step, host train state) of the latest (or the given) checkpoint of `workdir`, after
    checking that it belongs to the run `setup` describes.

    Raises:
      ConfigError: `workdir` holds no (readable) checkpoint, or not the requested step.
      IncompatibleCheckpointError: the checkpoints belong to another run.
    """
    checkpoint_dir = epath.Path(workdir) / "checkpoints"
    if not checkpoint_dir.exists():
        raise ConfigError(f"{checkpoint_dir} does not exist: no checkpoint to load")
    checkpointer = Checkpointer(checkpoint_dir, keep=setup.loop.keep_checkpoints)
    try:
        restored = checkpointer.restore(
            abstract_train_state(setup), run_identity(setup.config), step=step
        )
    finally:
        checkpointer.close()
    if restored is None:
        wanted = "no readable checkpoint" if step is None else f"no readable checkpoint {step}"
        raise ConfigError(f"{checkpoint_dir} holds {wanted}")
    return restored


class IncompatibleCheckpointError(ValueError):
    """The work dir holds checkpoints of a run whose config or state differs where it matters."""


class CheckpointWriteError(WorkdirWriteError):
    """A checkpoint could not be written; the previous ones are intact."""


class Checkpointer:
    """Saves and restores {'state': train state pytree, 'meta': JSON dict} every N steps."""

    def __init__(self, directory: epath.PathLike, *, keep: int, asynchronous: bool = True):
        directory = epath.Path(directory)
        # orbax refuses relative paths (`make train`'s work dir is runs/default); gs:// and
        # other URLs are absolute already.
        self.directory = directory if directory.is_absolute() else directory.absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=asynchronous,
                cleanup_tmp_directories=True,
            ),
        )
        self._pending_step: int | None = None

    def latest_step(self) -> int | None:
        """The latest complete checkpoint, or None."""
        return self._manager.latest_step()

    def check_compatible(self, abstract_state: Any, meta: dict[str, Any]) -> None:
        """Raises `IncompatibleCheckpointError` if the latest readable checkpoint was written by
        another run (its 'meta' differs from `meta`) or holds a state of another structure or
        shape than `abstract_state`. Reads metadata only; changes nothing."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                saved_meta = self._restore_meta(step)
                saved_shapes = _shapes(self._manager.item_metadata(step)["state"].tree)
            except Exception:  # unreadable: `restore` sets it aside and looks further
                continue
            check_same_run(self.directory, run_identity(saved_meta), meta)
            _check_same_shapes(self.directory, step, saved_shapes, _shapes(abstract_state))
            return

    def restore(
        self, abstract_state: Any, meta: dict[str, Any], *, step: int | None = None
    ) -> tuple[int, Any] | None:
        """(step, state) of the latest readable checkpoint (of exactly `step`, if given), or
        None if there is none.

        Raises:
          IncompatibleCheckpointError: if the checkpoint belongs to another run.
        """
        self.check_compatible(abstract_state, meta)
        candidates = [s for s in self._manager.all_steps() if step in (None, s)]
        for candidate in sorted(candidates, reverse=True):
            try:
                restored = self._manager.restore(
                    candidate,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as error:  # orbax/tensorstore raise many types for bad files
                self._set_aside(candidate, error)
                continue
            return candidate, restored.state
        return None

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts writing `state` (host arrays, the same on every process) and `meta` at `step`.

        Returns once orbax holds the data; the write finishes in the background. Waits for the
        previous save first.

        Raises:
          CheckpointWriteError: this save or the previous one could not be written.
        """
        self.wait()
        # Copies: the caller's arrays may alias device buffers that the next step reuses.
        state = jax.tree_util.tree_map(np.array, state)
        self._pending_step = step
        self._guard_write(
            lambda: self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        )

    def wait(self) -> None:
        """Blocks until the last save is on disk.

        Raises:
          CheckpointWriteError: it could not be written.
        """
        self._guard_write(self._manager.wait_until_finished)
        self._pending_step = None

    def close(self) -> None:
        """Waits for the last save, then releases orbax's resources."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def _guard_write(self, write) -> None:
        try:
            write()
        except Exception as error:
            step, self._pending_step = self._pending_step, None
            self._remove_temporary_files()
            previous = self._manager.latest_step()
            kept = (
                f"the checkpoint of step {previous} is intact"
                if previous is not None and previous != step
                else "no earlier checkpoint exists"
            )
            raise CheckpointWriteError(
                f"writing the checkpoint of step {step} to {self.directory} failed "
                f"({error_summary(error)}); {kept}. Free space or fix the directory, then run "
                "the same command again to resume"
            ) from error

    def _remove_temporary_files(self) -> None:
        """Removes the failed save's temporary directories.

        The failure reaches here with the first write task that failed; orbax's other write
        tasks of the same save may still be writing into those directories, creating them again
        (measured on a full tmpfs: a single removal raced them in 3 of 16 runs, "No such file or
        directory", and left the directory). So each removal is followed by a pause and a look,
        until a look finds none left, for at most `_TMP_REMOVAL_SECONDS`.
        """
        if jax.process_index() != 0 or not self.directory.exists():
            return
        deadline = time.monotonic() + _TMP_REMOVAL_SECONDS
        errors: dict[epath.Path, OSError] = {}
        while True:
            for path in self._temporary_directories():
                try:
                    path.rmtree()
                except OSError as error:
                    errors[path] = error
            time.sleep(_TMP_REMOVAL_PAUSE_SECONDS)
            left = self._temporary_directories()
            if not left:
                return
            if time.monotonic() > deadline:
                for path in left:
                    logging.warning(
                        "could not remove %s: %s",
                        path,
                        errors.get(path, "written again after its removal"),
                    )
                return

    def _temporary_directories(self) -> list[epath.Path]:
        return [path for path in self.directory.iterdir() if _TMP_MARKER in path.name]

    def _restore_meta(self, step: int) -> dict[str, Any]:
        meta = ocp.args.Composite(meta=ocp.args.JsonRestore())
        return self._manager.restore(step, args=meta).meta

    def _set_aside(self, step: int, error: Exception) -> None:
        """Moves an unreadable checkpoint out of the manager's sight, keeping its files."""
        path = self.directory / str(step)
        aside = path.parent / f"{step}.unreadable"
        suffix = 1
        while aside.exists():
            suffix += 1
            aside = path.parent / f"{step}.unreadable{suffix}"
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        logging.warning(
            "checkpoint %s is unreadable (%s: %s); moved to %s, resuming from the previous one",
            path,
            type(error).__name__,
            reason,
            aside,
        )
        if jax.process_index() == 0:
            path.rename(aside)
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self._manager.reload()


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{'/'-joined path: (shape, dtype)} of a pytree of arrays, abstract arrays or metadata."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = []
        for key in path:
            for attribute in ("key", "name", "idx"):
                if hasattr(key, attribute):
                    names.append(str(getattr(key, attribute)))
                    break
        shapes["/".join(names)] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
    return shapes


def check_same_run(directory: epath.Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Raises `IncompatibleCheckpointError` naming the (dotted) fields where two run identities
    differ."""
    saved, now = _flatten(saved), _flatten(now)
    differences = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    differences.update({k: (v, None) for k, v in saved.items() if k not in now})
    if differences:
        details = "; ".join(
            f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in sorted(differences.items())
        )
        raise IncompatibleCheckpointError(
            f"{directory} holds a different run ({details}); nothing was changed. Use a new "
            "--workdir, or restore the original config to resume"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_shapes(
    directory: epath.Path,
    step: int,
    saved: dict[str, tuple[tuple[int, ...], str]],
    now: dict[str, tuple[tuple[int, ...], str]],
) -> None:
    if saved == now:
        return
    differing = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    details = ", ".join(f"{k}: checkpoint {saved.get(k)}, now {now.get(k)}" for k in differing[:3])
    raise IncompatibleCheckpointError(
        f"{directory}/{step} holds a train state of another structure ({len(differing)} arrays "
        f"differ: {details}); nothing was changed. Use a new --workdir, or the code and config "
        "that wrote it"
    )
