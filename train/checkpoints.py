"""Orbax checkpoints of the train state beside a JSON description of the run that wrote them.

Orbax writes each step into a temporary directory and renames it when complete, so a directory
it lists as a step is whole. The 'meta' item records the config fields that must not change
across a resume; `restore_latest` refuses a work dir written by an incompatible config.
"""

import pathlib
from typing import Any

import orbax.checkpoint as ocp


class IncompatibleCheckpointError(ValueError):
    """The work dir holds checkpoints of a run whose config differs where it matters."""


class Checkpointer:
    """Saves and restores {'state': train state pytree, 'meta': JSON dict} every N steps."""

    def __init__(self, directory: pathlib.Path, *, keep: int):
        self._manager = ocp.CheckpointManager(
            directory.absolute(),
            item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore_latest(self, target: Any, meta: dict[str, Any]) -> tuple[int, Any] | None:
        """(step, state) of the latest checkpoint, or None if there is none.

        Raises:
          IncompatibleCheckpointError: if the checkpoint's meta differs from `meta`.
        """
        step = self._manager.latest_step()
        if step is None:
            return None
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        differences = {
            key: (restored.meta.get(key), value)
            for key, value in meta.items()
            if restored.meta.get(key) != value
        }
        if differences:
            details = "; ".join(
                f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differences.items()
            )
            raise IncompatibleCheckpointError(
                f"{self._manager.directory} holds checkpoints of a different run ({details}). "
                "Use a new --workdir, or restore the original config to resume."
            )
        return step, restored.state

    def close(self) -> None:
        self._manager.close()
