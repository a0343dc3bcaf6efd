"""`on_nonfinite=skip` never skips silently: the count per log interval (metrics.jsonl and
TensorBoard), per evaluation and in all, and a run that skips most updates stops with exit 3.

The command line runs in subprocesses on tests/tiny_config.py (4 steps per epoch, a log record
every 2 steps, a checkpoint every 4), with NaN inputs at chosen steps
(tests/train_with_nonfinite_steps.py), so the skipped steps are known exactly.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import tensorboard_scalars, xla_flags

from train import __main__ as cli
from train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds per subprocess (~20 s idle); a hung collective ignores SIGTERM


def _train(workdir: Path, data_dir: str, nonfinite_steps: str) -> subprocess.CompletedProcess:
    script = ["tests/train_with_nonfinite_steps.py"] if nonfinite_steps else ["-m", "train"]
    command = [
        sys.executable,
        *script,
        "--config=tests/tiny_config.py",
        f"--config.data_dir={data_dir}",
        "--config.on_nonfinite=skip",
        f"--workdir={workdir}",
    ]
    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags(),
        "PYTHONPATH": str(REPO),  # the script's directory is tests/: `train` lives in the checkout
        "NONFINITE_STEPS": nonfinite_steps,
    }
    return subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT
    )


def _lines(output: str, start: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(start)]


def test_skipped_updates_are_counted_and_a_run_skipping_most_stops(data_dir, tmp_path):
    # Steps 3 and 9-11 skipped: at step 11 three of the last four (8 … 11), more than half an
    # epoch, so the run stops there, keeping the checkpoint of step 8.
    stopped = _train(tmp_path, data_dir, nonfinite_steps="3,9,10,11")
    assert stopped.returncode == cli.EXIT_NONFINITE, stopped.stderr[-3000:]
    assert re.search(
        r"error: 3 of the 4 updates of steps 8 … 11 were skipped .*4 in all\); the last good "
        r"checkpoint is step 8 in .*checkpoints, left intact\. With on_nonfinite=skip a run stops",
        stopped.stderr,
    ), stopped.stderr[-3000:]
    evaluations = _lines(stopped.stdout, "epoch ")
    assert evaluations[0].endswith(
        "; 1 of the 4 updates since the last evaluation were skipped (non-finite)"
    ), stopped.stdout
    assert evaluations[1].startswith("epoch 2:") and "skipped" not in evaluations[1]
    expected = [(2, 0), (4, 1), (6, 0), (8, 0), (10, 2)]  # per log interval of 2 steps
    records = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert [(r["step"], r["skipped_updates"]) for r in records] == expected
    # `finite` (the interval's mean) agrees: a record's skipped steps are the non-finite ones.
    assert [round(2 * (1 - r["finite"])) for r in records] == [n for _, n in expected]
    assert tensorboard_scalars(tmp_path / "tensorboard")["train/skipped_updates"] == expected

    # Resumed without the NaN inputs: the checkpoint of step 8 held 7 applied steps, so the run
    # skipped 1 update in all, which the final line says.
    resumed = _train(tmp_path, data_dir, nonfinite_steps="")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = _lines(resumed.stdout, "final ")
    assert final[0].endswith("; 1 update skipped in all (non-finite)"), resumed.stdout
    assert "since the last evaluation" not in resumed.stdout
    records = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert [(r["step"], r["skipped_updates"]) for r in records] == [*expected[:4], (10, 0), (12, 0)]
