"""A trainer that never loses work: multi-host, preemption, kill -9, corrupt checkpoints, NaNs.

Subprocesses run the real command line (`python -m recipe.train`) with four forced CPU devices, like
this test process, so their results can be compared bit for bit with the in-process
uninterrupted run of tests/tiny_config.py. Every subprocess runs under a hard kill timeout: a
hung CPU collective ignores SIGTERM.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import chex
import pytest
import tiny_config as tiny
from conftest import NUM_TEST_DEVICES, checkpoint_state

from recipe.train import __main__ as cli
from recipe.train import checkpoints, preemption, trainer

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds per subprocess; a normal run takes ~20 s


def _command(workdir: Path, data_dir: str, *extra: str, script: str | None = None) -> list[str]:
    entry = [script] if script else ["-m", "recipe.train"]
    return [
        sys.executable,
        *entry,
        f"--config={REPO / 'tests' / 'tiny_config.py'}",
        f"--config.data_dir={data_dir}",
        f"--workdir={workdir}",
        *extra,
    ]


def _env(devices: int = NUM_TEST_DEVICES, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        **extra,
    }


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT
    )


def _checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _train_losses(workdir: Path) -> dict[int, float]:
    records = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_with_four_devices(finished_run, data_dir, tmp_path):
    uninterrupted, _ = finished_run
    workdir = tmp_path / "two_hosts"
    port = _free_port()
    processes = [
        subprocess.Popen(
            _command(
                workdir,
                data_dir,
                "--config.distributed.enabled=true",
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
            ),
            env=_env(devices=2),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    for i, (p, out) in enumerate(zip(processes, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
    # Each process checked at every checkpoint that its weights equal the other's bitwise (the
    # trainer asserts it). One process driving all four devices gets the same weights up to
    # float32 round-off, since gloo sums across processes in another order: measured 3e-8 at
    # step 4. Steps 5-8 run at the peak lr (3.1, k = 31) and amplify it (1e-4 to 1e-3 at steps
    # 8 and 12, in the BN scales that start at 0); the logged losses still agree to 2e-5.
    for step, atol in ((4, 1e-6), (8, 5e-3), (tiny.TOTAL_STEPS, 5e-3)):
        chex.assert_trees_all_close(
            checkpoint_state(workdir, step)["params"],
            checkpoint_state(uninterrupted, step)["params"],
            atol=atol,
        )
    chex.assert_trees_all_close(_train_losses(workdir), _train_losses(uninterrupted), rtol=1e-4)


def test_sigterm_then_kill_9_twice_then_resume_equals_uninterrupted(
    finished_run, data_dir, tmp_path
):
    """One work dir through every way a run can die; the end result is bitwise the same."""
    uninterrupted, _ = finished_run
    workdir = tmp_path / "interrupted"

    # 1. SIGTERM once training is under way: a checkpoint at that step, the documented status.
    process = subprocess.Popen(
        _command(workdir, data_dir), env=_env(), cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while not (metrics.exists() and metrics.read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, "run ended early"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == preemption.EXIT_PREEMPTED, stderr[-3000:]
    preempted_at = _checkpoint_steps(workdir)[-1]
    assert 2 <= preempted_at < 8, preempted_at
    assert f"checkpoint written at step {preempted_at}" in stderr

    # 2. kill -9 while the step-8 checkpoint is being written (files written, not renamed).
    killed = _run(
        _command(workdir, data_dir, script=str(REPO / "tests" / "train_killed_during_save.py")),
        _env(KILL_DURING_SAVE_OF_STEP="8"),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert 8 not in _checkpoint_steps(workdir), "a half-written checkpoint must not be listed"
    assert any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir())

    # 3. kill -9 at an arbitrary point after the next checkpoint appears.
    process = subprocess.Popen(
        _command(workdir, data_dir), env=_env(), cwd=REPO, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + TIMEOUT
    while 8 not in _checkpoint_steps(workdir):
        assert process.poll() is None and time.monotonic() < deadline, "run ended early"
        time.sleep(0.02)
    process.kill()
    process.wait(timeout=TIMEOUT)

    # 4. The same command again finishes the run; nothing half-written was picked up.
    finished = _run(_command(workdir, data_dir), _env())
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert not any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())
    chex.assert_trees_all_equal(
        checkpoint_state(workdir, tiny.TOTAL_STEPS),
        checkpoint_state(uninterrupted, tiny.TOTAL_STEPS),
    )


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    finished_run, data_dir, tmp_path, caplog
):
    uninterrupted, _ = finished_run
    workdir = tmp_path / "corrupt"
    shutil.copytree(uninterrupted, workdir)
    latest = workdir / "checkpoints" / str(tiny.TOTAL_STEPS)
    for path in (latest / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncate
    trainer.train_and_evaluate(tiny.make_config(data_dir), str(workdir))
    assert (workdir / "checkpoints" / f"{tiny.TOTAL_STEPS}.unreadable").is_dir()
    assert "unreadable" in caplog.text
    chex.assert_trees_all_equal(
        checkpoint_state(workdir, tiny.TOTAL_STEPS),
        checkpoint_state(uninterrupted, tiny.TOTAL_STEPS),
    )


def test_workdir_of_an_incompatible_config_is_refused(finished_run, data_dir, tmp_path):
    uninterrupted, _ = finished_run
    workdir = tmp_path / "other_config"
    shutil.copytree(uninterrupted, workdir)
    config = tiny.make_config(data_dir, label_smoothing=0.2)
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match="label_smoothing"):
        trainer.train_and_evaluate(config, str(workdir))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    # A decay factor of 1e39 overflows float32: the step decay's lr is NaN from the first update
    # after warmup (update 4, step 5), just after the step-4 checkpoint.
    config = tiny.make_config(data_dir, **{"optimizer.decay_factor": 1e39})
    with pytest.raises(trainer.NonFiniteLossError, match=r"at step 5 .*step 4 in .*left intact"):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert _checkpoint_steps(tmp_path) == [4]
    chex.assert_tree_all_finite(checkpoint_state(tmp_path, 4))


def test_nonfinite_updates_can_be_skipped(data_dir, tmp_path):
    config = tiny.make_config(data_dir, on_nonfinite="skip", **{"optimizer.decay_factor": 1e39})
    result = trainer.train_and_evaluate(config, str(tmp_path))
    chex.assert_tree_all_finite(checkpoint_state(tmp_path, tiny.TOTAL_STEPS))
    assert result["loss"] == result["loss"]  # not NaN


def test_cli_exit_status_for_bad_input(data_dir, tmp_path):
    bad = _run(_command(tmp_path, data_dir, "--config.label_smoothing=1.5"), _env())
    assert bad.returncode == cli.EXIT_BAD_INPUT, bad.stderr[-2000:]
    assert "label_smoothing must be a number in [0, 1], got 1.5" in bad.stderr
    unknown = _run(_command(tmp_path, data_dir, "--config.bogus_field=1"), _env())
    assert unknown.returncode != 0
    assert "bogus_field" in unknown.stderr
