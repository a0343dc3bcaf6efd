"""One resolve step: a config checked field by field and turned into everything a run needs.

`resolve(config, device_count)` compiles nothing and writes nothing in the work dir (the model's
variables are shapes from `jax.eval_shape`), and reads of the data only its metadata: a TFDS
dataset's `dataset_info.json`, an image folder's listing (and, once per TFDS dataset it has no
entry for, the per-channel statistics of its training images, stored beside it:
`recipe.data.get_dataset_spec`). It runs first, before the work dir is created or the data
opened, so every bad input is one line (`ConfigError`): the dotted config field, its value, what
is allowed, and the command-line flag that fixes it. The rules that need the data's labels (a
`train_examples` subset's class balance, `check_subset`) run where the data is opened, still
before anything is compiled or written (`train.inputs.open_data`). Training, `--describe` and
`bench/` all go through it; what it returns (`Setup`) is computed once and passed down.

Each rule lives once. A field's own range is a `recipe.checks` rule in `schema.FIELD_RULES`
(the same functions the library checks its arguments with, told the dotted field name); a rule
between fields that the library owns (warmup shorter than the run, decay milestones after the
warmup, ...) is the library's own check (`recipe.schedules.check_*`), called here with the
config fields' names before the builders run.
"""

import dataclasses
import difflib
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from recipe import masks, models, noise_scale, optim, saved_run, schedules, sharpness
from recipe.data import datasets, folder, pipeline
from train import runners, schema, steps
from train.schema import FIELD_RULES


class ConfigError(ValueError):
    """A config field (or the work dir, or the dataset) is not usable: one line, no traceback."""


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How the global batch is split over devices and accumulated into updates.

    Attributes:
      batch_size: the global batch of one step (one micro-batch), over all devices and hosts.
      device_count: all devices of all processes.
      per_device_batch: examples per device per step.
      workers: Goyal's k, the workers whose n examples each share BatchNorm statistics (and
        Mixup pairs): the devices, or under the jit runner the groups of the global batch that
        a resumed run keeps from its first start (`train.run_layout`), whatever the devices.
      per_worker_batch: n, examples per worker per step.
      accumulation_steps: steps (micro-batches) per optimizer update.
      steps_per_epoch: steps per epoch: whole updates, `updates_per_epoch · accumulation_steps`.
      updates_per_epoch: optimizer updates per epoch.
      total_steps: steps of the whole run (what the loop, checkpoints and logs count).
      dropped_per_epoch: training examples each epoch leaves out (its shuffle decides which).
      eval_batch_size: the global evaluation batch.
    """

    batch_size: int
    device_count: int
    per_device_batch: int
    workers: int
    per_worker_batch: int
    accumulation_steps: int
    steps_per_epoch: int
    updates_per_epoch: int
    total_steps: int
    dropped_per_epoch: int
    eval_batch_size: int

    @property
    def update_batch(self) -> int:
        """Examples per optimizer update (what the linear scaling rule scales by)."""
        return self.batch_size * self.accumulation_steps


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Where the dataset's splits are read from and how the training stream is drawn.

    Attributes:
      data_dir: the TFDS data dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
      in_memory: hold both splits decoded in memory (`recipe.data.InMemorySource`).
      augment: random crops and flips of the training images.
      image_size: the side images are resized to, or None for the dataset's own.
      device_prefetch: batches placed on the devices ahead of their step.
      train_examples: the size of the training subset (`check_subset`), or None: all of it.
      unreadable: 'stop' or 'skip' an image that does not decode (`recipe.data.train_batches`).
    """

    data_dir: str | None
    in_memory: bool
    augment: bool
    image_size: int | None
    device_prefetch: int
    train_examples: int | None
    unreadable: str


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """What the training loop does besides stepping, and how often (in steps).

    Attributes:
      label_smoothing: ε of the training loss.
      skip_nonfinite: skip a non-finite update (`on_nonfinite='skip'`) instead of stopping.
      precise_bn_batches: training batches precise BN recomputes the statistics over before
        each evaluation (0: the running averages are evaluated).
      evaluate_ema: also score the weight EMA (`ema.decay` > 0).
      log_every_steps: steps per training-metrics record.
      sync_every_steps: the most steps dispatched before waiting for the devices.
      eval_every_steps: steps between evaluations (`eval_every_epochs` whole epochs).
      checkpoint_every_steps: steps between checkpoints.
      keep_checkpoints: checkpoints kept on disk.
      progress_bar: show a progress bar (on the first process).
      plot_curves: draw curves.png at the end of the run (on the first process).
      sharpness_every_steps: steps between measurements of the loss's sharpness (0: never).
      sharpness_iterations: Hessian-vector products per measurement.
      sharpness_method: 'lanczos' or 'power' (`recipe.sharpness.top_hessian_eigenvalue`).
      sharpness_unroll: the products unrolled into one program rather than a loop.
      sharpness_threshold: the optimizer's stability threshold on η·λ_max
        (`recipe.sharpness.stability_threshold` of its momentum).
      relative_update: log ‖Δw‖/‖w‖ of each top-level parameter group at every step
        (`relative_update.enabled`; `steps.train_step`).
    """

    label_smoothing: float
    skip_nonfinite: bool
    precise_bn_batches: int
    evaluate_ema: bool
    log_every_steps: int
    sync_every_steps: int
    eval_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    progress_bar: bool
    plot_curves: bool
    sharpness_every_steps: int
    sharpness_iterations: int
    sharpness_method: str
    sharpness_unroll: bool
    sharpness_threshold: float
    relative_update: bool


