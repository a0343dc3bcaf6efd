"""Metrics on disk: `metrics.jsonl` (one JSON object per record) and TensorBoard event files.

Both are written to a local work dir.

Only the writing process (process 0) opens files. On resume, records past the restored step are
dropped first, so the file describes exactly the run that continues from the checkpoint.
"""

import json
import pathlib
import sys
import types
from typing import Any

# TensorBoard's writer imports all of TensorFlow (~4 s, ~1 GB) when it is installed, only for
# file I/O that its stub does as well on local paths. `tensorboard.compat.notf` is TensorBoard's
# switch for its stub; set it unless TensorFlow is already loaded.
if "tensorflow" not in sys.modules:
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
from tensorboard.summary import Writer  # noqa: E402

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends records to `workdir/metrics.jsonl` and scalars to `workdir/tensorboard/`."""

    def __init__(self, workdir: pathlib.Path, *, enabled: bool = True):
        self._path = workdir / METRICS_FILE
        self._enabled = enabled
        self._tensorboard = Writer(str(workdir / "tensorboard")) if enabled else None

    def drop_after(self, step: int) -> None:
        """Removes records with a step beyond `step` (work redone after a resume)."""
        if not self._enabled or not self._path.exists():
            return
        kept = [r for r in read_metrics(self._path.parent) if r["step"] <= step]
        self._path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """Writes one record: `kind` is 'train' or 'eval'; values are scalars."""
        if not self._enabled:
            return
        record = {"step": int(step), "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        with self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name not in ("step", "kind") and isinstance(value, float):
                self._tensorboard.add_scalar(f"{kind}/{name}", value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(workdir: pathlib.Path) -> list[dict[str, Any]]:
    """All records of `workdir/metrics.jsonl`, in file order (empty if there is none)."""
    path = workdir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: ints and strings stay, numpy/jax numbers become floats."""
    return value if isinstance(value, int | str) else float(value)
