"""Architecture and batch norm of recipe.models.

Deep models are checked with ``jax.eval_shape`` (no XLA compile); only width-4 models run.
"""

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import xla_flags

from recipe.models import (
    MODEL_NAMES,
    BasicBlock,
    BatchNorm,
    BNScope,
    BottleneckBlock,
    ResNet,
    create_model,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EPSILON = 1e-5

# torchvision's parameter counts (1000 classes). The CIFAR counts are He et al. 2016's with the
# zero-padding shortcut ("option A": 269,722 for ResNet-20, +97,216 per 6 layers) plus the two
# projection shortcuts used here: 1×1 convs 16→32 and 32→64 and their BNs,
# 512 + 2·32 + 2048 + 2·64 = 2,752.
PARAM_COUNTS = {
    "resnet8": 78_042,  # resnet20 less two 6-layer steps: 272,474 − 2 · 97,216
    "resnet20": 272_474,
    "resnet32": 466_906,
    "resnet44": 661_338,
    "resnet56": 855_770,
    "resnet110": 1_730_714,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def abstract_init(model: ResNet, images: jax.ShapeDtypeStruct) -> dict:
    """Shapes and dtypes of ``model``'s variables, without compiling anything."""
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def init_tiny(model: ResNet, images: jax.Array) -> dict:
    """Initialises ``model`` with one compile (unsafe_rbg keys compile faster than threefry)."""
    key = jax.random.key(0, impl="unsafe_rbg")
    return jax.jit(lambda k: model.init(k, images, train=False))(key)


def count_params(variables: dict) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def random_features(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Inputs with a non-zero mean and non-unit spread, so normalisation is visible."""
    return np.random.default_rng(seed).normal(1.5, 2.0, size=shape).astype(np.float32)


def numpy_batch_norm(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised x, per-feature mean and biased variance over all but the last axis."""
    x = x.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    return (x - mean) / np.sqrt(var + EPSILON), mean, var


def train_step(bn: BatchNorm, x: np.ndarray) -> tuple[jax.Array, dict]:
    """One training-mode application from freshly initialised variables."""
    variables = bn.init(jax.random.key(0), x, use_running_average=True)
    y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    return y, updates["batch_stats"]


# --- registry ----------------------------------------------------------------------------------


def test_model_names():
    assert MODEL_NAMES == tuple(PARAM_COUNTS)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="'resnet51'.*resnet20.*resnet152"):
        create_model("resnet51")


@pytest.mark.parametrize(
    ("name", "block_cls", "stage_sizes", "num_classes", "num_filters", "stem"),
    [
        ("resnet20", BasicBlock, (3, 3, 3), 10, 16, "cifar"),
        ("resnet110", BasicBlock, (18, 18, 18), 10, 16, "cifar"),
        ("resnet34", BasicBlock, (3, 4, 6, 3), 1000, 64, "imagenet"),
        ("resnet152", BottleneckBlock, (3, 8, 36, 3), 1000, 64, "imagenet"),
    ],
)
def test_registry_configuration(name, block_cls, stage_sizes, num_classes, num_filters, stem):
    model = create_model(name)
    assert model.block_cls is block_cls
    assert tuple(model.stage_sizes) == stage_sizes
    assert (model.num_classes, model.num_filters, model.stem) == (num_classes, num_filters, stem)
    assert (model.bn_scope, model.bn_momentum) == (BNScope.per_device(), 0.9)
    assert model.zero_init_last_bn


def test_kwargs_override_the_registry():
    model = create_model("resnet18", stem="cifar", num_classes=100, dtype=jnp.bfloat16)
    assert (model.stem, model.num_classes, model.dtype) == ("cifar", 100, jnp.bfloat16)
    assert tuple(model.stage_sizes) == (2, 2, 2, 2)
    images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    logits = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), abstract_init(model, images), images
    )
    chex.assert_shape(logits, (2, 100))
    chex.assert_type(logits, jnp.float32)


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_count_and_logits(name):
    model = create_model(name)
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = abstract_init(model, images)
    assert count_params(variables) == PARAM_COUNTS[name]
    logits, updates = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, images
    )
    chex.assert_shape(logits, (2, model.num_classes))
    chex.assert_type(logits, jnp.float32)
    assert jax.tree.structure(updates) == jax.tree.structure(
        {"batch_stats": variables["batch_stats"]}
    )


@functools.cache
def resnet50_intermediates_at_224() -> dict:
    """Abstract outputs of every ResNet-50 module for one 224×224 image."""
    model = create_model("resnet50")
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        ),
        abstract_init(model, images),
        images,
    )
    return state["intermediates"]


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        ("stem_conv", (1, 112, 112, 64)),
        ("stage1_block3", (1, 56, 56, 256)),
        # v1.5: the first 1×1 conv keeps the resolution, the 3×3 conv halves it.
        ("stage2_block1/conv1", (1, 56, 56, 128)),
        ("stage2_block1/conv2", (1, 28, 28, 128)),
        ("stage2_block1/proj_conv", (1, 28, 28, 512)),
        ("stage3_block6", (1, 14, 14, 1024)),
        ("stage4_block3", (1, 7, 7, 2048)),
    ],
)
def test_resnet50_feature_map_shapes_at_224(module, shape):
    node = resnet50_intermediates_at_224()
    for name in module.split("/"):
        node = node[name]
    chex.assert_shape(node["__call__"][0], shape)