@dataclasses.dataclass(frozen=True)
class GlobalBNGroups:
    """Under the jit runner, whose model sees the global batch: the groups of that batch whose
    examples share BatchNorm statistics, as the per-device runners' devices (or groups of
    devices) hold them. Precise BN takes each group's statistics and combines them over the
    groups, as the per-device runners combine their devices'.

    Attributes:
      count: the number of groups (the devices; the groups of devices for `bn.scope='group'`;
        1 for 'global').
      model: the model as one group runs it (BN over the group's examples, or its ghost
        batches).
    """

    count: int
    model: Any


@dataclasses.dataclass(frozen=True)
class Setup:
    """A config resolved against the devices: everything a run needs but data and compiled code.

    Attributes:
      config: the config it was resolved from (validated).
      spec: the dataset.
      image_shape: (height, width, channels) of the model's input.
      model: the model (its BatchNorm scope included): a linen `recipe.models.ResNet`, or with
        `flax_api='nnx'` a `recipe.nnx.FunctionalModel` of the NNX one (linen's `init` and
        `apply` over the same variables).
      abstract_variables: the model's variables as `jax.ShapeDtypeStruct`s.
      optimizer: the optax transformation, its schedule and the loss's L2 penalty (and the
        weight EMA, in its state, when `ema.decay` > 0).
      layout: the batch layout and the run's length in steps.
      data_workers: the loader's worker processes (`config.data_workers`, or its default).
      seed: the run's seed (initial weights, shuffle, augmentation, Mixup draws).
      data: where and how the splits are read (`DataOptions`).
      loop: the training loop's cadence and options (`LoopOptions`).
      runner_name: 'pmap', 'shard_map' or 'jit' (`runner()` builds it).
      bn_group_size: g of BN over groups of devices (`bn.scope='group'`), else None.
      shard_params: the jit runner splits the parameters and optimizer state over the devices.
      bn_groups: under the jit runner, the groups of the global batch that share BN statistics
        (`GlobalBNGroups`), else None.
      mix: the train step's Mixup / CutMix (`steps.mixing_fn`), or None when both α are 0.
      noise_scale_ema: the gradient noise scale's averages, when `noise_scale.enabled`.
      notes: what a setting does where that may surprise (a warmup of 0 updates, another
        optimizer's learning rate): one line each, which `--describe` and training print.
    """

    config: ml_collections.ConfigDict
    spec: datasets.DatasetSpec
    image_shape: tuple[int, int, int]
    model: Any
    abstract_variables: Any
    optimizer: optim.Optimizer
    layout: BatchLayout
    data_workers: int
    seed: int
    data: DataOptions
    loop: LoopOptions
    runner_name: str
    bn_group_size: int | None
    shard_params: bool = False
    bn_groups: "GlobalBNGroups | None" = None
    mix: Callable[..., Any] | None = None
    noise_scale_ema: noise_scale.NoiseScaleEMA | None = None
    notes: tuple[str, ...] = ()

    def runner(self) -> runners.Runner:
        """The config's runner over all devices (for BN over device groups under shard_map,
        its two-axis mesh)."""
        return runners.make_runner(
            self.runner_name,
            bn_group_size=self.bn_group_size,
            shard_params=self.shard_params,
            bn_groups=None if self.bn_groups is None else self.bn_groups.count,
        )

    @property
    def decay_report(self) -> masks.DecayReport:
        return masks.decay_report(
            self.abstract_variables, decay_bias=self.config.optimizer.decay_bias
        )


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Checks that `config` has exactly the fields of `schema.base_config()`, each in its range
    (what can be checked before the device count is known).

    Raises:
      ConfigError: the first bad field, as one line naming it, its value, what is allowed and a
        flag that fixes it.
    """
    _check_known_fields(config)
    for name, rule in FIELD_RULES.items():
        _apply(config, name, rule)


def resolve(
    config: ml_collections.ConfigDict, device_count: int, workers: int | None = None
) -> Setup:
    """Validates `config` and resolves it for `device_count` devices (all processes), as
    `workers` workers (Goyal's k; None: one per device; another count, under the jit runner
    only, keeps a resumed run's, `train.run_layout`).

    Raises:
      ConfigError: the first bad field, as one line naming it, its value, what is allowed and a
        flag that fixes it.
    """
    check_fields(config)
    _check_ema(config)
    _check_sharpness(config)
    _check_warmup_start(config)
    spec = _training_examples(config, _dataset_spec(config))
    layout = _batch_layout(config, spec, device_count, workers)
    size = config.image_size
    image_shape = (size, size, spec.image_shape[2]) if size else spec.image_shape
    _check_runner(config)
    model = _model(config, spec, image_shape, _bn_scope(config, layout))
    # Traced, not run: the key is made inside too, so resolving compiles nothing at all.
    abstract_variables = jax.eval_shape(
        lambda: model.init(
            jax.random.key(config.seed), jnp.zeros((1, *image_shape), jnp.float32), train=False
        )
    )
    _check_optimizer(config, layout)
    optimizer = run_optimizer(config, layout, abstract_variables)
    return Setup(
        config=config,
        spec=spec,
        image_shape=image_shape,
        model=model,
        abstract_variables=abstract_variables,
        optimizer=optimizer,
        layout=layout,
        data_workers=_data_workers(config.data_workers, spec),
        seed=config.seed,
        data=DataOptions(
            data_dir=config.data_dir,
            in_memory=config.data_in_memory,
            augment=config.augment,
            image_size=config.image_size,
            device_prefetch=config.device_prefetch,
            train_examples=config.train_examples,
            unreadable=config.unreadable_images,
        ),
        loop=LoopOptions(
            label_smoothing=config.label_smoothing,
            skip_nonfinite=config.on_nonfinite == "skip",
            precise_bn_batches=config.bn.precise_batches,
            evaluate_ema=config.ema.decay > 0,
            log_every_steps=config.log_every_steps,
            sync_every_steps=config.sync_every_steps,
            eval_every_steps=config.eval_every_epochs * layout.steps_per_epoch,
            checkpoint_every_steps=config.checkpoint_every_steps,
            keep_checkpoints=config.keep_checkpoints,
            progress_bar=config.progress_bar,
            plot_curves=config.plot_curves,
            sharpness_every_steps=config.sharpness.every_steps,
            sharpness_iterations=config.sharpness.iterations,
            sharpness_method=config.sharpness.method,
            sharpness_unroll=config.sharpness.unroll,
            sharpness_threshold=sharpness.stability_threshold(
                config.optimizer.momentum, config.optimizer.nesterov
            ),
            relative_update=config.relative_update.enabled,
        ),
        runner_name=config.runner,
        bn_group_size=config.bn.group_size if config.bn.scope == "group" else None,
        shard_params=config.shard_params,
        bn_groups=_global_bn_groups(config, spec, image_shape, layout),
        mix=_mixing(config, spec, layout),
        noise_scale_ema=(
            noise_scale.noise_scale_ema(config.noise_scale.decay)
            if config.noise_scale.enabled
            else None
        ),
        notes=_notes(config, optimizer.schedule),
    )


def _dataset_spec(config: ml_collections.ConfigDict) -> datasets.DatasetSpec:
    """The dataset's spec (`recipe.data.get_dataset_spec`): `dataset` read from the data dir
    or the folder, then `augmentation_family`, `image_mean` and `image_std` applied; each
    failure one line naming the field."""
    name, data_dir = config.dataset, config.data_dir
    statistics = None
    if config.image_mean is not None and config.image_std is not None:
        statistics = (tuple(config.image_mean), tuple(config.image_std))
    try:
        spec = datasets.get_dataset_spec(name, data_dir, statistics=statistics)
    except datasets.DatasetNotPreparedError as error:
        raise ConfigError(f"dataset {' '.join(str(error).split())}") from None
    except folder.FolderLayoutError as error:
        raise ConfigError(f"dataset {name!r}: {error}") from None
    except ValueError as error:
        close = difflib.get_close_matches(name, datasets.DATASET_NAMES, n=1)
        fix = close[0] if close else schema.base_config().dataset
        raise ConfigError(f"dataset {error}; fix: --config.dataset={fix}") from None
    if (config.image_mean is None) != (config.image_std is None):
        unset = "image_std" if config.image_std is None else "image_mean"
        own = tuple(round(v, 4) for v in getattr(spec, unset.removeprefix("image_")))
        raise ConfigError(
            f"image_mean and image_std must be set together (or both left unset for the "
            f"dataset's own), got image_mean={config.image_mean} and image_std="
            f"{config.image_std}; fix: --config.{unset}={cli_value(own)}"
        )
    family = config.augmentation_family
    if family is not None and family != spec.family:
        try:
            spec = datasets.get_dataset_spec(name, data_dir, family=family, statistics=statistics)
        except ValueError as error:
            raise ConfigError(
                f"augmentation_family {family!r} does not fit {name}: {error}; fix: "
                f"--config.augmentation_family={spec.family}"
            ) from None
    channels = spec.image_shape[2]
    for field in ("image_mean", "image_std"):
        values = config[field]
        if values is not None and len(values) != channels:
            own = datasets.get_dataset_spec(name, data_dir, family=family)  # its own statistics
            fixed = getattr(own, field.removeprefix("image_"))
            raise ConfigError(
                f"{field} must have one value per channel ({channels} for {name}), got "
                f"{values}; fix: --config.{field}={cli_value(tuple(round(v, 4) for v in fixed))}"
            )
    return spec


def _training_examples(
    config: ml_collections.ConfigDict, spec: datasets.DatasetSpec
) -> datasets.DatasetSpec:
    """The dataset as this run trains on it: `train_examples` of its training examples (drawn
    per class where the data is opened: `check_subset`), held in memory with `data_in_memory`."""
    if config.data_in_memory and spec.family != "small":
        raise ConfigError(
            f"data_in_memory holds every decoded image in memory, for the 'small' datasets only; "
            f"{spec.name} is of the {spec.family!r} family; fix: --config.data_in_memory=false"
        )
    count = config.train_examples
    if count is None:
        return spec
    if count > spec.num_train:
        raise ConfigError(
            f"train_examples must be <= the {spec.num_train} training examples of {spec.name}, "
            f"got {count}; fix: --config.train_examples={spec.num_train}"
        )
    return dataclasses.replace(spec, num_train=count)


def check_subset(
    config: ml_collections.ConfigDict,
    spec: datasets.DatasetSpec,
    split_counts: np.ndarray,
    subset_counts: np.ndarray,
) -> None:
    """The rule between `train_examples` and the training split's classes: the subset
    (`recipe.data.class_balanced_subset`) must see every class of the split, each with at least
    half its share of the split (`recipe.data.class_balanced_subset` keeps every class within
    one example of its share, so only too small a subset fails), unless
    `allow_unbalanced_subset`.

    Args:
      split_counts: examples per class in the whole training split.
      subset_counts: examples per class in the subset.

    Raises:
      ConfigError: the subset leaves out a class, or is far from the split's balance.
    """
    if config.allow_unbalanced_subset:
        return
    count, total = int(subset_counts.sum()), int(split_counts.sum())
    present = split_counts > 0
    expected = count * split_counts / total
    left_out = np.flatnonzero(present & (subset_counts == 0))
    far = np.flatnonzero(present & (np.abs(subset_counts - expected) > expected / 2))
    if not far.size:
        return
    # Every class's share at least 2 examples keeps each within half of it.
    needed = min(total, int(np.ceil(2 * total / split_counts[present].min())))
    names = spec.class_names or tuple(str(label) for label in range(spec.num_classes))
    if left_out.size:
        shown = ", ".join(names[label] for label in left_out[:5])
        problem = (
            f"leaves out {left_out.size} of the {int(present.sum())} classes of "
            f"{spec.name}'s training split ({shown}{', …' if left_out.size > 5 else ''})"
        )
    else:
        label = far[np.argmax(np.abs(subset_counts - expected)[far] / expected[far])]
        problem = (
            f"is far from the training split's class balance (class {names[label]}: "
            f"{subset_counts[label]} of {count}, {100 * subset_counts[label] / count:.1f}%, "
            f"against {100 * split_counts[label] / total:.1f}% of the split)"
        )
    raise ConfigError(
        f"train_examples={count} {problem}: a subset needs at least {needed} examples to see "
        "every class in its share (--config.allow_unbalanced_subset=true trains on it as it "
        f"is); fix: --config.train_examples={needed}"
    )


def _notes(config: ml_collections.ConfigDict, schedule: schedules.GoyalSchedule) -> tuple[str, ...]:
    """The config's surprising settings, one line each (see `Setup.notes`)."""
    o, notes = config.optimizer, []
    per_epoch = schedule.steps_per_epoch
    if o.warmup != "none" and o.warmup_epochs > 0 and schedule.warmup_steps == 0:
        notes.append(
            f"optimizer.warmup_epochs={o.warmup_epochs:g} rounds to 0 of the {per_epoch} "
            f"updates per epoch: this run has no warmup (one update of warmup is "
            f"{1 / per_epoch:.3g} epochs; optimizer.warmup='none' says so)"
        )
    if o.decay != "constant" and schedule.warmup_steps >= schedule.total_steps:
        notes.append(
            f"optimizer.decay={o.decay!r} has 0 updates left after the warmup's "
            f"{schedule.warmup_steps}: the learning rate never decays"
        )
    if o.name != "sgd" and o.base_lr == schema.base_config().optimizer.base_lr:
        rates = {
            "lars": "the LARS configs peak at 10 to 29 (configs/imagenet_resnet50_lars.py)",
            "lamb": "LAMB's rates are Adam's, far below SGD's",
        }[o.name]
        notes.append(
            f"optimizer.name={o.name!r} keeps the SGD recipe's optimizer.base_lr="
            f"{o.base_lr:g} (peak {schedule.peak_lr:g}); {rates}: set optimizer.base_lr"
        )
    return tuple(notes)


def optimizer_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `optimizer` section as `recipe.build_optimizer`'s keyword arguments: all but
    `warmup_start`, which the trainer turns into `warmup_init_lr` (`run_optimizer`)."""
    return {k: v for k, v in config.optimizer.items() if k != "warmup_start"}


def run_optimizer(
    config: ml_collections.ConfigDict,
    layout: BatchLayout,
    abstract_variables: Any,
    warmup_init_lr: float | None = None,
) -> optim.Optimizer:
    """The run's optimizer; its warmup starts at `warmup_init_lr` (None: at η = base_lr, also
    where `optimizer.warmup_start='stability_edge'` starts it once the sharpness at
    initialisation is measured, `train.warmup_start`)."""
    return optim.build_optimizer(
        abstract_variables,
        **optimizer_fields(config),
        warmup_init_lr=warmup_init_lr,
        batch_size=config.batch_size,
        steps_per_epoch=layout.steps_per_epoch,
        epochs=config.num_epochs,
        accumulation_steps=config.accumulation_steps,
        # Same updates as decay in tx, faster (BENCHMARKS.md §1); LAMB's decay is decoupled.
        weight_decay_in_loss=config.optimizer.name != "lamb",
        ema_decay=config.ema.decay,
        ema_warmup=config.ema.warmup,
    )


def _check_warmup_start(config: ml_collections.ConfigDict) -> None:
    o = config.optimizer
    if o.warmup_start == "stability_edge" and (o.name != "sgd" or o.warmup == "none"):
        raise ConfigError(
            "optimizer.warmup_start='stability_edge' needs optimizer.name='sgd' (its stability "
            "threshold is known for SGD with momentum only) and a warmup to start, got "
            f"optimizer.name={o.name!r} and optimizer.warmup={o.warmup!r}; fix: "
            "--config.optimizer.warmup_start=base_lr"
        )


def _check_sharpness(config: ml_collections.ConfigDict) -> None:
    if config.sharpness.every_steps and config.optimizer.name != "sgd":
        raise ConfigError(
            f"sharpness.every_steps > 0 needs optimizer.name='sgd' (its stability threshold on "
            f"η·λ_max is known for SGD with momentum only), got sharpness.every_steps="
            f"{config.sharpness.every_steps} and optimizer.name={config.optimizer.name!r}; "
            "fix: --config.sharpness.every_steps=0"
        )


def _check_ema(config: ml_collections.ConfigDict) -> None:
    if config.ema.decay > 0 and config.bn.precise_batches == 0:
        raise ConfigError(
            f"ema.decay > 0 needs bn.precise_batches > 0 (the average of the weights is "
            f"evaluated with BN statistics recomputed for it), got ema.decay={config.ema.decay} "
            f"and bn.precise_batches=0; fix: --config.bn.precise_batches="
            f"{schema.base_config().bn.precise_batches}"
        )


def _check_optimizer(config: ml_collections.ConfigDict, layout: BatchLayout) -> None:
    """The rules between the optimizer's fields and the run's length that the library's
    builders own, as the library's own checks told the config fields' names (before
    `optim.build_optimizer` is called, which then cannot refuse the config)."""
    o, epochs = config.optimizer, config.num_epochs
    warmup_epochs = 0.0 if o.warmup == "none" else o.warmup_epochs
    decay_names = ("optimizer.decay_epochs", "optimizer.warmup_epochs", "num_epochs")
    field_checks: list[tuple[str, Callable[[], Any]]] = [
        ("optimizer.nesterov", lambda: _check_lamb_nesterov(o.name, o.nesterov)),
    ]
    if o.warmup != "none":
        field_checks.append(
            (
                "optimizer.warmup_epochs",
                lambda: schedules.check_warmup_epochs(
                    o.warmup_epochs, epochs, names=("optimizer.warmup_epochs", "num_epochs")
                ),
            )
        )
    if o.decay == "step" and o.decay_epochs is not None:
        field_checks += [
            (
                "optimizer.decay_epochs",
                lambda: schedules.check_decay_epochs(
                    o.decay_epochs, warmup_epochs, epochs, names=decay_names
                ),
            ),
            (
                "optimizer.decay_epochs",
                lambda: schedules.check_decay_updates(
                    o.decay_epochs,
                    warmup_epochs,
                    epochs,
                    layout.updates_per_epoch,
                    names=decay_names[:2],
                ),
            ),
        ]
    if o.decay == "step" and o.decay_epochs is None:
        field_checks.append(
            ("optimizer.decay_epochs", lambda: _check_paper_milestones(config, layout))
        )
    if o.decay == "poly":
        peak_lr = schedules.scaled_learning_rate(o.base_lr, layout.update_batch, o.base_batch_size)
        field_checks.append(
            (
                "optimizer.poly_end_lr",
                lambda: schedules.check_poly_end_lr(
                    o.poly_end_lr, peak_lr, name="optimizer.poly_end_lr"
                ),
            )
        )
    for field, check in field_checks:
        try:
            check()
        except ValueError as error:
            raise _error(str(error), field, config) from None


def _check_paper_milestones(config: ml_collections.ConfigDict, layout: BatchLayout) -> None:
    """`optimizer.decay_epochs=None` places Goyal's milestones on the run
    (`schedules.paper_decay_epochs`); on a run of few updates they can fall on one update,
    which the library's schedule refuses (`schedules.check_decay_updates`)."""
    o = config.optimizer
    warmup_epochs = 0.0 if o.warmup == "none" else o.warmup_epochs
    milestones = schedules.paper_decay_epochs(config.num_epochs, warmup_epochs)
    try:
        schedules.check_decay_updates(
            milestones,
            warmup_epochs,
            config.num_epochs,
            layout.updates_per_epoch,
            names=("optimizer.decay_epochs", "optimizer.warmup_epochs"),
        )
    except ValueError as error:
        placed = ", ".join(f"{e:.3g}" for e in milestones)
        raise ValueError(
            f"optimizer.decay_epochs=None places Goyal's {len(milestones)} decays at epochs "
            f"{placed} of this {config.num_epochs}-epoch run, "
            f"{str(error).split(' fall ', 1)[1]}: give the run more epochs or examples, or fewer "
            "decays"
        ) from None


