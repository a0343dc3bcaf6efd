"""Orbax checkpoints of the train state beside a JSON description of the run that wrote them.

Orbax writes each step into a temporary directory and renames it when complete, so a directory
it lists as a step is whole; temporary directories left by a killed run are removed on start.
A checkpoint that cannot be read (truncated or corrupt files) is reported, moved aside to
`<step>.unreadable` (nothing is deleted) and the previous one is used. The 'meta' item records
the config fields that must not change across a resume; a work dir written by an incompatible
config is refused.
"""

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class IncompatibleCheckpointError(ValueError):
    """The work dir holds checkpoints of a run whose config differs where it matters."""


class Checkpointer:
    """Saves and restores {'state': train state pytree, 'meta': JSON dict} every N steps."""

    def __init__(self, directory: pathlib.Path, *, keep: int):
        self._directory = directory.absolute()
        self._manager = ocp.CheckpointManager(
            self._directory,
            item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            ),
        )

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes `state` (host arrays, the same on every process) and `meta` at `step`."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore_latest(self, target: Any, meta: dict[str, Any]) -> tuple[int, Any] | None:
        """(step, state) of the latest readable checkpoint, or None if there is none.

        Raises:
          IncompatibleCheckpointError: if the checkpoint's meta differs from `meta`.
        """
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # orbax/tensorstore raise many types for bad files
                self._set_aside(step, error)
                continue
            _check_compatible(self._directory, restored.meta, meta)
            return step, restored.state
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        """Moves an unreadable checkpoint out of the manager's sight, keeping its files."""
        path = self._directory / str(step)
        aside = path.with_name(f"{step}.unreadable")
        suffix = 1
        while aside.exists():
            suffix += 1
            aside = path.with_name(f"{step}.unreadable{suffix}")
        logging.warning(
            "checkpoint %s is unreadable (%s: %s); moved to %s, resuming from the previous one",
            path,
            type(error).__name__,
            error,
            aside,
        )
        if jax.process_index() == 0:
            path.rename(aside)
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()


def _check_compatible(directory: pathlib.Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    differences = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if differences:
        details = "; ".join(
            f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differences.items()
        )
        raise IncompatibleCheckpointError(
            f"{directory} holds checkpoints of a different run ({details}). Use a new --workdir, "
            "or restore the original config to resume."
        )
