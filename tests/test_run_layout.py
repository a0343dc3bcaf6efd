"""The device layout is part of the run (train/run_layout.py): a resume on another device
count keeps Goyal's n under the jit runner and ends as the uninterrupted run did, or is refused
before anything is written under the per-device runners.

The uninterrupted run is tests/tiny_config.py's on 4 devices (conftest.finished_run): 4 workers
of 250 examples.
"""

import hashlib
import json
import shutil

import chex
import numpy as np
import pytest
import tiny_config as tiny
from conftest import checkpoint_state, visible_devices

from train import evaluation, loop, resolve, run_layout
from train.metrics import read_metrics


def _stopped_at_step_4(finished_run, tmp_path):
    """A copy of the uninterrupted run as if it had stopped after its step-4 checkpoint."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    for step in (8, tiny.TOTAL_STEPS):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    return workdir


def _checksums(directory) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_a_run_stores_its_layout(finished_run):
    assert json.loads((finished_run[0] / run_layout.LAYOUT_FILE).read_text()) == {
        "workers": 4, "per_worker_batch": 250, "devices": 4, "processes": 1,
    }  # fmt: skip


@pytest.mark.parametrize("runner", ["pmap", "shard_map"])
def test_a_per_device_runner_refuses_another_device_count(runner, finished_run, data_dir, tmp_path):
    workdir = _stopped_at_step_4(finished_run, tmp_path)
    before = _checksums(workdir)
    with visible_devices(2), pytest.raises(resolve.ConfigError) as refused:
        loop.train_and_evaluate(tiny.make_config(data_dir, runner=runner), str(workdir))
    assert str(refused.value) == (
        f"{workdir} holds a run of 4 workers of 250 examples on 4 devices; this start has 2 "
        f"workers of 500 examples on 2 devices ({runner} runner), which would change its "
        "BatchNorm statistics and Mixup pairs (Goyal's n); nothing was changed. Resume on 4 "
        "devices, or keep its 4 workers on 1, 2 or 4 devices with the jit runner; fix: "
        "--config.runner=jit"
    )
    assert _checksums(workdir) == before


def test_the_jit_runner_keeps_the_workers_on_fewer_devices(
    finished_run, data_dir, tmp_path, capsys
):
    """Stopped at step 4 on 4 devices, resumed on 1 under the jit runner: the same losses and
    final weights as the uninterrupted run, evaluated as it was."""
    uninterrupted, expected = finished_run
    workdir = _stopped_at_step_4(finished_run, tmp_path)
    config = tiny.make_config(data_dir, runner="jit")
    with visible_devices(1):
        result = loop.train_and_evaluate(config, str(workdir))
        scored = evaluation.evaluate_checkpoint(config, str(workdir))
    assert (
        "resumed as the run's 4 workers of 250 examples (Goyal's n) on 1 device, where it "
        "started on 4: the same BatchNorm statistics, Mixup pairs and data (jit runner)"
    ) in capsys.readouterr().out
    losses = {r["step"]: r["loss"] for r in read_metrics(workdir) if r["kind"] == "train"}
    expected_losses = {
        r["step"]: r["loss"] for r in read_metrics(uninterrupted) if r["kind"] == "train"
    }
    assert list(losses) == list(expected_losses)
    np.testing.assert_allclose(list(losses.values()), list(expected_losses.values()), rtol=1e-6)
    # One device sums the 4 workers' gradients in another order than 4 do: float32 rounding
    # (JAX 0.12 on CPU moves a momentum entry of 0.011 by 1.1e-6).
    chex.assert_trees_all_close(
        checkpoint_state(workdir, tiny.TOTAL_STEPS),
        checkpoint_state(uninterrupted, tiny.TOTAL_STEPS),
        atol=1e-5,
    )
    chex.assert_trees_all_close(result, expected, rtol=1e-5)
    assert scored.pop("step") == tiny.TOTAL_STEPS
    chex.assert_trees_all_close(scored, expected, rtol=1e-5)
    # The layout stays the run's first.
    assert run_layout.stored(workdir).devices == 4
