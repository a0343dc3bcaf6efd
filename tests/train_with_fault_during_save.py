"""`python -m train`, with a fault injected while it writes the checkpoint of step
$FAULT_STEP, after the files are written and before orbax renames them into place (the worst
moment): $FAULT is KILL (SIGKILL: a crash), TERM or INT (that signal, $FAULT_REPEAT times, to
this process, while the save is in flight), or ENOSPC (the write fails: disk full).
"""

import errno
import os
import signal
import time

from orbax.checkpoint._src.path import atomicity

# Run as a script, only this file's folder is on sys.path: the tests put the checkout's root on
# PYTHONPATH for every process they start (tests/conftest.py).
from train import __main__ as cli

_finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def _finalize_with_fault(self, *args, **kwargs):
    if os.environ["FAULT_STEP"] in self.get_final().parts:
        fault = os.environ["FAULT"]
        if fault == "ENOSPC":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.get_final()))
        for _ in range(int(os.environ.get("FAULT_REPEAT", "1"))):
            os.kill(os.getpid(), getattr(signal, f"SIG{fault}"))
            time.sleep(0.05)  # the save stays in flight while the signals arrive
    return await _finalize(self, *args, **kwargs)


if __name__ == "__main__":
    atomicity.AtomicRenameTemporaryPath.finalize = _finalize_with_fault
    cli.run()
