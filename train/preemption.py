"""SIGTERM and SIGINT as requests to stop cleanly.

SIGTERM is what TPU VMs and schedulers send before preempting; SIGINT is Ctrl-C. Within
`stop_on_signals()`, either signal only records a request (the first one decides; any number of
repeats are ignored, so a burst cannot interrupt a checkpoint write). The trainer then finishes
the current step, writes a checkpoint, waits for it and raises `Stopped`; the command line exits
with 75 for SIGTERM (EX_TEMPFAIL: run the same command again) and 130 for SIGINT (128 + 2, the
shell's convention). With several processes, the request is shared at the next sync point so that
every process stops at the same step and writes the checkpoint together.

Once training has ended or stopped, the command line's exit status is decided and repeated
signals must not change it: `training_began()` tells its handler so, and `ignore_stop_signals()`
keeps the signals ignored while the interpreter shuts down.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 75  # SIGTERM: EX_TEMPFAIL, a temporary failure
EXIT_INTERRUPTED = 130  # SIGINT: 128 + 2
_EXIT_CODES = {signal.SIGTERM: EXIT_PREEMPTED, signal.SIGINT: EXIT_INTERRUPTED}
_DESCRIPTIONS = {signal.SIGTERM: "preempted (SIGTERM)", signal.SIGINT: "interrupted (SIGINT)"}


def exit_code(signum: int) -> int:
    """The command line's exit status after stopping on `signum` (SIGTERM 75, SIGINT 130)."""
    return _EXIT_CODES[signum]


class Stopped(Exception):
    """Training stopped on a signal; the checkpoint of `step` holds every completed step."""

    def __init__(self, signum: int, step: int, checkpoint_dir: str, wrote_checkpoint: bool):
        written = "written" if wrote_checkpoint else "already there"
        super().__init__(
            f"{_DESCRIPTIONS[signum]}: the checkpoint of step {step} is {written} in "
            f"{checkpoint_dir}; run the same command again to resume"
        )
        self.signum = signum
        self.step = step
        self.exit_code = exit_code(signum)


class StopRequest:
    """Records the first stop signal; `agreed()` tells whether any process received one."""

    def __init__(self) -> None:
        self._signum = 0
        self._lock = threading.Lock()

    def set(self, signum: int) -> None:
        with self._lock:
            self._signum = self._signum or int(signum)

    def local(self) -> bool:
        return bool(self._signum)

    def agreed(self) -> int:
        """The stop signal any process received (the lowest number if they differ), or 0; a
        collective call when there are several processes."""
        if jax.process_count() == 1:
            return self._signum
        signums = multihost_utils.process_allgather(np.array(self._signum, np.int32))
        received = [int(s) for s in np.ravel(signums) if s]
        return min(received, default=0)


_TRAINING_BEGAN = threading.Event()


def training_began() -> bool:
    """Whether a `stop_on_signals` block has begun in this process: outside one, a signal then
    arrives after training ended or stopped."""
    return _TRAINING_BEGAN.is_set()


def ignore_stop_signals() -> None:
    """Ignores SIGTERM and SIGINT from now on, for a process whose exit status is decided.

    SIG_IGN, not a Python handler: while the interpreter shuts down, CPython gives every signal
    that has a Python handler its default action back, so a repeated SIGTERM arriving then would
    kill the process (exit status −15 instead of 75); an ignored signal stays ignored.
    """
    if threading.current_thread() is threading.main_thread():
        for signum in _EXIT_CODES:
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGTERM and SIGINT set the returned `StopRequest` instead of killing
    the process or raising `KeyboardInterrupt`; the previous handlers are restored after it."""
    _TRAINING_BEGAN.set()
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be installed from the main thread
        return
    previous = {s: signal.signal(s, lambda signum, frame: request.set(signum)) for s in _EXIT_CODES}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
