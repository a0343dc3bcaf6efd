"""Precise BN against the statistics of all the batches' examples at once, in float64.

The reference is independent of the estimator. In precise BN (as in fvcore's) each batch runs
through the model in training mode on its own, so a BN layer's input on batch b is what the
earlier layers produce when normalised with batch b's statistics. The reference records every
BN layer's inputs on every batch (flax's `intercept_methods`), concatenates them over batches
(and devices) and takes E[x] and E[x²] − E[x]² over all of them in float64: the statistics of one
forward pass over the concatenated examples, layer by layer. For the first BN layer, whose
input does not depend on any normalisation, that is also literally one pass of the model over
the concatenated batches. Ghost-batch BN's statistic is the mean over its n-example groups, so
its reference is the mean over all groups of all batches.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recipe import models, precise_bn

AXIS = "devices"
MOMENTUM = 0.9
RTOL, ATOL = 2e-5, 1e-6


PER_DEVICE = models.BNScope.per_device()


def tiny_resnet(momentum=MOMENTUM, scope=PER_DEVICE):
    return models.ResNet(
        stage_sizes=(1,),
        block_cls=models.BasicBlock,
        num_classes=3,
        num_filters=4,
        stem="cifar",
        bn_momentum=momentum,
        zero_init_last_bn=False,
        bn_scope=scope,
    )


def train_apply(model):
    return functools.partial(model.apply, train=True, mutable=["batch_stats"])


def make_batches(shape, seed=0):
    """Batches whose means and spreads differ from batch to batch (leading axis: the batch)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(*shape, 6, 6, 2)).astype(np.float32)
    batch = np.arange(shape[0], dtype=np.float32).reshape(-1, *[1] * (len(shape) + 2))
    return images * (1.0 + 0.3 * batch) + 0.7 * batch


def make_variables(model, seed=0):
    variables = model.init(jax.random.key(seed), jnp.zeros((2, 6, 6, 2)), train=False)
    # Stale running averages, which the precise statistics must not depend on.
    stale = jax.tree_util.tree_map(lambda x: x + 3.0, variables["batch_stats"])
    return {"params": variables["params"], "batch_stats": stale}


def bn_inputs(model, variables, images):
    """{BN layer path: its float64 input, features last} of one training-mode pass."""
    return {
        tuple(path.split("/")): np.asarray(x, np.float64)
        for path, x in _bn_inputs(model, variables, images).items()
    }


@functools.partial(jax.jit, static_argnums=0)
def _bn_inputs(model, variables, images):
    recorded = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(
            context.module, (models.BatchNorm, nn.BatchNorm)
        ):
            recorded["/".join(context.module.path)] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        train_apply(model)(variables, images)
    return recorded


def reference_stats(model, variables, units, ghost_batch_size=None):
    """Statistics of every BN layer's inputs over all `units` (the slices BN normalises over
    in training: one device's batch, or a global batch), as a batch_stats tree."""
    inputs = [bn_inputs(model, variables, unit) for unit in units]
    stats = {}
    for path in inputs[0]:
        features = inputs[0][path].shape[-1]
        if ghost_batch_size is None:
            x = np.concatenate([r[path].reshape(-1, features) for r in inputs])
            mean, var = x.mean(axis=0), x.var(axis=0)
        else:  # the mean over every ghost batch of its statistics
            groups = np.concatenate(
                [r[path].reshape(-1, ghost_batch_size, r[path][0].size) for r in inputs]
            ).reshape(-1, ghost_batch_size, *inputs[0][path].shape[1:])
            flat = groups.reshape(groups.shape[0], -1, features)
            mean, var = flat.mean(axis=1).mean(axis=0), flat.var(axis=1).mean(axis=0)
        node = stats
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = {"mean": mean, "var": var}
    return stats


def assert_stats_close(actual, expected):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    expected_leaves = jax.tree_util.tree_leaves_with_path(expected)
    for (path, want), got in zip(expected_leaves, jax.tree_util.tree_leaves(actual), strict=True):
        np.testing.assert_allclose(
            np.asarray(got), want, rtol=RTOL, atol=ATOL, err_msg=jax.tree_util.keystr(path)
        )


@pytest.mark.parametrize(
    "scope, variance",
    [(models.BNScope.per_device(), "population"), (models.BNScope.ghost(4), "batch_mean")],
    ids=["device scope", "ghost batches"],
)
def test_one_device_equals_the_statistics_of_all_batches_at_once(scope, variance):
    model = tiny_resnet(scope=scope)
    variables = make_variables(model)
    images = make_batches((4, 8))  # N = 4 batches of 8
    stats = precise_bn.precise_batch_stats(
        train_apply(model), variables, list(images), momentum=MOMENTUM, variance=variance
    )
    assert_stats_close(stats, reference_stats(model, variables, images, scope.ghost_batch_size))


