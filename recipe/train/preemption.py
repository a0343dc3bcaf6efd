"""SIGTERM (what TPU VMs and schedulers send before preempting) as a request to stop cleanly.

The trainer finishes the current step, writes a checkpoint and raises `Preempted`; the command
line exits with `EXIT_PREEMPTED`, and re-running the same command resumes. With several
processes, the request is shared at the next sync point so that every process stops at the same
step and writes the checkpoint together.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: temporary failure, run the same command again


class Preempted(Exception):
    """Training stopped on SIGTERM after writing a checkpoint at `step`."""

    def __init__(self, step: int, checkpoint_dir: str):
        super().__init__(
            f"preempted: checkpoint written at step {step} in {checkpoint_dir}; run the same "
            "command again to resume"
        )
        self.step = step


class StopRequest:
    """Set by SIGTERM; `agreed()` tells whether any process has been asked to stop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def local(self) -> bool:
        return self._event.is_set()

    def agreed(self) -> bool:
        """True on every process if any process has been asked to stop (a collective call)."""
        if jax.process_count() == 1:
            return self.local()
        flags = multihost_utils.process_allgather(np.array(self.local(), np.int32))
        return bool(np.any(flags))


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """Within the block, SIGTERM sets the returned `StopRequest` instead of killing the process."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be installed from the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: request.set())
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
