"""The NNX face of the library (recipe/nnx.py) against the linen one: the same variables for
every model, the same outputs from the same weights in both modes and every BatchNorm scope, the
converters both ways, the same weight-decay split, and the modern extras on NNX models.

Equal here means bitwise: both faces lower to the same XLA programs (the same ops in the same
order), which the step-by-step test below checks over whole training runs.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_config as tiny
from conftest import checkpoint_state
from flax import nnx

import recipe
from recipe import models
from recipe import nnx as recipe_nnx
from recipe.data import datasets, pipeline
from train import describe, evaluation, loop, runners, steps

IMAGES = jax.random.normal(jax.random.key(3), (8, 16, 16, 3))
# A small model of each block type and stem: (name, overrides).
SMALL = {
    "resnet8": {"num_filters": 4},
    "resnet50": {"num_filters": 4, "stage_sizes": (1, 1)},
}


def assert_relatively_close(actual, expected, tolerance: float = 1e-6) -> None:
    """Each leaf within `tolerance` of the expected one, relative to the expected leaf's largest
    magnitude: what float32 reassociation leaves when one program is compiled in two forms
    (an `nnx.jit` of the module's call, a `jax.jit` of linen's `apply`)."""
    for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * scale)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)


def _twins(name: str, seed: int = 1, **overrides) -> tuple[models.ResNet, nnx.Module, dict]:
    """The linen model, its NNX twin holding the linen model's initial weights, and those."""
    linen = models.create_model(name, **{**SMALL.get(name, {}), **overrides})
    variables = jax.jit(lambda key: linen.init(key, IMAGES[:1], train=False))(jax.random.key(seed))
    twin = recipe_nnx.create_model(name, **{**SMALL.get(name, {}), **overrides}, rngs=nnx.Rngs(0))
    return linen, recipe_nnx.from_linen_variables(twin, variables), variables


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_has_the_same_variables_in_both_apis(name):
    """Every parameter and statistic maps one to one: the same paths, shapes and dtypes."""
    linen = models.create_model(name)
    twin = recipe_nnx.FunctionalModel(functools.partial(recipe_nnx.create_model, name))
    key, images = jax.random.key(0), jnp.zeros((1, 64, 64, 3))
    expected = jax.eval_shape(lambda: linen.init(key, images, train=False))
    got = jax.eval_shape(lambda: twin.init(key, images, train=False))
    assert jax.tree.structure(got) == jax.tree.structure(dict(expected))
    chex.assert_trees_all_equal_shapes_and_dtypes(got, dict(expected))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", SMALL)
def test_the_same_weights_give_the_same_outputs_in_both_modes(name, dtype):
    """float32 within 1e-6 of the outputs' scale; bfloat16, whose compute rounds at 2^-8, within
    1e-2 of it."""
    linen, twin, variables = _twins(name, dtype=jnp.dtype(dtype))
    tolerance = {"float32": 1e-6, "bfloat16": 1e-2}[dtype]
    logits, updates = jax.jit(
        lambda v: linen.apply(v, IMAGES, train=True, mutable=["batch_stats"])
    )(variables)
    twin.train()
    twin_logits = nnx.jit(lambda model: model(IMAGES))(twin)
    assert twin_logits.dtype == jnp.float32
    assert_relatively_close(twin_logits, logits, tolerance)
    # The running averages moved the same way, and evaluation reads them.
    assert_relatively_close(recipe_nnx.to_linen_variables(twin)["batch_stats"],
                            updates["batch_stats"], tolerance)  # fmt: skip
    twin.eval()
    assert_relatively_close(
        nnx.jit(lambda model: model(IMAGES))(twin),
        linen.apply({**variables, **updates}, IMAGES, train=False),
        tolerance,
    )
    # Parameters and statistics stay float32 in a bfloat16 model.
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(twin))} == {jnp.dtype("float32")}


def test_ghost_batch_norm_is_the_same_in_both_apis():
    linen, twin, variables = _twins("resnet8", bn_scope=models.BNScope.ghost(2))
    twin.train()
    assert_relatively_close(
        nnx.jit(lambda model: model(IMAGES))(twin),
        linen.apply(variables, IMAGES, train=True, mutable=["batch_stats"])[0],
    )


