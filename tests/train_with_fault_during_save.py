"""`python -m train`, with a fault injected while it writes the checkpoint of step
$FAULT_STEP, after the files are written and before orbax renames them into place (the worst
moment): $FAULT is KILL (SIGKILL: a crash), TERM or INT (that signal, $FAULT_REPEAT times, to
this process, while the save is in flight), or ENOSPC (the write fails: disk full).

With $SIGNALS_WHILE_EXITING (TERM or INT), that signal also arrives every millisecond from the
moment training's signal handling ends (`train.preemption.stop_on_signals` exits) until the
process is gone: the window in which the exit status is decided and the interpreter shuts down.
"""

import contextlib
import errno
import os
import signal
import subprocess
import time

from orbax.checkpoint._src.path import atomicity

# Run as a script, only this file's folder is on sys.path: the tests put the checkout's root on
# PYTHONPATH for every process they start (tests/conftest.py).
from train import __main__ as cli
from train import preemption

_finalize = atomicity.AtomicRenameTemporaryPath.finalize
_stop_on_signals = preemption.stop_on_signals


async def _finalize_with_fault(self, *args, **kwargs):
    if os.environ["FAULT_STEP"] in self.get_final().parts:
        fault = os.environ["FAULT"]
        if fault == "ENOSPC":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.get_final()))
        for _ in range(int(os.environ.get("FAULT_REPEAT", "1"))):
            os.kill(os.getpid(), getattr(signal, f"SIG{fault}"))
            time.sleep(0.05)  # the save stays in flight while the signals arrive
    return await _finalize(self, *args, **kwargs)


@contextlib.contextmanager
def _signals_while_exiting():
    try:
        with _stop_on_signals() as request:
            yield request
    finally:
        name = os.environ["SIGNALS_WHILE_EXITING"]
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))  # the first one at once, then:
        # Not on this process's pipes: its parent reads them to their end before it reaps it.
        subprocess.Popen(
            ["sh", "-c", f"while kill -{name} {os.getpid()}; do sleep 0.001; done"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


if __name__ == "__main__":
    atomicity.AtomicRenameTemporaryPath.finalize = _finalize_with_fault
    if "SIGNALS_WHILE_EXITING" in os.environ:
        preemption.stop_on_signals = _signals_while_exiting
    cli.run()
