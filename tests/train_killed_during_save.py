"""`python -m recipe.train`, SIGKILLed while writing the checkpoint of step
$KILL_DURING_SAVE_OF_STEP.

Orbax writes a step into a temporary directory and renames it when complete; this kills the
process after the files are written and before the rename, the worst moment for a crash.
"""

import os
import signal

from absl import app
from orbax.checkpoint._src.path import atomicity

from recipe.train.__main__ import main

_finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def _finalize_or_die(self, *args, **kwargs):
    if os.environ["KILL_DURING_SAVE_OF_STEP"] in self.get_final().parts:
        os.kill(os.getpid(), signal.SIGKILL)
    return await _finalize(self, *args, **kwargs)


if __name__ == "__main__":
    atomicity.AtomicRenameTemporaryPath.finalize = _finalize_or_die
    app.run(main)