def test_the_converters_map_both_ways_and_refuse_another_model():
    _, twin, variables = _twins("resnet8")
    chex.assert_trees_all_equal(recipe_nnx.to_linen_variables(twin), dict(variables))
    other = recipe_nnx.create_model("resnet8", num_filters=8, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"^the variables do not map one to one onto the model \(46 differ: "
        r"batch_stats/stage1_block1/bn1/mean: model \(8,\), variables \(4,\), ",
    ):
        recipe_nnx.from_linen_variables(other, variables)
    with pytest.raises(ValueError, match="1 differ: extra"):
        recipe_nnx.from_linen_variables(twin, {**variables, "extra": {}})


def test_weight_decay_mask_gives_the_same_split():
    _, twin, variables = _twins("resnet50")
    assert recipe.decay_report(twin) == recipe.decay_report(variables)
    assert recipe.decay_report(twin, decay_bias=False) == recipe.decay_report(
        variables, decay_bias=False
    )
    mask = recipe.weight_decay_mask(twin)  # NNX: a function of the parameter pytree
    chex.assert_trees_all_equal(
        nnx.to_pure_dict(mask(nnx.state(twin, nnx.Param))), recipe.weight_decay_mask(variables)
    )


def test_functional_model_draws_the_nnx_models_own_weights():
    """`FunctionalModel.init` is the model's own construction: NNX's draw, not linen's."""
    make = functools.partial(recipe_nnx.create_model, "resnet8", num_filters=4)
    drawn = recipe_nnx.FunctionalModel(make).init(jax.random.key(5))
    chex.assert_trees_all_equal(
        drawn, recipe_nnx.to_linen_variables(make(rngs=nnx.Rngs(params=jax.random.key(5))))
    )


# ---- The modern extras on NNX models.


def test_precise_bn_of_an_nnx_model_equals_linens():
    linen, twin, variables = _twins("resnet8")
    batches = [IMAGES[:4], IMAGES[4:]]
    expected = recipe.precise_batch_stats(
        functools.partial(linen.apply, train=True, mutable=["batch_stats"]),
        variables,
        batches,
        momentum=0.9,
    )
    params_before = nnx.to_pure_dict(nnx.state(twin, nnx.Param))
    twin.eval()
    assert recipe_nnx.precise_batch_stats(twin, batches, momentum=0.9) is twin
    chex.assert_trees_all_close(
        recipe_nnx.to_linen_variables(twin)["batch_stats"], expected, rtol=1e-6
    )
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(twin, nnx.Param)), params_before)
    assert twin.stem_bn.use_running_average, "the model's mode is left as it was"


def test_fixed_batch_loss_of_an_nnx_model_equals_linens_and_changes_nothing():
    linen, twin, variables = _twins("resnet8", stage_sizes=(1,))  # one block: the HVP compiles fast
    labels = jnp.arange(8) % 10

    def cross_entropy(logits):
        return recipe.cross_entropy(logits, labels, 0.1)

    expected = recipe.fixed_batch_loss(
        linen.apply, variables["batch_stats"], IMAGES, cross_entropy, train=True
    )
    loss = recipe_nnx.fixed_batch_loss(twin, IMAGES, cross_entropy)
    params = nnx.state(twin, nnx.Param)
    before = recipe_nnx.to_linen_variables(twin)
    chex.assert_trees_all_close(
        jax.jit(loss)(params), jax.jit(expected)(variables["params"]), rtol=1e-6
    )
    chex.assert_trees_all_close(
        nnx.to_pure_dict(jax.jit(jax.grad(loss))(params)),
        jax.jit(jax.grad(expected))(variables["params"]),
        rtol=1e-5,
        atol=1e-8,
    )
    found = recipe.top_hessian_eigenvalue(jax.jit(loss), params, jax.random.key(0), iterations=3)
    assert np.isfinite(float(found.eigenvalue))
    chex.assert_trees_all_equal(recipe_nnx.to_linen_variables(twin), before)