def test_first_layer_equals_one_model_pass_over_the_concatenated_batches():
    model = tiny_resnet()
    variables = make_variables(model)
    images = make_batches((4, 8))
    stats = precise_bn.precise_batch_stats(
        train_apply(model), variables, list(images), momentum=MOMENTUM
    )
    _, one_pass = train_apply(tiny_resnet(momentum=0.0))(variables, images.reshape(32, 6, 6, 2))
    assert_stats_close(stats["stem_bn"], jax.device_get(one_pass["batch_stats"]["stem_bn"]))


@pytest.mark.parametrize(
    "scope, variance, unit",
    [
        (models.BNScope.per_device(), "population", 4),
        (models.BNScope.ghost(2), "batch_mean", 4),
        (models.BNScope.across(AXIS), "population", 16),
        (models.BNScope.across(AXIS, groups=models.device_groups(4, 2)), "population", 8),
    ],
    ids=["device scope", "ghost batches", "global scope", "groups of 2 devices"],
)
def test_four_devices_equal_the_statistics_of_every_devices_batches(scope, variance, unit):
    devices = jax.devices()[:4]
    assert len(devices) == 4
    model = tiny_resnet(scope=scope)
    variables = make_variables(model)
    images = make_batches((3, 4, 4))  # N = 3 global batches, 4 devices × 4 examples
    pbn = precise_bn.precise_bn_estimator(
        train_apply(model), momentum=MOMENTUM, variance=variance, axis_name=AXIS
    )
    replicated = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), variables)
    state = jax.pmap(pbn.init, axis_name=AXIS, devices=devices)(replicated["batch_stats"])
    update = jax.pmap(pbn.update, axis_name=AXIS, devices=devices)
    for batch in images:
        state = update(state, replicated, batch)
    stats = jax.device_get(jax.pmap(pbn.result, axis_name=AXIS, devices=devices)(state))
    per_device = [jax.tree_util.tree_map(lambda x, i=i: x[i], stats) for i in range(4)]
    for device_stats in per_device[1:]:  # every device holds the same statistics
        jax.tree_util.tree_map(np.testing.assert_array_equal, device_stats, per_device[0])
    # BN normalises units of `unit` consecutive examples: a device's 4, a group's 8 or all 16.
    units = images.reshape(48 // unit, unit, 6, 6, 2)
    unit_model = model if scope.axis_name is None else tiny_resnet()
    expected = reference_stats(unit_model, variables, units, scope.ghost_batch_size)
    assert_stats_close(per_device[0], expected)


def test_batch_mean_is_the_mean_of_the_batch_statistics_and_differs_from_population():
    model = tiny_resnet()
    variables = make_variables(model)
    images = make_batches((3, 8))
    apply_fn = train_apply(model)
    batch_mean = precise_bn.precise_batch_stats(
        apply_fn, variables, list(images), momentum=MOMENTUM, variance="batch_mean"
    )
    per_batch = [reference_stats(model, variables, batch[None]) for batch in images]
    assert_stats_close(batch_mean, jax.tree_util.tree_map(lambda *s: sum(s) / 3, *per_batch))
    population = precise_bn.precise_batch_stats(
        apply_fn, variables, list(images), momentum=MOMENTUM
    )
    # The batch means differ, so the population variance is the larger by their variance.
    stem_var = population["stem_bn"]["var"] - batch_mean["stem_bn"]["var"]
    means = np.stack([s["stem_bn"]["mean"] for s in per_batch])
    np.testing.assert_allclose(stem_var, means.var(axis=0), rtol=1e-4)
    assert np.all(stem_var > 1e-3)


class FlaxModel(nn.Module):
    """A user's own model: flax.linen.BatchNorm (momentum 0.99 by default), not recipe's."""

    momentum: float = 0.99

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(3, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x))
        x = nn.Dense(4)(x.mean(axis=(1, 2)))
        return nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x)


def test_works_on_a_flax_linen_batchnorm_model():
    variables = FlaxModel().init(jax.random.key(1), jnp.zeros((2, 6, 6, 2)), train=False)
    images = make_batches((5, 6), seed=1)
    stats = precise_bn.precise_batch_stats(
        train_apply(FlaxModel()), variables, list(images), momentum=0.99
    )
    expected = reference_stats(FlaxModel(), variables, images)
    assert_stats_close(stats, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"momentum": 1.0}, "momentum must be a number in [0, 1), got 1.0"),
        ({"momentum": -0.1}, "momentum must be a finite number >= 0"),
        ({"momentum": 0.9, "variance": "unbiased"}, "variance must be one of 'population', "),
    ],
)
def test_bad_arguments_raise_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        precise_bn.precise_bn_estimator(train_apply(tiny_resnet()), **kwargs)


def test_no_batches_and_foreign_statistics_raise():
    model = tiny_resnet()
    variables = make_variables(model)
    with pytest.raises(ValueError, match="at least one batch"):
        precise_bn.precise_batch_stats(train_apply(model), variables, [], momentum=MOMENTUM)
    pbn = precise_bn.precise_bn_estimator(train_apply(model), momentum=MOMENTUM)
    with pytest.raises(ValueError, match="stem_bn/count is neither 'mean' nor 'var'"):
        pbn.init({"stem_bn": {"mean": jnp.zeros(2), "var": jnp.ones(2), "count": jnp.zeros(())}})