def test_unknown_stem_raises():
    model = create_model("resnet20", stem="tiny")
    with pytest.raises(ValueError, match="stem 'tiny'"):
        abstract_init(model, jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))


# --- running tiny models -----------------------------------------------------------------------

# Width-4 models that really run (XLA compiles dominate): CIFAR ResNet-20 (basic blocks), and a
# bottleneck ResNet-50 cut to one block per stage (ImageNet stem, a projection in every stage).
TINY_MODELS = {
    "resnet20": ({"num_filters": 4}, 8),
    "resnet50": ({"num_filters": 4, "stage_sizes": (1, 1, 1, 1)}, 16),
}


@functools.cache
def tiny_model_and_variables(name: str) -> tuple[ResNet, dict, jax.Array]:
    """A ``TINY_MODELS`` entry, its variables and a batch of 4 images, built once per session."""
    overrides, side = TINY_MODELS[name]
    model = create_model(name, **overrides)
    images = jnp.asarray(random_features((4, side, side, 3)))
    key = jax.random.key(0, impl="unsafe_rbg")  # compiles several times faster than threefry
    variables = jax.jit(lambda k: model.init(k, images, train=False))(key)
    return model, variables, images


@functools.partial(jax.jit, static_argnums=(0, 3))
def apply_model(model: ResNet, variables: dict, images: jax.Array, train: bool):
    """Jitted ``model.apply``; compiled once per (model, shapes, train)."""
    return model.apply(variables, images, train=train, mutable=["batch_stats"] if train else False)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_model_trains_and_evaluates(name):
    model, variables, images = tiny_model_and_variables(name)

    logits, updates = apply_model(model, variables, images, True)
    chex.assert_shape(logits, (4, model.num_classes))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    stem_mean = updates["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(stem_mean, 0.0), "training mode must update the running mean"

    # Evaluation needs no mutable collection and ignores the rest of the batch; training does not.
    changed_others = images.at[1:].set(0.0)
    eval_logits = apply_model(model, variables, images, False)
    chex.assert_trees_all_close(
        apply_model(model, variables, changed_others, False)[0], eval_logits[0], atol=1e-6
    )
    assert not np.allclose(apply_model(model, variables, changed_others, True)[0][0], logits[0])


def test_bfloat16_computes_in_bfloat16_and_returns_float32_logits():
    float32_model, variables, images = tiny_model_and_variables("resnet20")
    model = float32_model.clone(dtype=jnp.bfloat16)

    logits, updates = apply_model(model, variables, images, True)
    chex.assert_type(logits, jnp.float32)
    chex.assert_type([updates["batch_stats"]["stem_bn"]["mean"]], jnp.float32)
    reference, _ = apply_model(float32_model, variables, images, True)
    chex.assert_trees_all_close(logits, reference, atol=0.05 * float(jnp.abs(reference).max()))

    abstract_variables = abstract_init(model, images)
    chex.assert_trees_all_equal_dtypes(abstract_variables, variables)  # float32 params and stats
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, capture_intermediates=True, mutable=True),
        abstract_variables,
        images,
    )
    for block in ("stem_conv", "stage1_block1", "stage3_block3"):
        chex.assert_type(state["intermediates"][block]["__call__"][0], jnp.bfloat16)


def test_resnet_rejects_bad_bn_settings_in_training():
    model = create_model("resnet20", num_filters=4, bn_scope=BNScope.ghost(3))
    images = jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.float32)
    message = "ghost_batch_size=3 does not divide the per-device batch size 4"
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(
            lambda x: model.init_with_output(jax.random.key(0), x, train=True, mutable=True),
            images,
        )


def test_resnet_ghost_batch_norm_matches_separate_forward_passes():
    """With ghost batches of 2, each half of the batch is normalised on its own."""
    model, variables, images = tiny_model_and_variables("resnet20")
    ghost_logits, _ = apply_model(model.clone(bn_scope=BNScope.ghost(2)), variables, images, True)
    halves = [apply_model(model, variables, images[i : i + 2], True)[0] for i in (0, 2)]
    chex.assert_trees_all_close(ghost_logits, jnp.concatenate(halves), atol=1e-5)


# --- BatchNorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 5), (8, 3, 3, 5)])
@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_per_device_batch_norm_matches_numpy(shape, momentum):
    x = random_features(shape)
    y, stats = train_step(BatchNorm(momentum=momentum), x)
    expected, mean, var = numpy_batch_norm(x)
    chex.assert_trees_all_close(y, expected, atol=1e-5)
    chex.assert_trees_all_close(stats["mean"], (1 - momentum) * mean, rtol=1e-5)
    chex.assert_trees_all_close(stats["var"], momentum + (1 - momentum) * var, rtol=1e-5)


