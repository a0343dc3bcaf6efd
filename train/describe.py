"""The resolved recipe as text: what `--describe` prints, from a `resolve.Setup`."""

import math
from typing import Any

import jax
import ml_collections

from train import checkpoints, inputs, plots, sharpness
from train.resolve import Setup, check_fields, resolve

_BN_SCOPES = {
    "device": "per device, over {per_device} examples (Goyal §2.3)",
    "global": "across all devices, over {batch} examples",
    "group": "over groups of {group} devices, {group_batch} examples each (Ying et al. 2018)",
    "ghost": "ghost batches of {ghost} examples within each device",
}


_FLAX_APIS = {
    "linen": "Flax linen (recipe.models.ResNet)",
    "nnx": "Flax NNX (recipe.nnx.ResNet, stepped through nnx.split/nnx.merge)",
}


def describe(config: ml_collections.ConfigDict, workdir: str | None = None) -> str:
    """The resolved recipe as text (`--describe`); with `workdir`, also saves the learning-rate
    schedule there as `lr_schedule.png`. Rejects exactly the inputs training rejects that do
    not need the work dir; with `train_examples` it reads the training split's labels, and
    gives the subset's class counts."""
    check_fields(config)
    setup = resolve(config, jax.device_count())
    text = recipe_text(setup)
    subset = inputs.training_subset(setup)
    if subset is not None:
        text += f"\n{'training subset':<18} {subset.text(setup.spec)}"
    if workdir is not None:
        path = checkpoints.create_workdir(workdir) / "lr_schedule.png"
        schedule = setup.optimizer.schedule
        plots.plot_schedule(schedule, schedule.total_steps, schedule.steps_per_epoch, path)
        text += f"\n{'schedule plot':<18} {path}"
    return text


def recipe_text(setup: Setup) -> str:
    """Every resolved number of the run, one topic per line."""
    config, layout, spec = setup.config, setup.layout, setup.spec
    schedule = setup.optimizer.schedule
    shapes = _param_shapes(setup.abstract_variables)
    devices = f"{layout.device_count} device{'s' if layout.device_count > 1 else ''}"
    accumulated = (
        f" (× {layout.accumulation_steps} accumulated = {layout.update_batch} per update)"
        if layout.accumulation_steps > 1
        else ""
    )
    lines = [
        ("dataset", f"{spec.name}: {spec.num_train} train / {spec.num_test} test, "
         f"{spec.num_classes} classes, images {setup.image_shape}"),
        ("model", f"{config.model}{_stages(config)} (width {config.num_filters}, dtype "
         f"{config.dtype}, zero-γ last BN {config.zero_init_last_bn}): "
         f"{_count(shapes.values())} parameters in {len(shapes)} tensors; "
         f"{_FLAX_APIS[config.flax_api]}"),
        ("global batch", f"{layout.batch_size} = {devices} × {layout.per_device_batch} per "
         f"device{accumulated}"),
        ("epoch", f"{layout.updates_per_epoch} updates of {layout.update_batch} examples"
         + (f"; {layout.dropped_per_epoch} of the {spec.num_train} training examples are left "
            "out of each epoch (its shuffle decides which)" if layout.dropped_per_epoch else "")),
        ("learning rate", f"{schedule.base_lr:g} × {layout.update_batch} / "
         f"{config.optimizer.base_batch_size} = {schedule.peak_lr:g} (linear scaling rule)"),
        ("warmup", "none" if schedule.warmup == "none" else
         f"{schedule.warmup}, {schedule.warmup_steps} updates ({config.optimizer.warmup_epochs:g}"
         f" epochs) from {_warmup_start_text(setup)} to {schedule.peak_lr:g}"),
        ("decay", _decay_text(setup)),
        ("updates", f"{schedule.total_steps} ({config.num_epochs} epochs × "
         f"{schedule.steps_per_epoch} per epoch)"),
        ("optimizer", _optimizer_text(setup)),
        ("batch norm", _BN_SCOPES[config.bn.scope].format(
            per_device=layout.per_device_batch, batch=layout.batch_size,
            ghost=config.bn.ghost_batch_size, group=config.bn.group_size,
            group_batch=config.bn.group_size * layout.per_device_batch)
         + f", momentum {config.bn.momentum}"),
        ("evaluated BN", _precise_bn_text(setup)),
        ("label smoothing", f"{config.label_smoothing}"
         + (", applied once to the mixed targets" if setup.mix else "")),
        ("mixup / cutmix", _mixing_text(setup)),
        ("weight EMA", _ema_text(setup)),
        ("noise scale", _noise_scale_text(setup)),
        ("relative update", _relative_update_text(setup)),
        ("sharpness", sharpness.describe(setup)),
        ("runner", _runner_text(setup)),
        ("input", _input_text(setup)),
        ("augmentation", _augmentation_text(setup)),
        *(("note", note) for note in setup.notes),
    ]  # fmt: skip
    report = setup.decay_report
    bn_layers = _bn_layers(setup.abstract_variables)
    lines += [
        ("weight decay on", _group(report.decayed, shapes, bn_layers)),
        ("no weight decay on", _group(report.not_decayed, shapes, bn_layers)),
    ]
    return "\n".join(f"{name:<18} {text}" for name, text in lines)


