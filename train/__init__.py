"""The trainer: `python -m train --config configs/default.py --workdir runs/default`, run from a
checkout (`train.loop.train_and_evaluate`). A finished run's model and weights load with the
library alone: `recipe.load_run(workdir)`.

It needs the `train` extra (`pip install -e '.[train]'` in the checkout: the input pipeline's
packages, TensorBoard, matplotlib and tqdm); without it, importing it fails in one line naming
the extra.
"""

from recipe import extras

extras.require("the trainer (train/)", "train", extras.TRAIN)