def test_weight_ema_noise_scale_and_mixing_in_an_nnx_train_step():
    """Two steps of an NNX train step, `nnx.Optimizer` over `recipe.goyal_sgd` with a weight EMA,
    on Mixup/CutMix batches, measuring the gradient noise scale from the gradients of half and
    all of the batch: the EMA follows its formula, and the losses, weights, EMA and noise-scale
    estimates equal those of the same step written on the linen twin's variables."""
    linen, twin, variables = _twins("resnet8")
    labels = jnp.arange(8) % 10
    batches = [
        recipe.mixup_cutmix(recipe.mixing_key(0, step), IMAGES, labels, num_classes=10,
                            mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)
        for step in range(2)
    ]  # fmt: skip
    noise = recipe.noise_scale_ema(0.9)

    def observe(state, half_grads, grads):
        sq_norm = functools.partial(optax.tree_utils.tree_norm, squared=True)
        return noise.update(state, sq_norm(half_grads), sq_norm(grads), 4, 8)

    tx = recipe.goyal_sgd(0.1, weight_decay_mask=recipe.weight_decay_mask(twin), ema_decay=0.5)
    optimizer = nnx.Optimizer(twin, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, noise_state, images, targets):
        def loss_fn(model, images, targets):
            return optax.softmax_cross_entropy(model(images), targets).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model, images, targets)
        # The half batch's gradient without a second update of the running averages.
        half_loss = recipe_nnx.fixed_batch_loss(
            model,
            images[:4],
            lambda logits: optax.softmax_cross_entropy(logits, targets[:4]).mean(),
        )
        half_grads = jax.grad(half_loss)(nnx.state(model, nnx.Param))
        optimizer.update(model, grads)
        return loss, observe(noise_state, half_grads, grads)

    linen_tx = recipe.goyal_sgd(
        0.1, weight_decay_mask=recipe.weight_decay_mask(variables), ema_decay=0.5
    )

    @jax.jit
    def linen_step(variables, opt_state, noise_state, images, targets):
        def loss_fn(params, images, targets):
            logits, updates = linen.apply({**variables, "params": params}, images, train=True,
                                          mutable=["batch_stats"])  # fmt: skip
            return optax.softmax_cross_entropy(logits, targets).mean(), updates

        params = variables["params"]
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, images, targets)
        half_grads = jax.grad(lambda p: loss_fn(p, images[:4], targets[:4])[0])(params)
        step, opt_state = linen_tx.update(grads, opt_state, params)
        variables = {"params": optax.apply_updates(params, step), **updates}
        return variables, opt_state, loss, observe(noise_state, half_grads, grads)

    twin.train()
    nnx_noise = linen_noise = noise.init()
    opt_state, weights = linen_tx.init(variables["params"]), []
    for images, targets in batches:
        loss, nnx_noise = nnx_step(twin, optimizer, nnx_noise, images, targets)
        variables, opt_state, linen_loss, linen_noise = linen_step(
            variables, opt_state, linen_noise, images, targets
        )
        chex.assert_trees_all_equal(loss, linen_loss)
        weights.append(nnx.to_pure_dict(nnx.state(twin, nnx.Param)))
    chex.assert_trees_all_close(recipe_nnx.to_linen_variables(twin), variables, rtol=1e-6)
    # e_1 = w_1 (the first update copies), e_2 = 0.5 e_1 + 0.5 w_2.
    ema = nnx.to_pure_dict(recipe.ema_params(optimizer.opt_state))
    chex.assert_trees_all_close(ema, jax.tree.map(lambda a, b: 0.5 * (a + b), *weights))
    chex.assert_trees_all_close(ema, recipe.ema_params(opt_state), rtol=1e-6)
    chex.assert_trees_all_close(nnx_noise, linen_noise, rtol=1e-5)
    assert np.isfinite(float(recipe.simple_noise_scale(nnx_noise)))


# ---- The trainer's step with an NNX model: bitwise linen's, under both runners.

STEP_BATCH = 32


def _step_batches(count: int):
    rng = np.random.default_rng(0)
    for _ in range(count):
        yield {
            "image": rng.integers(0, 256, size=(STEP_BATCH, 8, 8, 1), dtype=np.uint8),
            "label": rng.integers(0, 10, size=STEP_BATCH).astype(np.int32),
        }


