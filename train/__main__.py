"""Command line: `python -m train --config configs/default.py --workdir runs/default`.

Any config field can be overridden: `--config.batch_size=512 --config.optimizer.warmup=constant`.
`--describe` prints the resolved recipe (scaled lr, warmup and decay boundaries in updates,
per-device batch, BN scope, which parameters get weight decay) and saves the learning-rate
schedule to `<workdir>/lr_schedule.png`, without training.
"""

import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
_DESCRIBE = flags.DEFINE_bool("describe", False, "Print the resolved recipe and exit.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and jax are chatty at INFO
    config, workdir = _CONFIG.value, pathlib.Path(_WORKDIR.value)
    if _DESCRIBE.value:
        print(trainer.describe(config, workdir))
        return
    result = trainer.train_and_evaluate(config, str(workdir))
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "accuracy")
    print(f"final test accuracy: {100 * result['accuracy']:.2f}% ({summary})")
    print(f"metrics: {workdir / 'metrics.jsonl'}  plots: {workdir / 'curves.png'}")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
