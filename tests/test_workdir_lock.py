"""One work dir, one writer (train/workdir_lock.py): a second copy of a run is refused in one
line before it writes anything, and a dead holder's lock never blocks a resume.

The file lock (local disks) is tested with real processes; the object-store lease with its
clock, heartbeat and read-back driven directly, and end to end against the Cloud Storage
emulator.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import chex
import pytest
import tiny_config as tiny
from conftest import checkpoint_state, xla_flags

import recipe
from recipe.data import datasets
from train import __main__ as cli
from train import describe, evaluation, workdir_lock
from train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds per subprocess; a tiny run takes ~20 s
# The refusal line: the work dir, who holds it (pid, host, start time) and what to do.
REFUSAL = re.compile(
    r"^error: (?P<workdir>\S+) is in use by another run \(process (?P<pid>\d+) on host \S+, "
    r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, holds \S+/lock\); nothing was written\. Wait "
    r"for that run to end \(or stop it\), then run the same command again to resume; or give "
    r"this run another --workdir$"
)


def _train_command(workdir: str, data_dir: str) -> list[str]:
    return [
        sys.executable, "-m", "train", f"--config={REPO / 'tests' / 'tiny_config.py'}",
        f"--config.data_dir={data_dir}", f"--workdir={workdir}",
    ]  # fmt: skip


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("store", ["local disk", "Cloud Storage"])
def test_two_copies_started_together_one_trains_the_other_is_refused(
    store, finished_run, data_dir, tmp_path, request
):
    uninterrupted, _ = finished_run
    env = {**os.environ, "XLA_FLAGS": xla_flags()}
    if store == "local disk":
        workdir = str(tmp_path / "run")
    else:
        workdir = request.getfixturevalue("gcs_workdir")
        env.update(request.getfixturevalue("gcs_emulator"))
    datasets.load_source("mnist5k", "train", data_dir)  # prepared: the copies only read it
    copies = [_start(_train_command(workdir, data_dir), env) for _ in range(2)]
    try:
        outputs = [copy.communicate(timeout=TIMEOUT) for copy in copies]
    finally:
        for copy in copies:
            copy.kill()
    codes = sorted(copy.returncode for copy in copies)
    assert codes == [0, cli.EXIT_WORKDIR_IN_USE], outputs
    winner, loser = (0, 1) if copies[0].returncode == 0 else (1, 0)
    (line,) = _error_lines(outputs[loser][1])
    match = REFUSAL.match(line)
    assert match and match["workdir"] == workdir, line
    assert int(match["pid"]) == copies[winner].pid
    assert outputs[loser][0] == "", "the refused copy says nothing else"

    # One coherent run: the winner's records once each, its checkpoints those of an
    # uninterrupted run, and the lock released.
    records = read_metrics(workdir)
    for kind in ("train", "eval"):
        steps = [r["step"] for r in records if r["kind"] == kind]
        assert steps == sorted(set(steps)) and steps[-1] == tiny.TOTAL_STEPS, (kind, steps)
    run = recipe.load_run(workdir)
    assert run.step == tiny.TOTAL_STEPS
    chex.assert_trees_all_equal(
        dict(run.variables["params"]), checkpoint_state(uninterrupted, tiny.TOTAL_STEPS)["params"]
    )
    lock = f"{workdir}/{workdir_lock.LOCK_FILE}"
    if store == "local disk":
        assert Path(lock).read_text() == "", "released: emptied"
    else:
        assert not workdir_lock.epath.Path(lock).exists(), "released: deleted"


_HOLD_THEN_WAIT = """
import sys, time
from etils import epath
from train import workdir_lock
with workdir_lock.hold(epath.Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_killed_holders_lock_is_taken_over_at_once(tmp_path, capsys):
    """While its holder lives, the lock refuses; after kill -9 (no chance to release it), the
    next start takes it over, saying so in one line."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THEN_WAIT, str(tmp_path)],
        env={**os.environ, "XLA_FLAGS": xla_flags(1)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(workdir_lock.WorkdirInUseError, match=f"process {holder.pid} on host"):
            with workdir_lock.hold(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=TIMEOUT)
    with workdir_lock.hold(tmp_path):
        took_over = capsys.readouterr().out
    assert re.fullmatch(
        rf"took over {tmp_path}/lock from process {holder.pid} on host \S+, started "
        r"[-\d]+ [:\d]+ UTC, which is no longer running\n",
        took_over,
    ), took_over
    with workdir_lock.hold(tmp_path):  # released cleanly: nothing to take over
        assert capsys.readouterr().out == ""


def test_describe_and_evaluate_only_never_touch_the_lock(finished_run, data_dir, tmp_path):
    """Both work while a run holds the work dir (a second holder in this process would be
    refused: the file lock is per open file, not per process)."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    config = tiny.make_config(data_dir)
    with workdir_lock.hold(workdir):
        held = (workdir / workdir_lock.LOCK_FILE).read_text()
        assert describe.describe(config, str(workdir))
        assert evaluation.evaluate_checkpoint(config, str(workdir))["step"] == tiny.TOTAL_STEPS
        assert (workdir / workdir_lock.LOCK_FILE).read_text() == held


# ---- The lease of object stores, driven directly (on a local path: it needs only reads,
# writes and deletes of one file).


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _lease(path: Path, holder: workdir_lock.Holder, clock=time.time, **timing) -> object:
    timing = {"confirm_seconds": 0.0, "heartbeat_seconds": 60.0, **timing}
    return workdir_lock._Lease(workdir_lock.epath.Path(path), holder, clock=clock, **timing)


def _elsewhere(pid: int = 4321) -> workdir_lock.Holder:
    return workdir_lock.Holder("another-host", pid, time.time(), "a" * 16, heartbeat=time.time())


def test_a_lease_of_a_live_process_on_this_host_refuses(tmp_path):
    first = _lease(tmp_path / "lock", workdir_lock.Holder.this_process())
    assert first.acquire() is None
    try:
        second = _lease(tmp_path / "lock", workdir_lock.Holder.this_process())
        with pytest.raises(workdir_lock.WorkdirInUseError, match=f"process {os.getpid()} on"):
            second.acquire()
    finally:
        first.release()
    assert not (tmp_path / "lock").exists()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gone = workdir_lock.Holder.this_process()
    gone = workdir_lock.dataclasses.replace(gone, pid=int(dead.stdout), heartbeat=time.time())
    (tmp_path / "lock").write_text(gone.dump())
    lease = _lease(tmp_path / "lock", workdir_lock.Holder.this_process())
    assert lease.acquire() == gone
    lease.release()


def test_a_lease_of_another_users_live_process_on_this_host_refuses(tmp_path, monkeypatch):
    """Signalling another user's process is refused (EPERM): it is alive, and its lease holds.
    The refusal is injected: root (as CI runs) may signal any process."""
    other_user = workdir_lock.dataclasses.replace(
        workdir_lock.Holder.this_process(), pid=4321, heartbeat=time.time()
    )
    (tmp_path / "lock").write_text(other_user.dump())
    signalled = []

    def kill(pid, signum):
        signalled.append((pid, signum))
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(workdir_lock.os, "kill", kill)
    with pytest.raises(workdir_lock.WorkdirInUseError, match="process 4321 on"):
        _lease(tmp_path / "lock", workdir_lock.Holder.this_process()).acquire()
    assert signalled == [(4321, 0)]
    assert workdir_lock.Holder.parse((tmp_path / "lock").read_text()) == other_user


def test_a_lease_from_another_host_is_taken_over_once_its_heartbeat_is_stale(tmp_path):
    other = _elsewhere()
    (tmp_path / "lock").write_text(other.dump())
    clock = _Clock()
    lease = _lease(tmp_path / "lock", workdir_lock.Holder.this_process(), clock=clock)
    clock.now = other.heartbeat + workdir_lock.STALE_SECONDS - 1
    with pytest.raises(workdir_lock.WorkdirInUseError, match=r"last heartbeat 59 s ago"):
        lease.acquire()
    assert workdir_lock.Holder.parse((tmp_path / "lock").read_text()) == other, "untouched"
    clock.now = other.heartbeat + workdir_lock.STALE_SECONDS + 1
    assert lease.acquire() == other
    lease.release()


def test_of_two_copies_that_found_the_lease_free_the_last_writer_wins(tmp_path):
    """Read back after the confirmation wait: a copy whose lease was overwritten meanwhile
    (another copy that also found it free) is refused, naming the winner."""
    other = _elsewhere()
    lease = _lease(tmp_path / "lock", workdir_lock.Holder.this_process(), confirm_seconds=0.5)
    overwrite = threading.Timer(0.1, lambda: (tmp_path / "lock").write_text(other.dump()))
    overwrite.start()
    with pytest.raises(workdir_lock.WorkdirInUseError, match="process 4321 on host another-host"):
        lease.acquire()
    overwrite.join()
    assert workdir_lock.Holder.parse((tmp_path / "lock").read_text()) == other


def test_a_lease_keeps_its_heartbeat_and_notices_a_takeover(tmp_path):
    clock = _Clock()
    lease = _lease(
        tmp_path / "lock", workdir_lock.Holder.this_process(), clock=clock, heartbeat_seconds=0.05
    )
    lease.acquire()
    try:
        started = json.loads((tmp_path / "lock").read_text())["heartbeat"]
        clock.now += 30
        deadline = time.monotonic() + 10
        while json.loads((tmp_path / "lock").read_text())["heartbeat"] == started:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.01)
        lease.check()  # still ours
        (tmp_path / "lock").write_text(_elsewhere().dump())  # taken over meanwhile
        deadline = time.monotonic() + 10
        while lease._taken_by is None:
            assert time.monotonic() < deadline, "the takeover went unnoticed"
            time.sleep(0.01)
        with pytest.raises(workdir_lock.WorkdirLockLostError, match="taken over by process 4321"):
            lease.check()
    finally:
        lease.release()
    assert workdir_lock.Holder.parse((tmp_path / "lock").read_text()).pid == 4321, "not ours"