def _warmup_start_text(setup: Setup) -> str:
    schedule = setup.optimizer.schedule
    if setup.config.optimizer.warmup_start != "stability_edge":
        return f"{schedule.warmup_lr:g}"
    threshold = setup.loop.sharpness_threshold
    return (
        f"the stability edge measured at start, min({threshold:.4g} / λ₀, {schedule.peak_lr:g}) "
        f"(λ₀ the sharpness of the initial weights, {setup.loop.sharpness_iterations} "
        "Hessian-vector products on the first batch)"
    )


def _relative_update_text(setup: Setup) -> str:
    if not setup.loop.relative_update:
        return (
            "not measured (--config.relative_update.enabled=true logs ‖Δw‖/‖w‖ of each "
            "top-level parameter group at every step)"
        )
    groups = len(setup.abstract_variables["params"])
    return (
        f"‖Δw‖/‖w‖ of each of the {groups} top-level parameter groups and their largest, at "
        "every step, logged as train/relative_update/<group> and train/relative_update_max; "
        "costs two squared norms of the weights per step"
    )


def _runner_text(setup: Setup) -> str:
    config, layout = setup.config, setup.layout
    if config.runner != "jit":
        return config.runner
    devices = f"{layout.device_count} device{'s' if layout.device_count > 1 else ''}"
    sharded = (
        "parameters and optimizer state split over them (shard_params)"
        if config.shard_params
        else "state replicated"
    )
    return (
        f"jit: the step on the global batch of {layout.batch_size}, split over a mesh of "
        f"{devices} (explicit sharding), {sharded}; BN's statistics over groups of the batch"
    )


def _optimizer_text(setup: Setup) -> str:
    o = setup.config.optimizer
    excluded = "BN γ/β" + ("" if o.decay_bias else " and biases")
    if o.name == "lars":
        return (
            f"LARS (You et al. 2017, optax.lars), trust coefficient {o.trust_coefficient}, "
            f"momentum {o.momentum}, nesterov {o.nesterov}, weight decay {o.weight_decay} "
            f"(coupled L2, in the loss: inside the trust ratio); {excluded}: plain momentum, "
            "no trust ratio, no decay"
        )
    if o.name == "lamb":
        return (
            f"LAMB (You et al. 2019, optax.lamb), b1 {o.momentum}, b2 {o.beta2}, weight decay "
            f"{o.weight_decay} (decoupled, in the optimizer); {excluded}: plain Adam, no trust "
            "ratio, no decay"
        )
    return (
        f"SGD, momentum {o.momentum}, nesterov {o.nesterov}, weight decay {o.weight_decay} "
        "(coupled L2, in the loss)"
    )


