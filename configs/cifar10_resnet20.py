"""CIFAR-10, ResNet-20 (He et al. 2016 §4.2) with the Goyal recipe at batch 1024 (k = 8 × 128).

Needs CIFAR-10 prepared as array_record (downloads once):
    python -c "from recipe.data import prepare_dataset; prepare_dataset('cifar10')"
    python -m train --config configs/cifar10_resnet20.py \
        --workdir runs/cifar10_resnet20
"""

import ml_collections

from train import schema


def get_config() -> ml_collections.ConfigDict:
    config = schema.base_config()
    config.dataset = "cifar10"
    config.model = "resnet20"
    config.num_filters = 16
    config.batch_size = 1024
    config.eval_batch_size = 1000
    config.num_epochs = 182  # He et al.: 64k iterations at batch 128 ≈ 182 epochs
    config.label_smoothing = 0.1
    config.optimizer.base_lr = 0.1
    config.optimizer.base_batch_size = 128  # He et al.'s η = 0.1 at 128 → 0.8 at 1024
    config.optimizer.warmup = "gradual"
    config.optimizer.warmup_epochs = 5
    config.optimizer.decay = "step"
    config.optimizer.decay_epochs = (91, 136)  # He et al.'s 32k and 48k iterations
    config.optimizer.weight_decay = 1e-4
    config.log_every_steps = 20
    config.checkpoint_every_steps = 500
    return config
