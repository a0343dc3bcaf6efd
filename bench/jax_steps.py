"""The JAX train steps the benchmarks time: the project's own `train.steps.train_step`
with the full recipe, resolved by the trainer's own `train.resolve.resolve`, and
stripped-down variants.

Variants (each a per-device function mapped by a `train.steps` runner, state donated):

* ``full``: `steps.train_step` with `recipe.optim.build_optimizer(..., weight_decay_in_loss=True)`
  (gradual warmup + step decay schedule, Nesterov, weight decay masked off BN as an L2 term of
  the loss), label smoothing 0.1, the Goyal init (zero-γ last BN) — what `python -m train`
  runs.
* ``bare``: plain `optax.sgd(0.1, momentum=0.9)` (constant lr, no weight decay, no mask),
  `optax.softmax_cross_entropy_with_integer_labels`, γ = 1 everywhere, loss as the only metric.
* the ladder between them, adding one piece at a time to ``bare``: ``+smoothing`` (the
  recipe's label-smoothed loss), ``+decay_mask`` (masked coupled weight decay in the loss,
  Nesterov), ``+schedule`` (the Goyal schedule through `inject_hyperparams`: the recipe's
  optimizer).

`build(config, weight_decay_in_loss=False)` gives ``full`` with the decay in the optax chain
instead (`optax.add_decayed_weights`, `build_optimizer`'s default): the same updates. The
large-batch variants of section 1 are config overrides (`optimizer.name`, `bn.scope='group'`,
`noise_scale.enabled`) resolved like any other; `step_fn` passes the resolved step options.
"""

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax import lax

from bench.trainer_api import config_for, inputs, resolve, runners, steps
from recipe import losses, masks, models, optim

VARIANTS = ("bare", "+smoothing", "+decay_mask", "+schedule", "full")


@dataclasses.dataclass
class Setup:
    model: Any  # linen's recipe.models.ResNet, or recipe.nnx.FunctionalModel
    variables: Any
    optimizer: optim.Optimizer
    image_shape: tuple[int, int, int]
    num_classes: int
    label_smoothing: float
    resolved: resolve.Setup  # the trainer's: its runner (`.runner()`) and noise-scale EMA
    normalize: Any  # the trainer's in-step input normalisation (uint8 batches; floats pass)
    mix: Any = None  # the train step's Mixup / CutMix (`resolve.Setup.mix`)


def build(
    config: ml_collections.ConfigDict,
    *,
    stem: str | None = None,
    zero_init_last_bn: bool | None = None,
    weight_decay_in_loss: bool = True,
    device_count: int | None = None,
) -> Setup:
    """The trainer's resolved model and optimizer (`resolve.resolve`), with initialised
    variables, plus two benchmark variants: a `stem` override (the config has none: the 'CIFAR
    ResNet-18' of the torch comparison needs stem='cifar') and the weight decay in the optax
    chain (`weight_decay_in_loss=False`, `build_optimizer`'s default: the same updates)."""
    if zero_init_last_bn is not None:
        config = config.copy_and_resolve_references()
        config.zero_init_last_bn = zero_init_last_bn
    resolved = resolve.resolve(config, device_count or jax.device_count())
    model = resolved.model if stem is None else resolved.model.clone(stem=stem)
    variables = _initial_variables(model, resolved.image_shape, config.seed)
    optimizer = resolved.optimizer
    if not weight_decay_in_loss:
        optimizer = optim.build_optimizer(
            variables,
            **resolve.optimizer_fields(config),
            batch_size=config.batch_size,
            steps_per_epoch=resolved.layout.steps_per_epoch,
            epochs=config.num_epochs,
            accumulation_steps=config.accumulation_steps,
        )
    return Setup(
        model,
        variables,
        optimizer,
        resolved.image_shape,
        resolved.spec.num_classes,
        config.label_smoothing,
        resolved,
        inputs.normalizer(resolved),
        resolved.mix,
    )


def _initial_variables(model: Any, image_shape: tuple[int, ...], seed: int) -> Any:
    """`steps.init_variables`, once per linen architecture: the BN statistics' scope does not
    change the variables, and compiling an init costs tens of CPU seconds here. An NNX model
    (`recipe.nnx.FunctionalModel`) draws its own."""
    if not isinstance(model, models.ResNet):
        return steps.init_variables(model, image_shape, seed)
    return _init_once(model.clone(bn_scope=models.BNScope.per_device()), image_shape, seed)


@functools.cache
def _init_once(model: models.ResNet, image_shape: tuple[int, ...], seed: int) -> Any:
    return steps.init_variables(model, image_shape, seed)