def _check_lamb_nesterov(name: str, nesterov: bool) -> None:
    if name == "lamb" and nesterov:
        raise ValueError(
            "optimizer.nesterov must be False for name='lamb' (LAMB has no Nesterov form)"
        )


def _mixing(
    config: ml_collections.ConfigDict, spec: datasets.DatasetSpec, layout: BatchLayout
) -> Callable[..., Any] | None:
    """The train step's Mixup / CutMix (None when both α are 0), after the rule between
    `mixing.stop_epoch` and the run's length."""
    mixing = config.mixing
    if mixing.stop_epoch is not None and mixing.stop_epoch > config.num_epochs:
        raise ConfigError(
            f"mixing.stop_epoch must be <= num_epochs ({config.num_epochs}) or None (mix to the "
            f"end), got {mixing.stop_epoch}; fix: --config.mixing.stop_epoch={config.num_epochs}"
        )
    if mixing.mixup_alpha == 0 and mixing.cutmix_alpha == 0:
        return None
    return steps.mixing_fn(
        config.seed,
        num_classes=spec.num_classes,
        label_smoothing=config.label_smoothing,
        per_device=mixing.per_device,
        workers=layout.workers if config.runner == "jit" else None,
        stop_step=None if mixing.stop_epoch is None else mixing.stop_epoch * layout.steps_per_epoch,
        mixup_alpha=mixing.mixup_alpha,
        cutmix_alpha=mixing.cutmix_alpha,
        switch_prob=mixing.switch_prob,
        prob=mixing.prob,
    )


