"""One writer per work dir: a lock that a training run holds from before its first write to
after its last.

Two copies of one run writing the same work dir (a command started twice, a scheduler restarting
a job whose first copy is still alive, two hosts given the same `--workdir`) overwrite each
other's checkpoints and metrics; orbax's checkpoint manager assumes a single writer. So a run
takes `<workdir>/lock` first; a second copy is refused (`WorkdirInUseError`: one line naming the
holder's host, process id and start time; exit status 73) before it compiles or writes anything,
and the first carries on untouched. `--describe` and `--eval_only` never touch the lock.

How the lock is held depends on the store:

* **A file system** (a local disk; NFS): `fcntl.flock` on the lock file, which the kernel
  releases when the holding process ends however it ends (its end, a crash, `kill -9`), so a
  dead holder never blocks a resume. The file also holds the holder's description, for the
  refusal, and is emptied when the lock is released: a start that finds it locked by nobody but
  not empty says in one line that it took the lock over from a holder that died.
* **An object store** (`gs://`, `s3://`: no file locks, no exclusive create through `epath`): a
  lease. The holder writes its description with a random token and a heartbeat time, reads it
  back after `CONFIRM_SECONDS` (of two copies that both found the lock free, the last writer
  wins, and the other reads the winner's token and is refused), then rewrites the heartbeat
  every `HEARTBEAT_SECONDS`. A lease written from this host whose process is gone is taken over
  at once; one from another host, once its heartbeat is older than `STALE_SECONDS` (so a
  preempted host's job, restarted elsewhere, waits at most that long; hosts' clocks are assumed
  in step, as NTP keeps cloud VMs). If a holder finds its lease taken over (its heartbeat was
  stale, e.g. the host was cut off for a minute), it stops at its next sync point
  (`WorkdirLockLostError`) instead of writing beside the new holder.

In a multi-host run the primary process (process 0) holds the lock for all of them; the others
learn its verdict through a collective and are refused with it.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from train.metrics import WorkdirWriteError, error_summary

LOCK_FILE = "lock"
# Object stores: the lease's timing (see the module doc).
CONFIRM_SECONDS = 1.0
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


class WorkdirInUseError(RuntimeError):
    """Another running copy holds the work dir's lock; nothing was written."""


