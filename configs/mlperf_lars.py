"""The MLPerf ResNet-50 LARS recipe by global batch, behind `imagenet_resnet50_lars.py:<batch>`.

Source: mlcommons/training_results_v0.7, Google/benchmarks/resnet/implementations/
resnet-research-JAX-tpu-v3-8192/train.py (Google's JAX submission, MLPerf Training v0.7;
`polynomial_learning_rate_fn` and `main`). By global batch:

| global batch | peak lr | warmup epochs | epochs | momentum | weight decay |
|---|---|---|---|---|---|
| < 16k | 10 | 5 | 56 | 0.9 | 2e-4 |
| 16k – 32k | 25 | 5 | 56 | 0.9 | 2e-4 |
| 32k – 64k | 29 | 18 | 64 | 0.929 | 1e-4 |
| ≥ 64k | 23.0810 | 33 | 92 | 0.9537 | 1e-4 |

and for every regime: LARS (trust coefficient 0.001, ε 0) on the weights, plain momentum on
BN γ/β and all biases (`filter_weights`: no 'bias', no 'scale'), neither decayed; linear warmup,
then polynomial decay of power 2 to 1e-4; label smoothing 0.1; ResNet-50 v1.5 with γ = 0 in each
block's last BN, BN momentum 0.9; bfloat16. The run stops when top-1 reaches 75.9% (MLPerf's
target), usually before the schedule ends.

Where this recipe differs from the reference, and why:

* Warmup from η = peak · 256 / batch instead of 0: the reference's first update has learning
  rate 0 (a wasted step; every warmup here starts at η). The peak and the rest of the schedule
  are the reference's; the warmup differs by at most η (≤ 3% of the peak, at 8k).
* The decay spans the updates after warmup; the reference's spans one more (train − warmup + 1),
  so it never quite reaches its end value. The difference is below 2 · peak / decay steps.
* An epoch is a whole number of updates here (each epoch's last partial batch is left out); the
  reference counts fractional epochs (1,281,167 / batch updates). At 64k that is 19 updates per
  epoch instead of 19.55, so warmup and run are 3% shorter in updates (under 0.3% below 64k).
* LARS is `optax.lars`: its trust ratio is c · ‖w‖ / ‖g + λw‖, the reference's (Flax's old
  `optim.LARS`, You et al.) c · ‖w‖ / (‖g‖ + λ‖w‖), smaller by ‖g + λw‖ / (‖g‖ + λ‖w‖) (down to
  1/√2 when g ⊥ w and ‖g‖ = λ‖w‖; 1 when the decay is negligible); and its
  excluded leaves get heavy-ball momentum (v ← m·v + η·g), the reference's `optim.Momentum`
  the u ← m·u + g, w ← w − η·u form (they differ only while η changes, over ~1/(1 − m) steps).
* BatchNorm: the reference shares statistics over max(64, per-device batch) examples
  (`batchnorm_span`, groups of consecutive replicas). Here the per-device scope is the default;
  where the per-device batch is below 64, set `bn.scope='group'` and `bn.group_size` = 64 / the
  per-device batch (Ying et al. 2018).
* The reference scales nothing inside a regime (batch 4096 and 8192 both use peak 10); here
  the peak is pinned at the regime's batch through the linear scaling rule, so overriding
  `batch_size` alone scales it linearly: pick the config of the regime instead.
"""

import ml_collections

from train import schema

# Regime batch: (peak lr, warmup epochs, epochs, momentum, weight decay), the table above.
REGIMES: dict[int, tuple[float, int, int, float, float]] = {
    8192: (10.0, 5, 56, 0.9, 2e-4),
    16384: (25.0, 5, 56, 0.9, 2e-4),
    32768: (29.0, 18, 64, 0.929, 1e-4),
    65536: (23.080977304670448, 33, 92, 0.9537213777059405, 1e-4),
}


def get_config(batch_size: int) -> ml_collections.ConfigDict:
    """The recipe of the regime whose batch is `batch_size` (one of `REGIMES`)."""
    peak_lr, warmup_epochs, epochs, momentum, weight_decay = REGIMES[batch_size]
    config = schema.base_config()
    config.dataset = "imagenet2012"
    config.image_size = 224
    config.model = "resnet50"
    config.num_filters = 64
    config.dtype = "bfloat16"
    config.zero_init_last_bn = True
    config.bn.scope = "device"  # see the docstring for BN over 64 examples on small shards
    config.bn.momentum = 0.9
    config.batch_size = batch_size
    config.eval_batch_size = 1024
    config.num_epochs = epochs
    config.label_smoothing = 0.1
    config.optimizer.name = "lars"
    config.optimizer.trust_coefficient = 0.001
    config.optimizer.base_batch_size = 256
    config.optimizer.base_lr = peak_lr * 256 / batch_size  # peak_lr at batch_size
    config.optimizer.warmup = "gradual"
    config.optimizer.warmup_epochs = warmup_epochs
    config.optimizer.decay = "poly"
    config.optimizer.poly_power = 2.0
    config.optimizer.poly_end_lr = 1e-4
    config.optimizer.weight_decay = weight_decay
    config.optimizer.decay_bias = False  # LARS and decay on weights only: not BN, not biases
    config.optimizer.momentum = momentum
    config.optimizer.nesterov = False
    config.log_every_steps = 50
    config.sync_every_steps = 50
    config.checkpoint_every_steps = 1000
    return config
