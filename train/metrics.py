"""Metrics on disk: `metrics.jsonl` (one JSON object per record) and TensorBoard event files.

The work dir is any `etils.epath` path: a local directory, or `gs://bucket/run` (and `s3://`,
`az://`), which epath reaches through TensorFlow's gfile when TensorFlow is installed and through
fsspec (`gcsfs`, the `gcs` extra) when it is not. Object stores cannot append to a file, so both
files are rewritten whole at every record: `metrics.jsonl` on a local disk through a temporary
file and a rename (atomic; on an object store each write of an object is atomic already, and a
rename would cost a copy), the event file in place, so that a TensorBoard reading it as it grows
sees each record once (its reader retries a partly written record). Both stay small: scalars
only, one record per log interval or evaluation.

The events are standard TensorBoard scalars (`Summary.Value.simple_value`, which
`EventAccumulator.Scalars` reads), framed by TensorBoard's own `RecordWriter`; no TensorFlow is
imported. Only the writing process (process 0) opens files. On resume, records past the restored
step are dropped from `metrics.jsonl`, and the new event file starts with a `SessionLog.START`
at the next step, which tells TensorBoard to discard the previous files' events from that step
on; so both describe exactly the run that continues from the checkpoint.
"""

import contextlib
import io
import itertools
import json
import os
import socket
import time
from typing import Any

from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Record fields kept in metrics.jsonl but not drawn in TensorBoard: its x axis is already the step
# (so `epoch` is a straight line), and `finite` is 1 on every record a run survives.
NOT_IN_TENSORBOARD = ("epoch", "finite")

_event_file_ids = itertools.count()  # two writers of one process in one second get two files


class WorkdirWriteError(OSError):
    """A file of the run (a checkpoint, the metrics, the plot) could not be written to its work
    dir: disk full, permissions, a lost bucket. What was written before it is intact."""


def error_summary(error: BaseException) -> str:
    """`Type: first line of the message` (at most 300 characters), for a one-line report."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


@contextlib.contextmanager
def reporting_write_failures(what: str):
    """Raises an `OSError` from inside as a one-line `WorkdirWriteError` about writing `what`."""
    try:
        yield
    except WorkdirWriteError:
        raise
    except OSError as error:
        raise WorkdirWriteError(
            f"writing {what} failed ({error_summary(error)}); the checkpoints written before it "
            "are intact. Free space or fix the directory, then run the same command again to "
            "resume"
        ) from error


class EventFile:
    """A TensorBoard event file of scalars, kept in memory and written whole at each `flush`."""

    def __init__(self, directory: epath.PathLike):
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # TensorFlow's naming: TensorBoard reads the files of a directory in name order.
        self.path = directory / (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_event_file_ids)}"
        )
        self._buffer = io.BytesIO()
        self._records = RecordWriter(self._buffer)
        self._add(event_pb2.Event(file_version="brain.Event:2"))

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """One event at `step` holding a scalar per tag."""
        values = [summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()]
        self._add(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=values)))

    def restart_at(self, step: int) -> None:
        """Marks a restart: TensorBoard drops every earlier event at `step` or later."""
        session_log = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._add(event_pb2.Event(step=step, session_log=session_log))

    def flush(self) -> None:
        self.path.write_bytes(self._buffer.getvalue())

    def _add(self, event: event_pb2.Event) -> None:
        event.wall_time = time.time()
        self._records.write(event.SerializeToString())


class MetricsWriter:
    """Writes records to `workdir/metrics.jsonl` and their scalars to `workdir/tensorboard/`."""

    def __init__(self, workdir: epath.PathLike, *, enabled: bool = True):
        self._workdir = epath.Path(workdir)
        self._enabled = enabled
        # (step, JSON line) of every record, so that a rewrite serialises nothing again.
        records = read_metrics(self._workdir) if enabled else []
        self._lines = [(r["step"], json.dumps(r) + "\n") for r in records]
        self._events = EventFile(self._workdir / TENSORBOARD_DIR) if enabled else None

    def drop_after(self, step: int) -> None:
        """Removes records with a step beyond `step` (work redone after a resume)."""
        if not self._enabled:
            return
        kept = [(s, line) for s, line in self._lines if s <= step]
        if len(kept) < len(self._lines):
            self._lines = kept
            self._write_records()
        self._events.restart_at(step + 1)
        self._flush_events()

    def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """Writes one record: `kind` is 'train' or 'eval'; values are scalars."""
        if not self._enabled:
            return
        record = {"step": int(step), "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        self._lines.append((record["step"], json.dumps(record) + "\n"))
        self._write_records()
        self._events.add_scalars(
            record["step"],
            {
                f"{kind}/{name}": value
                for name, value in record.items()
                if name not in ("step", "kind", *NOT_IN_TENSORBOARD) and not isinstance(value, str)
            },
        )
        self._flush_events()

    def close(self) -> None:
        if self._events is not None:
            self._flush_events()

    def _write_records(self) -> None:
        path = self._workdir / METRICS_FILE
        text = "".join(line for _, line in self._lines)
        with reporting_write_failures(f"the metrics to {self._workdir}"):
            if "://" in os.fspath(path):  # an object store: each object write is atomic
                path.write_text(text)
            else:  # a file system: a complete file renamed into place, never a truncated one
                partial = path.with_name(path.name + ".partial")
                partial.write_text(text)
                partial.replace(path)

    def _flush_events(self) -> None:
        with reporting_write_failures(f"the metrics to {self._workdir}"):
            self._events.flush()


def read_metrics(workdir: epath.PathLike) -> list[dict[str, Any]]:
    """All records of `workdir/metrics.jsonl`, in file order (empty if there is none)."""
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: ints and strings stay, numpy/jax numbers become floats."""
    return value if isinstance(value, int | str) else float(value)