def _bn_scope(config: ml_collections.ConfigDict, layout: BatchLayout) -> models.BNScope:
    """The model's `BNScope` for `bn.scope` ('device', 'ghost', 'global' or 'group') under the
    config's runner."""
    bn = config.bn
    if config.runner == "jit":
        return runners.global_bn_scope(
            bn.scope,
            layout.per_worker_batch,
            ghost_batch_size=bn.ghost_batch_size,
            group_size=bn.group_size,
        )
    if bn.scope == "ghost":
        return models.BNScope.ghost(bn.ghost_batch_size)
    if bn.scope == "global":
        return models.BNScope.across(steps.AXIS)
    if bn.scope == "group":
        return runners.group_bn_scope(config.runner, layout.device_count, bn.group_size)
    return models.BNScope.per_device()


def _model(
    config: ml_collections.ConfigDict,
    spec: datasets.DatasetSpec,
    image_shape: tuple[int, int, int],
    bn_scope: models.BNScope,
) -> Any:
    """The config's model with `bn_scope`; with `shard_params` it takes split parameters."""
    model = saved_run.model_of_config(
        config, num_classes=spec.num_classes, in_features=image_shape[2], bn_scope=bn_scope
    )
    return runners.ShardedParamsModel(model) if config.shard_params else model


