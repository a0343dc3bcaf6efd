"""metrics.jsonl, TensorBoard events and plots: read back, resumed, through a non-local store."""

import os

import numpy as np
import pytest
import tiny_config
from conftest import tensorboard_scalars
from etils import epath

from train import describe, metrics, plots
from train.metrics import MetricsWriter, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _train_values(step: int, offset: float = 0.0) -> dict:
    return {
        "loss": np.float32(2.0 / step + offset),
        "accuracy": 0.1 * step,
        "learning_rate": np.float64(0.4),
        "images_per_sec": 1234.5,
        "epoch": step / 4,
        "finite": 1.0,
    }


def _eval_values(step: int) -> dict:
    return {"loss": 1.0 / step, "accuracy": 0.9, "epoch": step / 4}


def _write_run(writer: MetricsWriter, steps, offset: float = 0.0) -> None:
    for step in steps:
        writer.write(step, "train", _train_values(step, offset))
        if step % 4 == 0:
            writer.write(step, "eval", _eval_values(step))


def _given(steps, offset: float = 0.0) -> list[tuple[int, str, dict]]:
    """(step, kind, values) as `_write_run` gives them to `write`."""
    given = []
    for step in steps:
        given.append((step, "train", _train_values(step, offset)))
        if step % 4 == 0:
            given.append((step, "eval", _eval_values(step)))
    return given


def _given_records(given) -> list[dict]:
    """metrics.jsonl's records of the values given: every one, as a Python number."""
    return [
        {"step": s, "kind": k, **{n: float(v) for n, v in values.items()}} for s, k, values in given
    ]


def _given_scalars(given) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's scalars of the values given: float32, as it stores them, under
    `kind/name`; `epoch` (its x axis is the step already) and `finite` are not drawn."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for step, kind, values in given:
        for name, value in values.items():
            if name not in ("epoch", "finite"):
                scalars.setdefault(f"{kind}/{name}", []).append((step, float(np.float32(value))))
    return scalars


def test_every_logged_scalar_reads_back_with_event_accumulator(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.drop_after(0)  # what the trainer does on a fresh start
    _write_run(writer, range(2, 9, 2))
    writer.close()

    given = _given(range(2, 9, 2))
    records = read_metrics(tmp_path)
    assert [(r["kind"], r["step"]) for r in records] == [
        ("train", 2),
        ("train", 4),
        ("eval", 4),
        ("train", 6),
        ("train", 8),
        ("eval", 8),
    ]
    assert records == _given_records(given)  # epoch and finite kept in the jsonl
    scalars = tensorboard_scalars(tmp_path / metrics.TENSORBOARD_DIR)
    assert set(scalars) == {
        "train/loss",
        "train/accuracy",
        "train/learning_rate",
        "train/images_per_sec",
        "eval/loss",
        "eval/accuracy",
    }
    assert scalars == _given_scalars(given)


def test_a_resumed_run_shows_only_the_continued_trajectory(tmp_path):
    first = MetricsWriter(tmp_path)
    first.drop_after(0)
    _write_run(first, range(2, 13, 2))  # ran to step 12; the checkpoint it resumes from is 4
    first.close()

    resumed = MetricsWriter(tmp_path)
    resumed.drop_after(4)
    _write_run(resumed, range(6, 9, 2), offset=10.0)  # redone differently, so a mix would show
    resumed.close()

    # The first run's records up to the checkpoint's step 4, then the resumed run's.
    given = _given(range(2, 5, 2)) + _given(range(6, 9, 2), offset=10.0)
    records = read_metrics(tmp_path)
    assert [(r["kind"], r["step"]) for r in records] == [
        ("train", 2),
        ("train", 4),
        ("eval", 4),
        ("train", 6),
        ("train", 8),
        ("eval", 8),
    ]
    assert records == _given_records(given)
    assert len(list((tmp_path / metrics.TENSORBOARD_DIR).iterdir())) == 2
    assert tensorboard_scalars(tmp_path / metrics.TENSORBOARD_DIR) == _given_scalars(given)


def test_a_failed_write_is_one_line_naming_what_and_why(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write(2, "train", {"loss": 2.0})
    # The next rewrite of metrics.jsonl meets a directory where its temporary file goes.
    (tmp_path / (metrics.METRICS_FILE + ".partial")).mkdir()
    with pytest.raises(metrics.WorkdirWriteError) as failed:
        writer.write(4, "train", {"loss": 1.0})
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"writing the metrics to {tmp_path} failed (IsADirectoryError: ")
    assert message.endswith("run the same command again to resume")
    assert [r["step"] for r in read_metrics(tmp_path)] == [2]  # the file as it was


def test_artefacts_round_trip_through_cloud_storage(gcs_workdir, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a gs:// URL mistaken for a local path would land here
    workdir = epath.Path(gcs_workdir)
    writer = MetricsWriter(gcs_workdir)
    writer.drop_after(0)
    _write_run(writer, range(2, 9, 2))
    writer.close()
    records = read_metrics(gcs_workdir)
    plots.plot_run(records, 4, workdir / "curves.png")
    text = describe.describe(tiny_config.make_config(data_dir), gcs_workdir)  # lr_schedule.png
    assert f"{gcs_workdir}/lr_schedule.png" in text

    assert os.listdir(tmp_path) == []
    assert sorted(p.name for p in workdir.iterdir()) == [
        "curves.png",
        "lr_schedule.png",
        "metrics.jsonl",
        "tensorboard",
    ]
    assert records == _given_records(_given(range(2, 9, 2)))
    for name in ("curves.png", "lr_schedule.png"):
        assert (workdir / name).read_bytes().startswith(PNG_SIGNATURE)
    # TensorBoard reads gs:// through TensorFlow's gfile, which knows no emulator: the events
    # are copied to disk and read there.
    (event_file,) = (workdir / metrics.TENSORBOARD_DIR).iterdir()
    local_events = tmp_path / "events"
    local_events.mkdir()
    (local_events / event_file.name).write_bytes(event_file.read_bytes())
    assert tensorboard_scalars(local_events) == _given_scalars(_given(range(2, 9, 2)))
