"""The trainer: `python -m train --config configs/default.py --workdir runs/default`, run from a
checkout (`train.loop.train_and_evaluate`). A finished run's model and weights load with the
library alone: `recipe.load_run(workdir)`."""