def _global_bn_groups(
    config: ml_collections.ConfigDict,
    spec: datasets.DatasetSpec,
    image_shape: tuple[int, int, int],
    layout: BatchLayout,
) -> GlobalBNGroups | None:
    """The jit runner's `GlobalBNGroups` (None for the per-device runners)."""
    if config.runner != "jit":
        return None
    bn = config.bn
    count = {"device": layout.workers, "ghost": layout.workers, "global": 1}
    count["group"] = layout.workers // bn.group_size
    scope = models.BNScope.ghost(bn.ghost_batch_size) if bn.scope == "ghost" else None
    model = _model(config, spec, image_shape, scope or models.BNScope.per_device())
    return GlobalBNGroups(count=count[bn.scope], model=model)


def _check_runner(config: ml_collections.ConfigDict) -> None:
    if config.shard_params and config.runner != "jit":
        raise ConfigError(
            f"shard_params=true splits the parameters and optimizer state over the devices "
            f"under runner='jit' only, got runner={config.runner!r}; fix: --config.runner=jit"
        )


def _data_workers(configured: int | None, spec: datasets.DatasetSpec) -> int:
    """`data_workers`, or by default a process per allowed core for JPEG datasets and none
    (one background thread) for the small in-memory ones."""
    if configured is not None:
        return configured
    return pipeline.default_worker_count() if spec.family == "imagenet" else 0


