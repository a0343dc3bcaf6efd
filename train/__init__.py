"""The trainer: `recipe-train` / `python -m train` (see `train.trainer`).

`load_run(workdir)` gives a trained run's model and weights for inference in your own code.
"""

from train.trainer import SavedRun, load_run

__all__ = ["SavedRun", "load_run"]