class WorkdirLockLostError(WorkdirInUseError):
    """The lease of an object-store work dir was taken over by another copy while this one ran
    (its heartbeat had gone stale); this copy stopped writing."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock: the process that took it.

    Attributes:
      host: `socket.gethostname()` of the holder.
      pid: its process id.
      started: when it took the lock (seconds since the epoch).
      token: a random id of this holding (two holdings of one pid differ).
      heartbeat: the lease's last heartbeat (seconds since the epoch); object stores only.
    """

    host: str
    pid: int
    started: float
    token: str
    heartbeat: float | None = None

    @classmethod
    def this_process(cls) -> "Holder":
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, secrets.token_hex(8))

    @classmethod
    def parse(cls, text: str) -> "Holder | None":
        """The holder a lock file describes, or None for an empty (released) or unreadable one."""
        try:
            fields = json.loads(text)
            return cls(**{f.name: fields.get(f.name) for f in dataclasses.fields(cls)})
        except (ValueError, TypeError):
            return None

    def dump(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"

    def describe(self) -> str:
        return f"process {self.pid} on host {self.host}, started {_utc(self.started)}"

    def is_on_this_host(self) -> bool:
        return self.host == socket.gethostname()


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def process_is_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _in_use_message(lock_path: Any, holder: Holder | None, detail: str = "") -> str:
    who = holder.describe() if holder else "another process"
    workdir = epath.Path(lock_path).parent
    return (
        f"{workdir} is in use by another run ({who}, holds {lock_path}{detail}); nothing was "
        "written. Wait for that run to end (or stop it), then run the same command again to "
        "resume; or give this run another --workdir"
    )


class _FileLock:
    """`fcntl.flock` on a local (or NFS) lock file; the kernel releases it with the process."""

    def __init__(self, path: epath.Path, holder: Holder):
        self.path, self.holder = path, holder
        self._fd: int | None = None

    def acquire(self) -> Holder | None:
        """Takes the lock; returns the dead holder it took over from, if any."""
        fd = os.open(os.fspath(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirInUseError(
                _in_use_message(self.path, Holder.parse(self.path.read_text()))
            ) from None
        self._fd = fd
        previous = Holder.parse(_read_fd(fd))
        _write_fd(fd, self.holder.dump())
        return previous

    def check(self) -> None:
        pass  # the kernel holds a file lock for as long as the process lives

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            _write_fd(self._fd, "")  # released: the next holder takes over from nobody
        finally:
            os.close(self._fd)  # drops the lock
            self._fd = None


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _write_fd(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)
    os.fsync(fd)


class _Lease:
    """A lease with a heartbeat on an object store (see the module doc)."""

    def __init__(
        self,
        path: epath.Path,
        holder: Holder,
        *,
        confirm_seconds: float = CONFIRM_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stale_seconds: float = STALE_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        self.path, self.holder = path, holder
        self.confirm_seconds = confirm_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._taken_by: Holder | None = None

    def _read(self) -> Holder | None:
        try:
            return Holder.parse(self.path.read_text())
        except FileNotFoundError:
            return None

    def _write(self) -> None:
        lease = dataclasses.replace(self.holder, heartbeat=self._clock())
        self.path.write_text(lease.dump())

    def acquire(self) -> Holder | None:
        previous = self._read()
        if previous is not None:
            self._refuse_if_alive(previous)
        self._write()
        time.sleep(self.confirm_seconds)
        winner = self._read()
        if winner is None or winner.token != self.holder.token:
            raise WorkdirInUseError(_in_use_message(self.path, winner))
        self._thread = threading.Thread(target=self._beat, name="workdir-lease", daemon=True)
        self._thread.start()
        return previous

    def _refuse_if_alive(self, holder: Holder) -> None:
        if holder.is_on_this_host():
            if process_is_alive(holder.pid):
                raise WorkdirInUseError(_in_use_message(self.path, holder))
            return
        age = self._clock() - (holder.heartbeat or 0.0)
        if age < self.stale_seconds:
            detail = (
                f" (last heartbeat {age:.0f} s ago; a holder on another host counts as gone "
                f"{self.stale_seconds:.0f} s after its last heartbeat)"
            )
            raise WorkdirInUseError(_in_use_message(self.path, holder, detail))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                current = self._read()
                if current is None or current.token != self.holder.token:
                    self._taken_by = current or Holder("?", 0, 0.0, "")
                    return
                self._write()
            except Exception as error:  # a failed heartbeat is retried at the next beat
                logging.warning("could not renew the work dir's lease %s: %s", self.path, error)

    def check(self) -> None:
        if self._taken_by is not None:
            raise WorkdirLockLostError(
                f"the work dir's lease {self.path} was taken over by "
                f"{self._taken_by.describe()} (this copy's heartbeat had gone stale for "
                f"{self.stale_seconds:.0f} s); this copy stopped without writing more. Let the "
                "other copy finish, or stop it and run the same command again to resume"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):  # a lease nobody renews goes stale anyway
            current = self._read()
            if current is not None and current.token == self.holder.token:
                self.path.unlink()


def _is_file_system(path: epath.Path) -> bool:
    return "://" not in os.fspath(path)


def _took_over_message(lock_path: Any, previous: Holder) -> str:
    if previous.heartbeat is not None and not previous.is_on_this_host():
        gone = f"whose last heartbeat was {time.time() - previous.heartbeat:.0f} s ago"
    else:
        gone = "which is no longer running"
    return f"took over {lock_path} from {previous.describe()}, {gone}"


@contextlib.contextmanager
def hold(workdir: epath.Path) -> Iterator[Callable[[], None]]:
    """Holds the lock of `workdir` (which exists) within the block, on the primary process.

    Yields `check()`, which raises `WorkdirLockLostError` once an object-store lease has been
    taken over; the loop calls it at its sync points.

    Raises:
      WorkdirInUseError: another running copy holds the lock (on every process of a multi-host
        run); nothing was written.
    """
    path = epath.Path(workdir) / LOCK_FILE
    holder = Holder.this_process()
    lock = _FileLock(path, holder) if _is_file_system(path) else _Lease(path, holder)
    refusal: Exception | None = None
    if jax.process_index() == 0:
        try:
            previous = lock.acquire()
        except WorkdirInUseError as error:
            refusal = error
        except OSError as error:
            refusal = WorkdirWriteError(
                f"taking the work dir's lock {path} failed ({error_summary(error)}); nothing "
                "was written. Fix the directory, then run the same command again"
            )
        else:
            if previous is not None:
                print(_took_over_message(path, previous))
    if jax.process_count() > 1:
        # The other processes wait here for process 0's verdict, whichever it is.
        refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
        if refused and refusal is None:
            refusal = WorkdirInUseError(
                f"process 0 could not take the work dir's lock {path}; see its message"
            )
    if refusal is not None:
        raise refusal
    try:
        yield lock.check
    finally:
        if jax.process_index() == 0:
            lock.release()