@pytest.mark.parametrize(
    "runner_name, bn_scope",
    [
        ("pmap", "global"),
        ("shard_map", "group"),
    ],
)
def test_linen_and_nnx_train_steps_agree_bitwise_over_24_steps(runner_name, bn_scope):
    """From the same weights, 24 steps with cross-device (or grouped) BN statistics, weight
    decay in the loss, label smoothing and Mixup/CutMix: every loss and the final state equal,
    bit for bit."""
    devices = 4
    scope = (
        models.BNScope.across(steps.AXIS)
        if bn_scope == "global"
        else runners.group_bn_scope(runner_name, devices, 2)
    )
    fields = dict(stage_sizes=(1,), num_classes=10, num_filters=4, bn_scope=scope)
    linen = models.create_model("resnet8", **fields)
    twin = recipe_nnx.FunctionalModel(
        functools.partial(recipe_nnx.create_model, "resnet8", in_features=1, **fields)
    )
    variables = steps.init_variables(linen, (8, 8, 1), seed=0)
    optimizer = recipe.build_optimizer(
        variables, batch_size=STEP_BATCH, steps_per_epoch=8, epochs=3, base_lr=0.2,
        warmup_epochs=1, weight_decay=5e-4, weight_decay_in_loss=True,
    )  # fmt: skip
    mix = steps.mixing_fn(
        0, num_classes=10, label_smoothing=0.1, per_device=False, mixup_alpha=0.2,
        cutmix_alpha=1.0,
    )  # fmt: skip
    runner = (
        runners.make_runner(runner_name, bn_group_size=2)
        if bn_scope == "group"
        else runners.make_runner(runner_name)
    )
    results = []
    for model in (linen, twin):
        train_step = runner.map(
            functools.partial(
                steps.train_step, model=model, tx=optimizer.tx, label_smoothing=0.1,
                skip_nonfinite=False, loss_penalty=optimizer.loss_penalty,
                axis_name=runner.axis_name, normalize=lambda x: x.astype(jnp.float32) / 255,
                mix=mix,
            )
        )  # fmt: skip
        state = runner.place(steps.TrainState.create(variables, optimizer.tx))
        losses = []
        for batch in _step_batches(24):
            split = jax.tree.map(lambda x: x.reshape(devices, -1, *x.shape[1:]), batch)
            state, metrics = train_step(state, runner.put(split))
            losses.append(float(runners.fetch_first(metrics)["loss"]))
        results.append((losses, jax.device_get(state)))
    (linen_losses, linen_state), (nnx_losses, nnx_state) = results
    assert nnx_losses == linen_losses and len(set(linen_losses)) > 1
    chex.assert_trees_all_equal(nnx_state, linen_state)


# ---- The trainer with `flax_api='nnx'` (tests/tiny_config.py; its resume: tests/test_trainer.py,
# its observers: tests/test_observers.py, two processes: tests/test_robustness.py).


def test_an_nnx_run_is_scored_and_loaded_as_an_nnx_model(finished_nnx_run, data_dir):
    workdir, result = finished_nnx_run
    config = tiny.make_config(data_dir, flax_api="nnx")
    assert "Flax NNX (recipe.nnx.ResNet" in describe.describe(config)
    scored = evaluation.evaluate_checkpoint(config, str(workdir))
    assert scored.pop("step") == tiny.TOTAL_STEPS
    chex.assert_trees_all_close(scored, result, rtol=1e-6)
    run = recipe.load_run(str(workdir))
    assert isinstance(run.model, recipe_nnx.ResNet) and run.step == tiny.TOTAL_STEPS
    chex.assert_trees_all_equal(recipe_nnx.to_linen_variables(run.model), run.variables)
    source = datasets.load_source("mnist5k", run.spec.test_split, data_dir)
    run.model.eval()
    predict = nnx.jit(lambda model, images: model(images).argmax(-1))
    correct = 0
    for batch in pipeline.eval_batches(
        source, run.spec, global_batch=500, process_index=0, process_count=1,
        local_device_count=1, image_size=run.config.image_size,
    ):  # fmt: skip
        predictions = predict(run.model, batch["image"][0])
        correct += int(np.sum((predictions == batch["label"][0]) * batch["mask"][0]))
    assert correct / len(source) == pytest.approx(result["accuracy"], abs=1e-9)


def test_an_nnx_run_under_shard_map_equals_pmap(finished_nnx_run, data_dir, tmp_path):
    uninterrupted, _ = finished_nnx_run
    loop.train_and_evaluate(
        tiny.make_config(data_dir, flax_api="nnx", runner="shard_map"), str(tmp_path)
    )
    chex.assert_trees_all_equal(
        checkpoint_state(tmp_path, tiny.TOTAL_STEPS),
        checkpoint_state(uninterrupted, tiny.TOTAL_STEPS),
    )
