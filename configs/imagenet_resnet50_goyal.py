"""ImageNet, ResNet-50 at kn = 8192, as Goyal et al. 2017 §5.1 (Table 1, "gradual warmup").

lr 0.1 · 8192 / 256 = 3.2, gradual warmup over 5 epochs from 0.1, ÷10 at epochs 30, 60 and 80 of
90, Nesterov momentum 0.9, weight decay 1e-4 not on BN γ/β, γ = 0 in each block's last BN, BN
statistics per device over n = 32 examples (256 devices × 32; on fewer devices, `bn.scope=ghost`
with `bn.ghost_batch_size=32` keeps n = 32). Label smoothing 0.1 (Szegedy et al.) is the one
addition to §5.1; set `--config.label_smoothing=0` for the paper's exact loss.

Needs imagenet2012 prepared as array_record from the manual download (see recipe.data):
    python -c "from recipe.data import prepare_dataset
    prepare_dataset('imagenet2012', manual_dir='/path/to/imagenet/tars')"
"""

import ml_collections

from train import schema


def get_config() -> ml_collections.ConfigDict:
    config = schema.base_config()
    config.dataset = "imagenet2012"
    config.image_size = 224
    config.model = "resnet50"
    config.num_filters = 64
    config.dtype = "bfloat16"
    config.bn.scope = "ghost"  # n = 32 per BN batch whatever the per-device batch (§2.3)
    config.bn.ghost_batch_size = 32
    config.batch_size = 8192
    config.eval_batch_size = 1024
    config.num_epochs = 90
    config.label_smoothing = 0.1
    config.optimizer.base_lr = 0.1
    config.optimizer.base_batch_size = 256
    config.optimizer.warmup = "gradual"
    config.optimizer.warmup_epochs = 5
    config.optimizer.decay = "step"
    config.optimizer.decay_epochs = (30, 60, 80)
    config.optimizer.decay_factor = 0.1
    config.optimizer.weight_decay = 1e-4
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.log_every_steps = 50
    config.sync_every_steps = 50
    config.checkpoint_every_steps = 1000
    return config