def _noise_scale_text(setup: Setup) -> str:
    if setup.noise_scale_ema is None:
        return "not measured (--config.noise_scale.enabled=true logs B_simple ≈ B_crit)"
    layout = setup.layout
    halves = layout.device_count == 1 or setup.config.runner == "jit"  # a second backward pass
    small = (
        f"the two halves ({layout.batch_size // 2} each) of the batch"
        if halves
        else f"each device's {layout.per_device_batch} examples"
    )
    return (
        f"B_simple = tr(Σ)/|G|² (McCandlish et al. 2018) from the gradients of {small} and of "
        f"all {layout.batch_size}, EMA decay {setup.config.noise_scale.decay}, logged as "
        "train/noise_scale. It estimates the critical batch: well below it doubling the batch "
        "halves the steps to a given loss, well above it the steps barely drop; compare it "
        f"with this run's batch of {layout.update_batch}"
    )


_CROP_PATH = "JPEG decoded by libjpeg-turbo at the DCT scale the crop needs, OpenCV resize"


def _input_text(setup: Setup) -> str:
    """Who decodes, with what, and the bytes that cross to the devices (the augmentation has a
    line of its own)."""
    spec = setup.spec
    workers = setup.data_workers
    who = f"{workers} worker process{'es' if workers > 1 else ''}" if workers else "1 thread"
    if spec.family == "imagenet" and spec.stored_as != "uint8":
        decoder = {
            "jpeg": _CROP_PATH,
            "png": "PNG decoded by Pillow, OpenCV resize",
            "files": f"image files read as they are: {_CROP_PATH}, PNG by Pillow",
        }[spec.stored_as]
    else:
        decoder = {
            "jpeg": "JPEG decoded by TFDS on every read (--config.data_in_memory=true: once)",
            "png": "PNG decoded by TFDS on every read (--config.data_in_memory=true: once)",
            "uint8": "uint8 arrays, no decoding",
        }[spec.stored_as]
    if setup.config.data_in_memory:
        decoder = "decoded once and held in memory"
    per_image = math.prod(setup.image_shape)
    per_step = setup.layout.batch_size * per_image
    unreadable = {
        "stop": "an image that does not decode stops the run",
        "skip": "an image that does not decode is skipped (named, counted)",
    }[setup.data.unreadable]
    return (
        f"{who}; {decoder}; uint8 to the devices, {per_step / 2**20:,.1f} MiB "
        f"per step ({per_image:,} bytes per image, a quarter of float32), normalised in the step "
        f"(mean {_values(spec.mean)}, std {_values(spec.std)}); "
        f"{setup.config.device_prefetch} batches placed ahead"
        + (f"; {unreadable}" if spec.family == "imagenet" else "")
    )


def _augmentation_text(setup: Setup) -> str:
    """What the training images go through (recipe.data.pipeline.augment_image), and whether
    `image_size` resizes the dataset's images."""
    spec, size = setup.spec, setup.image_shape[0]
    stored = spec.image_shape[0]
    flip = ", horizontal flips" if spec.horizontal_flip else ""
    if not setup.config.augment:
        augmentation = "none (augment=false): the training images as evaluation sees them"
    elif spec.family == "small":
        augmentation = f"random crops of the image zero-padded by {spec.crop_padding}{flip}"
    else:
        augmentation = f"Inception random-resized crops (8–100% of the area){flip}"
    if spec.family == "small" and size != stored:
        augmentation += (
            f"; {stored}×{stored} images resized to {size}×{size} (image_size; box filter), "
            "for training and evaluation"
        )
    return augmentation


def _values(values: tuple[float, ...]) -> str:
    return f"({', '.join(f'{v:.4g}' for v in values)})"


def _decay_text(setup: Setup) -> str:
    schedule, config = setup.optimizer.schedule, setup.config
    if schedule.decay == "poly":
        return (
            f"poly, power {schedule.poly_power:g}, from {schedule.peak_lr:g} to "
            f"{schedule.poly_end_lr:g} over the updates after warmup"
        )
    if schedule.decay != "step":
        return f"{schedule.decay} to 0 over the updates after warmup"
    epochs = ", ".join(f"{e:.4g}" for e in schedule.decay_epochs)
    origin = (
        f"Goyal's 30, 60, 80 of 90 placed on {config.num_epochs} epochs"
        if config.optimizer.decay_epochs is None
        else "as configured"
    )
    return (
        f"step ×{schedule.decay_factor} at epochs {epochs} ({origin}; updates "
        f"{', '.join(map(str, schedule.decay_boundaries))})"
    )


