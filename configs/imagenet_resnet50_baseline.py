"""ImageNet, ResNet-50 at the kn = 256 baseline of Goyal et al. 2017 (Table 1, first row).

Same recipe as `imagenet_resnet50_goyal.py` at k = 8 workers × 32: lr 0.1, no warmup needed
(k η = η), ÷10 at epochs 30, 60, 80 of 90.
"""

import ml_collections

from configs import imagenet_resnet50_goyal


def get_config() -> ml_collections.ConfigDict:
    config = imagenet_resnet50_goyal.get_config()
    config.batch_size = 256
    config.eval_batch_size = 256
    config.optimizer.warmup = "none"
    return config
