"""ImageNet, ResNet-50 with LARS at a global batch of 16384: the MLPerf recipe's regime 16k to 32k.

The table, its source (mlcommons/training_results_v0.7, Google's JAX ResNet-50 submission) and
where this follows it less than exactly: `configs/mlperf_lars.py`. Needs imagenet2012
prepared (see `imagenet_resnet50_goyal.py`).

    python -m train --config configs/imagenet_resnet50_lars_16k.py --describe \
        --workdir runs/lars_16k
"""

import ml_collections

from configs import mlperf_lars


def get_config() -> ml_collections.ConfigDict:
    return mlperf_lars.get_config(16384)
