"""Command line: `python -m recipe.train --config recipe/configs/default.py --workdir runs/default`.

Any config field can be overridden: `--config.batch_size=512 --config.optimizer.warmup=constant`.
Exit status: 0 done; 2 bad input (config field, work dir, dataset not prepared, or a work dir
holding another config's checkpoints); 3 non-finite loss (the last good checkpoint is kept);
75 preempted by SIGTERM after writing a checkpoint (run the same command again to resume).

`--describe` prints the resolved recipe (scaled lr, warmup and decay boundaries in updates,
per-device batch, BN scope, which parameters get weight decay) and saves the learning-rate
schedule to `<workdir>/lr_schedule.png`, without training.
"""

import pathlib
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from recipe.train import checkpoints, preemption, trainer

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3

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
    try:
        result = trainer.train_and_evaluate(config, str(workdir))
    except (trainer.ConfigError, checkpoints.IncompatibleCheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except trainer.NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_NONFINITE)
    except preemption.Preempted as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(preemption.EXIT_PREEMPTED)
    if jax.process_index() == 0:
        summary = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "accuracy")
        print(f"final test accuracy: {100 * result['accuracy']:.2f}% ({summary})")
        print(f"metrics: {workdir / 'metrics.jsonl'}  plots: {workdir / 'curves.png'}")


def run() -> None:
    """The `recipe-train` console script."""
    app.run(main)


if __name__ == "__main__":
    run()