def _precise_bn_text(setup: Setup) -> str:
    config, layout = setup.config, setup.layout
    if not config.bn.precise_batches:
        return "running averages"
    n = config.bn.precise_batches
    estimate = (
        "mean of the ghost-batch statistics"
        if config.bn.scope == "ghost"
        else "population mean and variance"
    )
    return (
        f"precise BN: {estimate} of the current weights over {n} training batch"
        f"{'es' if n > 1 else ''} ({n * layout.batch_size} examples, no augmentation) before "
        "each evaluation"
    )


def _mixing_text(setup: Setup) -> str:
    mixing = setup.config.mixing
    if setup.mix is None:
        return "off"
    kinds = [
        f"{name} α {alpha:g}"
        for name, alpha in (("Mixup", mixing.mixup_alpha), ("CutMix", mixing.cutmix_alpha))
        if alpha > 0
    ]
    text = " or ".join(kinds)
    if len(kinds) == 2:
        text += f" (CutMix with probability {mixing.switch_prob:g})"
    text += ", every batch" if mixing.prob == 1 else f", a batch with probability {mixing.prob:g}"
    text += ", a draw per device" if mixing.per_device else ", one draw per global batch"
    return text + ("" if mixing.stop_epoch is None else f", until epoch {mixing.stop_epoch}")


def _ema_text(setup: Setup) -> str:
    ema = setup.config.ema
    if not ema.decay:
        return "off"
    warmup = ", timm's warmup 1 − n^(−2/3)" if ema.warmup else ""
    return f"decay {ema.decay:g}{warmup}; evaluated beside the weights, with its own precise BN"


def _param_shapes(variables: Any) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(str(key.key) for key in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
    }


def _bn_layers(variables: Any) -> set[str]:
    return {
        "/".join(str(key.key) for key in path[:-1])
        for path, _ in jax.tree_util.tree_leaves_with_path(variables.get("batch_stats", {}))
    }


def _count(shapes) -> str:
    return f"{sum(math.prod(shape) for shape in shapes):,}"


def _group(paths: list[str], shapes: dict[str, tuple[int, ...]], bn_layers: set[str]) -> str:
    """'N tensors, P parameters: 21 conv kernels, 1 dense kernel, …', by the kind of layer."""
    if not paths:
        return "nothing"
    kinds: dict[str, list[str]] = {}
    for path in paths:
        module, _, leaf = path.rpartition("/")
        if module in bn_layers:
            kind = "BatchNorm"
        elif leaf == "kernel":
            kind = "conv kernel" if len(shapes[path]) == 4 else "dense kernel"
        else:
            kind = leaf
        kinds.setdefault(kind, []).append(module)
    parts = []
    order = ("conv kernel", "dense kernel", "bias", "BatchNorm")  # others after, by name
    rank = {kind: i for i, kind in enumerate(order)}
    for kind, modules in sorted(kinds.items(), key=lambda item: (rank.get(item[0], 9), item[0])):
        if kind == "BatchNorm":
            layers = len(set(modules))
            parts.append(f"γ and β of {layers} BatchNorm layer{'s' if layers > 1 else ''}")
        else:
            plural = "es" if kind.endswith("s") else "s"
            parts.append(f"{len(modules)} {kind}{plural if len(modules) > 1 else ''}")
    return f"{len(paths)} tensors, {_count(shapes[p] for p in paths)} parameters: " + ", ".join(
        parts
    )


def _stages(config: ml_collections.ConfigDict) -> str:
    """' with stages (…)' where `stage_sizes` replaces the model's own; '' otherwise."""
    return f" with stages {tuple(config.stage_sizes)}" if config.stage_sizes else ""
