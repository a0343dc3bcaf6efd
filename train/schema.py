"""The config schema: every field of a run's config, its default and its rule.

Every config file is built from `base_config()` and changes what differs (`configs/default.py`
is the MNIST demo: the base and the demo's data, model and batch). `FIELD_RULES` gives each
field's own range as a `recipe.checks` rule, told the field's dotted name; the rules between
fields live in `train.resolve`, which checks a config against both before anything is built.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import ml_collections

from recipe import checks, models, optim, schedules, sharpness
from recipe.data import datasets, pipeline
from train import runners

BN_SCOPES = ("device", "global", "group", "ghost")
DTYPES = ("float32", "bfloat16")
FLAX_APIS = ("linen", "nnx")
# Where the warmup starts (`optimizer.warmup_start`): η = base_lr, or the stability edge.
WARMUP_STARTS = ("base_lr", "stability_edge")
ON_NONFINITE = ("stop", "skip")
MAX_SEED = 2**32 - 1


# Just inside and just outside an end of a range, for the boundary values.
_EPSILON = 1e-6


@dataclasses.dataclass(frozen=True)
class Rule:
    """A config field's own range: `check(name, value)`, the library's rule (`recipe.checks`)
    told the field's dotted name, and the values at the range's edges with whether each is in
    it (each end, just inside, just outside; tests/test_field_boundaries.py runs them all)."""

    check: Callable[[str, Any], Any]
    boundaries: tuple[tuple[Any, bool], ...] = ()

    def __call__(self, name: str, value: Any) -> Any:
        return self.check(name, value)


def _optional(rule: Rule) -> Rule:
    return Rule(
        lambda name, value: None if value is None else rule(name, value),
        ((None, True), *rule.boundaries),
    )


def _choice(allowed: tuple[Any, ...]) -> Rule:
    return Rule(
        functools.partial(_check_choice, allowed=allowed),
        (*((value, True) for value in allowed), ("none-of-these", False)),
    )


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    return checks.check_choice(name, value, allowed)


_BOOL = Rule(checks.check_bool, ((False, True), (True, True), ("yes", False)))
_STRING = Rule(checks.check_string)
# Integers > 0 or >= 0: the lower end, just inside it (the next integer) and just outside; no
# upper end.
_POSITIVE_INT = Rule(checks.check_positive_int, ((1, True), (2, True), (0, False)))
_NON_NEGATIVE_INT = Rule(checks.check_non_negative_int, ((0, True), (1, True), (-1, False)))
# Finite numbers > 0 or >= 0: the lower end, just inside and outside it, and infinity.
_POSITIVE = Rule(
    checks.check_positive,
    ((0.0, False), (_EPSILON, True), (-_EPSILON, False), (math.inf, False)),
)
_NON_NEGATIVE = Rule(
    checks.check_non_negative,
    ((0.0, True), (_EPSILON, True), (-_EPSILON, False), (math.inf, False)),
)


def _interval(
    low: float, high: float, *, low_closed: bool = True, high_closed: bool = True
) -> Rule:
    """A number in the interval, by `recipe.checks.check_interval`."""
    return Rule(
        functools.partial(
            checks.check_interval,
            low=low,
            high=high,
            low_closed=low_closed,
            high_closed=high_closed,
        ),
        (
            (low, low_closed),
            (low + _EPSILON, True),
            (low - _EPSILON, False),
            (high, high_closed),
            (high - _EPSILON, True),
            (high + _EPSILON, False),
            (math.nan, False),
        ),
    )


_UNIT = _interval(0.0, 1.0)
# A momentum or decay: in [0, 1).
_MOMENTUM = _interval(0.0, 1.0, high_closed=False)


def _check_seed(name: str, value: Any) -> int:
    seed = checks.check_non_negative_int(name, value)
    if seed > MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, 2^32), got {value!r}")
    return seed


def _check_stage_sizes(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not value:
        raise ValueError(f"{name} must be a non-empty tuple of block counts, got {value!r}")
    return tuple(checks.check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def _check_channel_values(name: str, value: Any, low_closed: bool) -> tuple[float, ...]:
    """A non-empty tuple of per-channel values in [0, 1] (std: (0, 1])."""
    if not isinstance(value, tuple | list) or not value:
        raise ValueError(f"{name} must be a non-empty tuple of per-channel values, got {value!r}")
    return tuple(
        checks.check_interval(f"{name}[{i}]", v, 0.0, 1.0, low_closed=low_closed)
        for i, v in enumerate(value)
    )


def _channel_values(*, low_closed: bool) -> Rule:
    """Per-channel values in [0, 1] (`low_closed`) or (0, 1]."""
    low_inside, low_outside = (0.0, -_EPSILON) if low_closed else (_EPSILON, 0.0)
    return Rule(
        functools.partial(_check_channel_values, low_closed=low_closed),
        (
            ((low_inside,), True),
            ((1.0,), True),
            ((low_outside,), False),
            ((1.0 + _EPSILON,), False),
            ((), False),
        ),
    )


# The range of every config field on its own (the rules between fields: `train.resolve`).
# tests/test_bad_input.py checks that every field of the configs has a rule here.
FIELD_RULES: dict[str, Rule] = {
    # A name of datasets.DATASET_NAMES, a prepared TFDS dataset or folder:PATH: which, and
    # whether it can be read, `train.resolve` finds out from the data dir or the folder.
    "dataset": Rule(checks.check_string, (("mnist5k", True), ("", False))),
    "data_dir": _optional(_STRING),
    "augment": _BOOL,
    "augmentation_family": _optional(_choice(datasets.FAMILIES)),
    "image_size": _optional(_POSITIVE_INT),
    "image_mean": _optional(_channel_values(low_closed=True)),
    "image_std": _optional(_channel_values(low_closed=False)),
    "train_examples": _optional(_POSITIVE_INT),
    "allow_unbalanced_subset": _BOOL,
    "unreadable_images": _choice(pipeline.UNREADABLE_CHOICES),
    "data_in_memory": _BOOL,
    "data_workers": _optional(_NON_NEGATIVE_INT),
    "device_prefetch": _POSITIVE_INT,
    "model": _choice(models.MODEL_NAMES),
    "flax_api": _choice(FLAX_APIS),
    "num_filters": _POSITIVE_INT,
    "stage_sizes": _optional(
        Rule(_check_stage_sizes, (((1,), True), ((1, 2), True), ((0,), False), ((), False)))
    ),
    "zero_init_last_bn": _BOOL,
    "dtype": _choice(DTYPES),
    "bn.scope": _choice(BN_SCOPES),
    "bn.ghost_batch_size": _POSITIVE_INT,
    "bn.group_size": _POSITIVE_INT,
    # [0, 1): precise BN recovers the batch statistic from the running average's (1 − m) share
    # (recipe.precise_bn), and with m = 1 the running averages would never move.
    "bn.momentum": _MOMENTUM,
    "bn.precise_batches": _NON_NEGATIVE_INT,
    "batch_size": _POSITIVE_INT,
    "accumulation_steps": _POSITIVE_INT,
    "eval_batch_size": _POSITIVE_INT,
    "num_epochs": _POSITIVE_INT,
    "label_smoothing": _UNIT,
    "mixing.mixup_alpha": _NON_NEGATIVE,
    "mixing.cutmix_alpha": _NON_NEGATIVE,
    "mixing.switch_prob": _UNIT,
    "mixing.prob": _UNIT,
    "mixing.per_device": _BOOL,
    "mixing.stop_epoch": _optional(_NON_NEGATIVE_INT),
    "ema.decay": _MOMENTUM,
    "ema.warmup": _BOOL,
    "optimizer.name": _choice(optim.OPTIMIZER_NAMES),
    "optimizer.trust_coefficient": _POSITIVE,
    "optimizer.beta2": _MOMENTUM,
    "optimizer.base_lr": _POSITIVE,
    "optimizer.base_batch_size": _POSITIVE_INT,
    "optimizer.warmup": _choice(schedules.WARMUP_KINDS),
    "optimizer.warmup_epochs": _NON_NEGATIVE,
    "optimizer.warmup_start": _choice(WARMUP_STARTS),
    "optimizer.decay": _choice(schedules.DECAY_KINDS),
    "optimizer.decay_epochs": _optional(Rule(checks.check_increasing)),
    "optimizer.decay_factor": _interval(0.0, 1.0, low_closed=False),
    "optimizer.poly_power": _POSITIVE,
    "optimizer.poly_end_lr": _NON_NEGATIVE,
    "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.decay_bias": _BOOL,
    "optimizer.momentum": _MOMENTUM,
    "optimizer.nesterov": _BOOL,
    "noise_scale.enabled": _BOOL,
    "noise_scale.decay": _MOMENTUM,
    "relative_update.enabled": _BOOL,
    "sharpness.every_steps": _NON_NEGATIVE_INT,
    "sharpness.iterations": _POSITIVE_INT,
    "sharpness.method": _choice(sharpness.METHODS),
    "sharpness.unroll": _BOOL,
    "runner": _choice(tuple(runners.RUNNERS)),
    "shard_params": _BOOL,
    "distributed.enabled": _BOOL,
    "distributed.coordinator_address": _optional(_STRING),
    "distributed.num_processes": _optional(_POSITIVE_INT),
    "distributed.process_id": _optional(_NON_NEGATIVE_INT),
    "distributed.heartbeat_timeout_seconds": _POSITIVE_INT,
    "seed": Rule(
        _check_seed, ((0, True), (1, True), (-1, False), (MAX_SEED, True), (MAX_SEED + 1, False))
    ),
    "log_every_steps": _POSITIVE_INT,
    "sync_every_steps": _POSITIVE_INT,
    "eval_every_epochs": _POSITIVE_INT,
    "checkpoint_every_steps": _POSITIVE_INT,
    "keep_checkpoints": _POSITIVE_INT,
    "on_nonfinite": _choice(ON_NONFINITE),
    "progress_bar": _BOOL,
    "plot_curves": _BOOL,
}


def base_config() -> ml_collections.ConfigDict:
    """Every field with its default: the Goyal et al. recipe (linear scaling rule, gradual
    warmup, step decay, Nesterov momentum, no weight decay on BatchNorm, zero-γ init,
    per-device BatchNorm) with label smoothing, on the demo's small dataset and model until a
    config sets its own.

    >>> config = base_config()
    >>> config.optimizer.name, config.optimizer.base_lr, config.bn.scope
    ('sgd', 0.1, 'device')
    """
    config = ml_collections.ConfigDict()

    # Data: the dataset, and where a TFDS one is prepared. One of recipe.data.DATASET_NAMES; any
    # TFDS image-classification dataset prepared in data_dir, by its TFDS name ("cifar100",
    # "food101", "imagenette/320px-v2"), its classes, splits and image shape read from its
    # metadata and its per-channel mean and std computed once from its training images; or an
    # image folder, "folder:PATH" (PATH/train/<class>/*.jpg|png and PATH/val/<class>/...), read
    # as it is through the ImageNet-style crop path (recipe.data.folder).
    config.dataset = "mnist5k"
    config.data_dir = ml_collections.config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/...
    config.augment = True
    # "small" (pad, random crop, flip: CIFAR's) or "imagenet" (Inception-style random-resized
    # crop, flip); None: the dataset's own (a TFDS dataset's by its image size: one size of at
    # most 64 px a side is "small"; image folders are "imagenet").
    config.augmentation_family = ml_collections.config_dict.placeholder(str)
    config.image_size = ml_collections.config_dict.placeholder(int)  # None: the dataset's size
    # The inputs' per-channel normalisation (x/255 − mean) / std, in 0–1 units, e.g. (0.5, 0.5,
    # 0.5); None: the dataset's own (published, or computed from its training images; image
    # folders: ImageNet's). Set both or neither.
    config.image_mean = ml_collections.config_dict.placeholder(tuple)
    config.image_std = ml_collections.config_dict.placeholder(tuple)
    # Train on N examples of the training split (None: all of it), drawn per class with a fixed
    # seed in proportion to each class's share of the split (recipe.data.class_balanced_subset;
    # the same N for every run seed); epochs, the schedule and the steps count these N. For
    # quicker studies (bench/reproduce_fashion.py). A subset that leaves out a class, or is far
    # from the split's class balance (too few examples for the classes), stops the run unless
    # allow_unbalanced_subset.
    config.train_examples = ml_collections.config_dict.placeholder(int)
    config.allow_unbalanced_subset = False
    # An image that does not decode (a truncated or corrupt file, not an image; image folders
    # and JPEG datasets): "stop" the run naming it (exit 65), or "skip" it (its place in the
    # batch taken by a readable one, evaluation without it), each named once in the log and
    # counted in the metrics and the final line.
    config.unreadable_images = "stop"
    # Hold both splits decoded in memory (recipe.data.InMemorySource; 'small' datasets only):
    # for fashion_mnist and cifar10, stored as PNG, decoding is otherwise most of an epoch's input
    # cost (about 1 ms per image on one core, more than a small model's step).
    config.data_in_memory = False
    # Input pipeline (recipe.data.train_batches). Worker processes decoding batches; None: one per
    # core this process may use (recipe.data.default_worker_count) for JPEG ('imagenet' family)
    # datasets, and for the small in-memory ones 0 (one background thread, which already outruns
    # the step 14×, BENCHMARKS.md §3). Batches cross to the devices as uint8 and are normalised in
    # the jitted step; `device_prefetch` of them are placed on the devices ahead of their step.
    config.data_workers = ml_collections.config_dict.placeholder(int)
    config.device_prefetch = 2

    # Model (recipe.models.create_model): the architecture and its BatchNorm.
    config.model = "resnet20"
    # The Flax API the model is written in: "linen" (recipe.models) or "nnx" (recipe.nnx, the
    # same architecture, init, BN scopes and parameter names as NNX modules, stepped through
    # nnx.split/nnx.merge). They lower to the same programs; the weights are drawn by each
    # API's own init, so the two start from different weights for the same seed.
    config.flax_api = "linen"
    config.num_filters = 8  # width of the first stage
    # Blocks per stage, replacing the model's own (its block type, stem and widths stay): e.g.
    # (1,) with resnet8 is one stage of one basic block, the smallest ResNet. None: the model's.
    config.stage_sizes = ml_collections.config_dict.placeholder(tuple)
    config.zero_init_last_bn = True  # Goyal §5.1: γ = 0 in the last BN of each residual block
    config.dtype = "float32"  # or "bfloat16"
    config.bn = ml_collections.ConfigDict()
    # "device" (Goyal §2.3), "global" (cross-device), "group" (over groups of devices, Ying et
    # al. 2018) or "ghost" (groups of examples within a device).
    config.bn.scope = "device"
    config.bn.ghost_batch_size = 32  # n of "ghost": statistics over groups of n per device
    config.bn.group_size = 2  # g of "group": consecutive devices sharing statistics; divides them
    config.bn.momentum = 0.9
    # Precise BN (Wu & Johnson 2021): before each evaluation (and so in the checkpoint of the
    # last step), recompute the BN statistics with the current weights over this many training
    # batches (the stream's next ones, without augmentation); 0 evaluates the running averages.
    config.bn.precise_batches = 8

    # Batch: the global batch kn over all devices and hosts, per optimizer micro-step.
    config.batch_size = 128
    config.accumulation_steps = 1  # micro-batches per optimizer update
    config.eval_batch_size = 500
    config.num_epochs = 15
    config.label_smoothing = 0.1

    # Mixup (Zhang et al. 2018) / CutMix (Yun et al. 2019), as timm's `Mixup`: an α of 0 turns
    # each off; with both on, CutMix with probability switch_prob. Label smoothing is applied once,
    # to the mixed targets. λ and the box come from (seed, step): one draw per global batch, or
    # per device with per_device. Mixing stops from stop_epoch on (None: never).
    config.mixing = ml_collections.ConfigDict()
    config.mixing.mixup_alpha = 0.0
    config.mixing.cutmix_alpha = 0.0
    config.mixing.switch_prob = 0.5
    config.mixing.prob = 1.0  # probability of mixing a batch at all
    config.mixing.per_device = False
    config.mixing.stop_epoch = ml_collections.config_dict.placeholder(int)

    # Weight EMA (timm's ModelEmaV3): the target decay of an average of the weights kept in the
    # optimizer state and evaluated beside them with its own precise BN statistics; 0 keeps none.
    # warmup: timm's decay warmup, 1 − n^(−2/3) after the n-th update, until it reaches decay.
    config.ema = ml_collections.ConfigDict()
    config.ema.decay = 0.0
    config.ema.warmup = True

    # Optimizer and schedule (recipe.optim.build_optimizer). lr = base_lr · batch / base_batch.
    config.optimizer = ml_collections.ConfigDict()
    # "sgd" (Goyal §5.1), or past 8k "lars" (You et al. 2017; the MLPerf ResNet-50 recipe, see
    # configs/mlperf_lars.py) or "lamb" (You et al. 2019; `momentum` is its b1).
    config.optimizer.name = "sgd"
    config.optimizer.trust_coefficient = 0.001  # LARS's c: layer lr = η · c · ‖w‖ / ‖g + λw‖
    config.optimizer.beta2 = 0.999  # LAMB's second-moment decay
    config.optimizer.base_lr = 0.1
    config.optimizer.base_batch_size = 32  # n = 32 per worker in the paper; k = 4 here
    config.optimizer.warmup = "gradual"  # "gradual", "constant" or "none"
    config.optimizer.warmup_epochs = 2.0
    # Where the warmup starts: "base_lr" (η, Goyal's) or "stability_edge" (Kalra & Barkeshli
    # 2024): min(threshold / λ₀, kη), λ₀ the loss's sharpness at initialisation, measured on the
    # first batch before the first step (sharpness.iterations products of sharpness.method;
    # recipe.stability_edge_learning_rate), stored in the work dir so a resume starts the same.
    config.optimizer.warmup_start = "base_lr"
    config.optimizer.decay = "step"  # "step", "cosine", "linear", "poly" or "constant"
    # Step-decay milestones in epochs; None places Goyal's 30, 60, 80 of 90 on this run's
    # num_epochs (recipe.schedules.paper_decay_epochs), so --config.num_epochs=N keeps the shape.
    config.optimizer.decay_epochs = ml_collections.config_dict.placeholder(tuple)
    config.optimizer.decay_factor = 0.1
    config.optimizer.poly_power = 2.0  # "poly": lr = end + (peak − end) · (1 − s/S)^power
    config.optimizer.poly_end_lr = 0.0  # "poly": the lr at the end (MLPerf: 1e-4)
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decay_bias = True
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True

    # The gradient noise scale B_simple ≈ the critical batch (McCandlish et al. 2018, App. A),
    # logged as train/noise_scale: each device's gradient against the global one (one scalar
    # all-reduce), or on one device the two halves of the batch (a second backward pass).
    config.noise_scale = ml_collections.ConfigDict()
    config.noise_scale.enabled = False
    config.noise_scale.decay = 0.99  # EMA of |G|² and tr(Σ) (separately) over ~100 steps

    # The relative update size ‖Δw‖/‖w‖ of each top-level parameter group (a layer or block;
    # recipe.relative_update_size): how far one step moves the weights, the reason Goyal §2.2
    # gives for warmup. Logged at every step as train/relative_update/<group> and the largest
    # as train/relative_update_max (the mean over the logged steps that updated the weights).
    config.relative_update = ml_collections.ConfigDict()
    config.relative_update.enabled = False

    # The loss's sharpness λ_max (recipe.sharpness; Cohen et al. 2021, Kalra & Barkeshli 2024):
    # every N steps (0: never), the Hessian's top eigenvalue on a fixed training batch, logged
    # with η·λ_max against the optimizer's stability threshold (kind 'sharpness'). Each
    # measurement costs `iterations` Hessian-vector products (≈ 2 gradients), logged with the
    # residual ‖Hv − λv‖/|λ| of its estimate. method: "lanczos" (the Lanczos iteration: from the
    # same products a far smaller residual than power iteration's few percent, BENCHMARKS.md
    # §10, when the top eigenvalues lie close together; it holds `iterations` + 1 vectors the
    # size of the parameters) or "power" (power iteration: two such vectors). unroll: the
    # products unrolled into one program rather than a loop: on XLA:CPU a measurement about 8×
    # faster for a compile about 4× longer (§10: 2.0 s against 15.7 s, a first call of 156 s
    # against 42 s for 20 products of a ResNet-8), which a run measuring more than ~10 times
    # repays; on an accelerator the loop is not slow and unrolling only lengthens the compile.
    config.sharpness = ml_collections.ConfigDict()
    config.sharpness.every_steps = 0
    config.sharpness.iterations = 20
    config.sharpness.method = "lanczos"
    config.sharpness.unroll = False

    # Parallelism: "pmap" (what the notebooks use), "shard_map" (the same per-device step in jit
    # over a 1-D mesh; a 2-D one, groups × devices in a group, for bn.scope="group") or "jit"
    # (the step on the global batch, explicitly sharded over the mesh; BN's per-worker
    # statistics over groups of that batch).
    config.runner = "pmap"
    # With runner="jit": split the parameters and the optimizer state over the devices
    # (FSDP/ZeRO), for a model or a LARS/LAMB state too large for one device's memory.
    config.shard_params = False
    # Multi-host (jax.distributed); all None = a single process, unless the environment
    # (Cloud TPU, SLURM) describes the cluster and `distributed.enabled` is True.
    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)
    config.distributed.num_processes = ml_collections.config_dict.placeholder(int)
    config.distributed.process_id = ml_collections.config_dict.placeholder(int)
    # A process whose heartbeat stops for this long counts as dead, and JAX's coordination
    # service then ends the others (exit status 134; docs/trainer.md, "Several hosts"). JAX's
    # default; larger rides out longer network stalls, smaller frees a pod sooner.
    config.distributed.heartbeat_timeout_seconds = 100

    # Bookkeeping.
    config.seed = 0
    config.log_every_steps = 10
    # Wait for the devices at least this often: XLA:CPU collectives can deadlock when many steps
    # with collectives are queued without a wait; 8 is safe and cheap.
    config.sync_every_steps = 8
    config.eval_every_epochs = 1
    config.checkpoint_every_steps = 100
    config.keep_checkpoints = 3
    # A non-finite loss, update or BN statistic: "stop" (keep the last good checkpoint), or "skip"
    # the update (counted in the log; more than half of an epoch's skipped stops the run).
    config.on_nonfinite = "stop"
    config.progress_bar = True
    # curves.png, the run's training and evaluation curves, drawn at its end (matplotlib: about
    # a CPU-second in a fresh process); False leaves metrics.jsonl and TensorBoard's events.
    config.plot_curves = True
    return config