def flat_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """{dotted field: value} of every leaf of `config`."""
    fields: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            fields.update(flat_fields(value, f"{prefix}{key}."))
        else:
            fields[f"{prefix}{key}"] = value
    return fields


def unknown_field_message(unknown: Iterable[str]) -> str:
    """'unknown config field(s) …' with the closest known field for each, for one line."""
    known = list(flat_fields(schema.base_config()))
    leaves: dict[str, list[str]] = {}  # a field's own name → every path that has it
    for field in known:
        leaves.setdefault(field.rpartition(".")[2], []).append(field)
    parts = []
    for field in sorted(unknown):
        by_path = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
        leaf = field.rpartition(".")[2]
        by_name = [path for match in difflib.get_close_matches(leaf, leaves, n=1)
                   for path in leaves[match]]  # fmt: skip
        # A dotted field is most likely a typo of a path; a bare one, of a field's own name
        # wherever it lives (`lr_warmup`: ema.warmup or optimizer.warmup).
        close = (by_path or by_name) if "." in field else (by_name or by_path)
        parts.append(f"{field} (did you mean {' or '.join(close)}?)" if close else field)
    return f"unknown config field(s) {', '.join(parts)}; the fields are those of train/schema.py"


def cli_value(value: Any) -> str:
    """`value` as it is spelled after `--config.field=` on the command line.

    >>> cli_value((5.82, 10.41)), cli_value((2,)), cli_value(True)
    ("'(5.82,10.41)'", "'(2,)'", 'true')
    """
    if isinstance(value, tuple | list):
        items = [f"{v:g}" if isinstance(v, float) else str(v) for v in value]
        return f"'({','.join(items)}{',' if len(items) == 1 else ''})'"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_known_fields(config: ml_collections.ConfigDict) -> None:
    fields = set(flat_fields(config))
    unknown = fields - set(FIELD_RULES)
    if unknown:
        raise ConfigError(unknown_field_message(unknown))
    missing = set(FIELD_RULES) - fields
    if missing:
        raise ConfigError(
            f"the config lacks field(s) {', '.join(sorted(missing))}; build it from "
            "configs.schema.base_config() and change what differs"
        )


