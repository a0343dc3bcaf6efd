"""recipe: Goyal et al. 2017 large-minibatch SGD plus label smoothing, for JAX/Flax.

The library a Flax project imports: learning-rate schedules (linear scaling rule, gradual and
constant warmup), the label-smoothed loss, the BatchNorm-free weight-decay mask, the Goyal
initialisers, ResNets and the optimizer builder; past Goyal's 8k, LARS and LAMB behind the same
builder, BatchNorm over groups of devices, the gradient noise scale (`recipe.noise_scale`) and
the loss's sharpness against the optimizer's stability threshold (`recipe.sharpness`);
and what modern ResNet recipes add: precise BatchNorm statistics, a weight EMA, Mixup/CutMix.
`import recipe` needs the core install alone (jax, flax, optax, numpy, ml_collections) and
imports nothing else. Datasets and the input pipeline live in `recipe.data` (imported on
demand, with the `data` extra: TensorFlow Datasets, grain, the JPEG decoder); the ResNets, their
BatchNorm and the extras in Flax NNX in `recipe.nnx` (imported on demand: `import recipe` does
not load `flax.nnx`).
"""

from recipe.ema import ema_decay, ema_params, weight_ema
from recipe.inits import bn_scale_init, conv_kernel_init, fc_kernel_init
from recipe.losses import cross_entropy, l2_penalty, per_example_cross_entropy, smooth_labels
from recipe.masks import DecayReport, decay_report, weight_decay_mask
from recipe.mixing import mixing_key, mixup_cutmix
from recipe.models import MODEL_NAMES, BatchNorm, BNScope, ResNet, create_model, device_groups
from recipe.noise_scale import (
    NoiseScaleState,
    noise_scale_ema,
    simple_noise_scale,
    smoothed_estimates,
    unbiased_estimates,
)
from recipe.optim import (
    OPTIMIZER_NAMES,
    Optimizer,
    build_optimizer,
    current_learning_rate,
    goyal_sgd,
    lamb,
    lars,
    relative_update_size,
)
from recipe.precise_bn import precise_batch_stats, precise_bn_estimator
from recipe.saved_run import SavedRun, load_run
from recipe.schedules import (
    GoyalSchedule,
    constant,
    constant_warmup,
    cosine_decay,
    epochs_to_steps,
    goyal_schedule,
    gradual_warmup,
    polynomial_decay,
    scaled_learning_rate,
    step_decay,
    warmup_multiplier_schedule,
)
from recipe.sharpness import (
    Sharpness,
    fixed_batch_loss,
    hessian_vector_product,
    stability_edge_learning_rate,
    stability_threshold,
    top_hessian_eigenvalue,
)

__version__ = "0.1.0"

__all__ = [
    "MODEL_NAMES",
    "OPTIMIZER_NAMES",
    "BNScope",
    "BatchNorm",
    "DecayReport",
    "GoyalSchedule",
    "NoiseScaleState",
    "Optimizer",
    "ResNet",
    "SavedRun",
    "Sharpness",
    "bn_scale_init",
    "build_optimizer",
    "constant",
    "constant_warmup",
    "conv_kernel_init",
    "cosine_decay",
    "create_model",
    "cross_entropy",
    "current_learning_rate",
    "decay_report",
    "device_groups",
    "ema_decay",
    "ema_params",
    "epochs_to_steps",
    "fc_kernel_init",
    "fixed_batch_loss",
    "goyal_schedule",
    "goyal_sgd",
    "gradual_warmup",
    "hessian_vector_product",
    "l2_penalty",
    "lamb",
    "lars",
    "load_run",
    "mixing_key",
    "mixup_cutmix",
    "noise_scale_ema",
    "per_example_cross_entropy",
    "polynomial_decay",
    "precise_batch_stats",
    "precise_bn_estimator",
    "relative_update_size",
    "scaled_learning_rate",
    "stability_edge_learning_rate",
    "stability_threshold",
    "simple_noise_scale",
    "smooth_labels",
    "smoothed_estimates",
    "step_decay",
    "top_hessian_eigenvalue",
    "unbiased_estimates",
    "warmup_multiplier_schedule",
    "weight_decay_mask",
    "weight_ema",
]