@pytest.mark.parametrize("ghost_batch_size", [1, 2, 4, 8])
def test_ghost_batch_norm_normalises_each_group(ghost_batch_size):
    x = random_features((8, 3, 3, 5))
    y, stats = train_step(BatchNorm(bn_scope=BNScope.ghost(ghost_batch_size)), x)

    groups = [x[i : i + ghost_batch_size] for i in range(0, 8, ghost_batch_size)]
    normalised, means, variances = zip(*map(numpy_batch_norm, groups), strict=True)
    chex.assert_trees_all_close(y, np.concatenate(normalised), atol=1e-5)
    chex.assert_trees_all_close(stats["mean"], 0.1 * np.mean(means, axis=0), rtol=1e-5)
    chex.assert_trees_all_close(stats["var"], 0.9 + 0.1 * np.mean(variances, axis=0), rtol=1e-5)


def test_ghost_batch_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="ghost_batch_size=3 does not divide .* batch size 8"):
        train_step(BatchNorm(bn_scope=BNScope.ghost(3)), random_features((8, 5)))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ghost_batch_size": 2, "axis_name": "batch"}, "cannot be combined"),
        ({"ghost_batch_size": 0}, "must be positive"),
        ({"groups": [[0, 1], [2, 3]]}, "need the axis_name they index"),
    ],
)
def test_invalid_scopes_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        BNScope(**fields)


def test_scope_constructors():
    assert BNScope.per_device() == BNScope() == BatchNorm().bn_scope
    assert BNScope.ghost(4) == BNScope(ghost_batch_size=4)
    grouped = BNScope.across("batch", groups=[[0, 1], [2, 3]])
    assert (grouped.axis_name, grouped.groups) == ("batch", ((0, 1), (2, 3)))
    hash(grouped)  # a Flax module attribute: hashable, groups stored as tuples


def test_evaluation_uses_running_averages():
    bn = BatchNorm(use_running_average=True, bn_scope=BNScope.ghost(4))
    x = random_features((3, 5))  # Any batch size: ghost batches only matter in training.
    rng = np.random.default_rng(1)
    mean, var = rng.normal(size=5), rng.uniform(0.5, 2.0, size=5)
    scale, bias = rng.normal(size=5), rng.normal(size=5)
    variables = {
        "params": {"scale": scale, "bias": bias},
        "batch_stats": {"mean": mean, "var": var},
    }
    y = bn.apply(jax.tree.map(jnp.float32, variables), x)
    chex.assert_trees_all_close(y, scale * (x - mean) / np.sqrt(var + EPSILON) + bias, atol=1e-5)


def test_init_does_not_update_running_averages():
    bn = BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), random_features((8, 5)))
    chex.assert_trees_all_equal(
        variables["batch_stats"], {"mean": jnp.zeros(5), "var": jnp.ones(5)}
    )
    chex.assert_trees_all_equal(variables["params"], {"scale": jnp.ones(5), "bias": jnp.zeros(5)})


def test_bfloat16_batch_norm_computes_statistics_in_float32():
    x = jnp.asarray(random_features((8, 4, 4, 5))).astype(jnp.bfloat16)
    y, stats = train_step(BatchNorm(dtype=jnp.bfloat16), x)
    chex.assert_type(y, jnp.bfloat16)
    _, mean, var = numpy_batch_norm(np.asarray(x, np.float32))
    chex.assert_type([stats["mean"], stats["var"]], jnp.float32)
    # bfloat16 arithmetic would be off by ~1e-2 relative.
    chex.assert_trees_all_close(stats["mean"], 0.1 * mean, rtol=1e-5)
    chex.assert_trees_all_close(stats["var"], 0.9 + 0.1 * var, rtol=1e-5)


CROSS_DEVICE_SCRIPT = textwrap.dedent(
    """
    import jax
    import numpy as np
    from recipe.models import BatchNorm, BNScope

    assert jax.device_count() == 2, jax.devices()
    x = np.random.default_rng(0).normal(1.5, 2.0, size=(2, 4, 3, 3, 5)).astype(np.float32)
    variables = BatchNorm().init(jax.random.key(0), x[0], use_running_average=True)

    def train(bn):
        def apply(v, x):
            return bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])

        y, updates = jax.pmap(apply, axis_name="batch", in_axes=(None, 0))(variables, x)
        return np.asarray(y).reshape(8, 3, 3, 5), jax.device_get(updates["batch_stats"])

    y_cross, stats_cross = train(BatchNorm(bn_scope=BNScope.across("batch")))
    y_local, _ = train(BatchNorm())
    y_all, updates = BatchNorm().apply(
        variables, x.reshape(8, 3, 3, 5), use_running_average=False, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(y_cross, y_all, atol=1e-5)
    for device in range(2):
        for name in ("mean", "var"):
            np.testing.assert_allclose(
                stats_cross[name][device], updates["batch_stats"][name], rtol=1e-5
            )
    # Per-device statistics differ, so the check above is not vacuous.
    assert not np.allclose(y_local, y_all, atol=1e-3)
    print("cross-device BN ok")
    """
)


def test_cross_device_batch_norm_equals_batch_norm_of_the_whole_batch():
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(2)
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", CROSS_DEVICE_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cross-device BN ok" in result.stdout