def _apply(config: ml_collections.ConfigDict, name: str, rule: Callable[[str, Any], Any]) -> None:
    try:
        rule(name, _get(config, name))
    except ValueError as error:
        raise _error(str(error), name, config) from None


def _get(config: ml_collections.ConfigDict, name: str) -> Any:
    node = config
    for key in name.split("."):
        node = node[key]
    return node


def _error(message: str, field: str, config: ml_collections.ConfigDict) -> ConfigError:
    """The one-line error: the check's message and a flag that fixes `field`."""
    fix = _suggested_value(field, config)
    return ConfigError(f"{message}; fix: --config.{field}={cli_value(fix)}")


def _suggested_value(field: str, config: ml_collections.ConfigDict) -> Any:
    """A value of `field` that passes its rules given the rest of `config` (the default if it
    does)."""
    if field == "optimizer.decay_epochs":
        return _suggested_milestones(config)
    if field == "optimizer.warmup_epochs":
        return min(_get(schema.base_config(), field), config.num_epochs / 2)
    if field == "optimizer.nesterov" and config.optimizer.name == "lamb":
        return False
    value = _get(config, field)
    if field in ("image_mean", "image_std") and isinstance(value, tuple | list) and value:
        # In 0–1 units (a value above 1 was most likely given in 0–255 pixel units); a std
        # that is not positive, 1 (no scaling).
        fixed = [v / 255 if isinstance(v, int | float) and 1 < v <= 255 else v for v in value]
        fixed = [v if isinstance(v, int | float) and 0 <= v <= 1 else 0.5 for v in fixed]
        return tuple(v if field == "image_mean" or v > 0 else 1.0 for v in fixed)
    return _get(schema.base_config(), field)


