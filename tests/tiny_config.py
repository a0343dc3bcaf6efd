"""The default recipe on a tiny model and large batches: 4 steps per epoch, 12 in all.

Loaded in-process by the tests and by the command line in subprocesses
(`python -m train --config tests/tiny_config.py`), so both run the same config.
"""

import ml_collections

from configs import default

TOTAL_STEPS = 12  # 3 epochs of 4,000 / 1,000


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = "resnet8"
    # One stage of one basic block: the smallest ResNet, whose steps compile in about half the
    # time of resnet8's three stages (most of a tiny run's time is compiling its programs).
    config.stage_sizes = (1,)
    config.num_filters = 4
    config.image_size = 14
    config.batch_size = 1000
    config.eval_batch_size = 1000
    config.num_epochs = 3
    config.bn.precise_batches = 1  # 1,000 examples: precise BN without a large cost per run
    config.optimizer.warmup_epochs = 1
    config.optimizer.decay_epochs = (2,)
    config.log_every_steps = 2
    config.checkpoint_every_steps = 4
    config.keep_checkpoints = 5
    config.progress_bar = False
    # No curves.png: most tests never look at it, and drawing it was about a CPU-second of each
    # trainer subprocess (half a second in a process that drew one before). The runs that check
    # the plot set it back (conftest.finished_run, the sharpness run).
    config.plot_curves = False
    # mnist5k's images decoded once per process, not on every read: the same examples, and a
    # test process runs many trainer runs on them (configs/default.py, as bench/device.py's
    # smoke runs it, still reads them through TFDS every time).
    config.data_in_memory = True
    return config


def make_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """`get_config()` reading data from `data_dir`, with flattened overrides applied."""
    config = get_config()
    config.data_dir = data_dir
    config.update_from_flattened_dict(overrides)
    return config
