"""ImageNet, ResNet-50 with LARS at a global batch of 8k, 16k, 32k or 64k: the MLPerf recipe.

The batch is the config's argument; the table, its source and where this follows it less than
exactly: `configs/mlperf_lars.py`. Needs imagenet2012 prepared (see
`imagenet_resnet50_goyal.py`).

    python -m train --config configs/imagenet_resnet50_lars.py:32k --describe \
        --workdir runs/lars_32k
"""

import ml_collections

from configs import mlperf_lars

BATCHES = {"8k": 8192, "16k": 16384, "32k": 32768, "64k": 65536}


def get_config(batch: str) -> ml_collections.ConfigDict:
    """The MLPerf LARS recipe at `batch`: one of '8k', '16k', '32k', '64k'."""
    if batch not in BATCHES:
        raise ValueError(f"the batch must be one of {', '.join(BATCHES)}, got {batch!r}")
    return mlperf_lars.get_config(BATCHES[batch])