def _suggested_milestones(config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """Step-decay milestones for the run: Goyal's, placed on its length and rounded, or where
    those fall on one update (a run of few updates), one decay halfway between the warmup's end
    and the run's."""
    warmup = 0.0 if config.optimizer.warmup == "none" else config.optimizer.warmup_epochs
    paper = tuple(round(e, 2) for e in schedules.paper_decay_epochs(config.num_epochs, warmup))
    steps = pipeline.steps_per_epoch(
        _training_examples(config, datasets.get_dataset_spec(config.dataset)).num_train,
        config.batch_size * config.accumulation_steps,
        1,
    )
    try:
        schedules.check_decay_updates(paper, warmup, config.num_epochs, steps)
    except ValueError:
        return (round((warmup + config.num_epochs) / 2, 2),)
    return paper


def _batch_layout(
    config: ml_collections.ConfigDict,
    spec: datasets.DatasetSpec,
    device_count: int,
    workers: int | None = None,
) -> BatchLayout:
    workers = device_count if workers is None else workers
    if workers != device_count and (config.runner != "jit" or workers % device_count):
        raise ConfigError(
            f"{workers} workers on {device_count} devices need runner='jit' and a worker count "
            f"that the device count divides; fix: --config.runner=jit"
        )
    if config.runner == "jit" and config.bn.scope == "group":
        groups = workers // config.bn.group_size if workers % config.bn.group_size == 0 else 0
        if groups > 1 and groups % device_count and device_count % groups:
            raise ConfigError(
                f"bn.group_size {config.bn.group_size} makes {groups} groups of the "
                f"{workers} workers, which cannot be laid out on {device_count} devices (the "
                "groups must be a multiple or a divisor of the device count); fix: "
                f"--config.bn.group_size={workers // device_count or 1}"
            )
    for field in ("batch_size", "eval_batch_size"):
        batch = config[field]
        if batch < device_count or batch % device_count:
            fixed = max(device_count, round(batch / device_count) * device_count)
            raise ConfigError(
                f"{field} must be a multiple of the device count {device_count} (at least one "
                f"example per device), got {batch}; fix: --config.{field}={fixed}"
            )
    per_device = config.batch_size // device_count
    per_worker = config.batch_size // workers  # divides: workers are a multiple of the devices
    unit = "device" if workers == device_count else "worker"
    if config.bn.scope == "ghost" and per_worker % config.bn.ghost_batch_size:
        divisors = [d for d in range(1, per_worker + 1) if per_worker % d == 0]
        nearest = min(divisors, key=lambda d: abs(d - config.bn.ghost_batch_size))
        raise ConfigError(
            f"bn.ghost_batch_size must divide the per-{unit} batch {per_worker} (batch_size "
            f"{config.batch_size} / {workers} {unit}s), got {config.bn.ghost_batch_size}; "
            f"fix: --config.bn.ghost_batch_size={nearest}"
        )
    if config.bn.scope == "group" and workers % config.bn.group_size:
        divisors = [d for d in range(1, workers + 1) if workers % d == 0]
        nearest = max(d for d in divisors if d <= config.bn.group_size)
        raise ConfigError(
            f"bn.group_size must divide the {unit} count {workers}, got "
            f"{config.bn.group_size}; fix: --config.bn.group_size={nearest}"
        )
    halves = device_count == 1 or config.runner == "jit"
    if config.noise_scale.enabled and halves and config.batch_size % 2:
        raise ConfigError(
            "batch_size must be even for noise_scale.enabled on one device or under "
            "runner='jit' (its gradient is measured on the two halves of the batch), got "
            f"{config.batch_size}; fix: --config.batch_size={config.batch_size + device_count}"
        )
    update_batch = config.batch_size * config.accumulation_steps
    if update_batch > spec.num_train:
        raise ConfigError(
            f"batch_size × accumulation_steps must be <= the {spec.num_train} training examples "
            f"of {spec.name}, got {config.batch_size} × {config.accumulation_steps} = "
            f"{update_batch}; fix: --config.accumulation_steps="
            f"{max(1, spec.num_train // config.batch_size)}"
        )
    distributed = config.distributed
    explicit = (
        distributed.coordinator_address,
        distributed.num_processes,
        distributed.process_id,
    )
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        raise ConfigError(
            "distributed.coordinator_address, distributed.num_processes and "
            "distributed.process_id must be set together (or all left unset for JAX to detect "
            f"the cluster), got {explicit!r}; fix: set all three, or none"
        )
    if distributed.process_id is not None and distributed.process_id >= distributed.num_processes:
        raise ConfigError(
            f"distributed.process_id must be < distributed.num_processes "
            f"({distributed.num_processes}), got {distributed.process_id}; fix: "
            f"--config.distributed.process_id={distributed.num_processes - 1}"
        )
    steps_per_epoch = pipeline.steps_per_epoch(
        spec.num_train, config.batch_size, config.accumulation_steps
    )
    return BatchLayout(
        batch_size=config.batch_size,
        device_count=device_count,
        per_device_batch=per_device,
        workers=workers,
        per_worker_batch=per_worker,
        accumulation_steps=config.accumulation_steps,
        steps_per_epoch=steps_per_epoch,
        updates_per_epoch=steps_per_epoch // config.accumulation_steps,
        total_steps=config.num_epochs * steps_per_epoch,
        dropped_per_epoch=spec.num_train - steps_per_epoch * config.batch_size,
        eval_batch_size=config.eval_batch_size,
    )
