"""The embedded default: 5,000 MNIST digits shipped inside the package, a small CIFAR-style ResNet.

Runs offline on 2 CPU cores in a few minutes with the full recipe: linear scaling rule, gradual
warmup, step decay, Nesterov momentum, weight decay off BatchNorm, zero-γ init, per-device
BatchNorm statistics and label smoothing. Every field, its default and its rule:
`train/schema.py`; this file sets the demo's data, model, batch and schedule.

    python -m train --config configs/default.py --workdir runs/default
    python -m train --config configs/default.py --config.batch_size=512 \
        --workdir runs/bs512
"""

import ml_collections

from train import schema


def get_config() -> ml_collections.ConfigDict:
    config = schema.base_config()
    config.dataset = "mnist5k"
    config.model = "resnet20"
    config.num_filters = 8
    config.bn.precise_batches = 8
    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_epochs = 15
    config.label_smoothing = 0.1
    config.optimizer.base_lr = 0.1
    config.optimizer.base_batch_size = 32  # n = 32 per worker in the paper; k = 4 here
    config.optimizer.warmup_epochs = 2.0
    return config
