"""`python -m train` with NaN images in the training batches of the steps listed in
$NONFINITE_STEPS (comma separated, the loop's steps): the loss, gradients and update of those
steps are not finite, as in a diverging run, but at steps a test chooses. The loaders without
augmentation (precise BN's) and the evaluation's are left as they are.

The NaN batches are float32 (the others uint8), so the train step compiles a second time.
"""

import os

import numpy as np

from recipe.data import pipeline
from train import __main__ as cli

_train_batches = pipeline.train_batches


def _with_nonfinite_steps(*args, start_step: int = 0, augment: bool = True, **kwargs):
    batches = _train_batches(*args, start_step=start_step, augment=augment, **kwargs)
    if not augment:  # precise BN's loader
        yield from batches
        return
    nonfinite = {int(step) for step in os.environ["NONFINITE_STEPS"].split(",")}
    for step, batch in enumerate(batches, start=start_step + 1):
        if step in nonfinite:
            batch = {**batch, "image": np.full(batch["image"].shape, np.nan, np.float32)}
        yield batch


if __name__ == "__main__":
    pipeline.train_batches = _with_nonfinite_steps
    cli.run()