def _ladder_step(state, batch, *, model, tx, label_smoothing, loss_penalty, axis_name=steps.AXIS):
    """`bare` and the ladder: the minimal data-parallel step (loss is the only metric)."""

    def loss_fn(params):
        logits, new_model_state = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        if label_smoothing is None:
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        else:
            loss = losses.cross_entropy(logits, batch["label"], label_smoothing)
        if loss_penalty is not None:
            loss = loss + loss_penalty(params)
        return loss, new_model_state["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = steps.TrainState(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, {"loss": lax.pmean(loss, axis_name)}


def step_fn(
    variant: str,
    setup: Setup,
    bare_setup: Setup | None = None,
    axis_name: steps.AxisName = steps.AXIS,
):
    """(per-device step function, initial host TrainState) of a variant, for a runner whose
    `axis_name` spans the devices."""
    if variant == "full":
        optimizer = setup.optimizer
        ema = setup.resolved.noise_scale_ema
        fn = functools.partial(
            steps.train_step,
            model=setup.model,
            tx=optimizer.tx,
            label_smoothing=setup.label_smoothing,
            skip_nonfinite=False,
            loss_penalty=optimizer.loss_penalty,
            axis_name=axis_name,
            noise_scale_ema=ema,
            normalize=setup.normalize,
            mix=setup.mix,
        )
        return fn, steps.TrainState.create(setup.variables, optimizer.tx, ema)
    base = bare_setup or setup
    penalty = None
    if variant in ("bare", "+smoothing"):
        tx = optax.sgd(0.1, momentum=0.9)
    elif variant == "+decay_mask":
        tx = optim.goyal_sgd(0.1, weight_decay=0.0)
        mask = masks.weight_decay_mask(setup.variables)
        penalty = functools.partial(losses.l2_penalty, weight_decay=1e-4, mask=mask)
    elif variant == "+schedule":
        tx, penalty = setup.optimizer.tx, setup.optimizer.loss_penalty
    else:
        raise ValueError(variant)
    smoothing = None if variant == "bare" else setup.label_smoothing
    model = base.model if variant == "bare" else setup.model
    variables = base.variables if variant == "bare" else setup.variables
    fn = functools.partial(
        _ladder_step,
        model=model,
        tx=tx,
        label_smoothing=smoothing,
        loss_penalty=penalty,
        axis_name=axis_name,
    )
    return fn, steps.TrainState.create(variables, tx)


def synthetic_batch(
    device_count: int, batch_size: int, image_shape, num_classes: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A fixed batch laid out as the loader lays it out: (devices, per-device batch, ...)."""
    rng = np.random.default_rng(seed)
    per_device = batch_size // device_count
    return {
        "image": rng.normal(size=(device_count, per_device, *image_shape)).astype(np.float32),
        "label": rng.integers(0, num_classes, (device_count, per_device)).astype(np.int32),
    }


class Stepper:
    """Calls a mapped, state-donating step on a fixed device batch and waits for it."""

    def __init__(self, runner: runners.Runner, fn, state, batch):
        self.step = runner.map(fn, donate_argnums=(0,))
        self.state = runner.place(state)
        self.batch = runner.put(batch)

    def __call__(self) -> None:
        self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))


# The modern-recipe extras, each the trainer's own step with one config switch on top of
# ``full`` (torchvision's ResNet-50 recipe values): the weight EMA (timm's decay warmup, target
# 0.9998), Mixup α = 0.2 / CutMix α = 1.0 switched per batch, and one batch of precise-BN
# statistics (`steps.precise_bn_update`: a training-mode forward pass, no gradient).
EMA = "full + weight EMA"
MIXING = "full + Mixup/CutMix"
PRECISE_BN = "precise BN, one batch"
# Not an extra of the recipe but the same step on the model written in Flax NNX (recipe.nnx,
# through nnx.split/nnx.merge): timed against ``full`` like the extras.
NNX = "full, Flax NNX"
EXTRAS = {
    EMA: {"ema.decay": 0.9998},
    MIXING: {"mixing.mixup_alpha": 0.2, "mixing.cutmix_alpha": 1.0},
    PRECISE_BN: {},
    NNX: {"flax_api": "nnx"},
}


def extra_fn(name: str, **overrides: Any):
    """(per-device function, initial host state) of one of `EXTRAS`, for `Stepper`, built from
    the default config with `overrides` and the extra's switches, through `resolve`."""
    setup = build(config_for(**overrides, **EXTRAS[name]))
    if name != PRECISE_BN:
        return step_fn("full", setup)
    estimator = steps.model_precise_bn(setup.model)
    state = steps.TrainState.create(setup.variables, setup.optimizer.tx)

    def update(carry, batch):
        stats, train_state = carry
        stats = steps.precise_bn_update(
            stats, train_state, batch, estimator=estimator, ema=False, normalize=setup.normalize
        )
        return (stats, train_state), {}

    return update, (steps.precise_bn_init(state, estimator=estimator), state)
