"""Initial weights of the models, linen's and NNX's, against Goyal et al. 2017, §5.1.

Sampling-error bounds: for N i.i.d. draws from N(0, σ²) the sample mean has standard deviation
σ/√N and the sample standard deviation has relative standard deviation ≈ 1/√(2N). Checks allow
``NUM_STANDARD_ERRORS`` = 5 standard errors, so each has a false-failure probability below 1e-6
(the keys are fixed, so the tests are deterministic anyway).
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from recipe import nnx as recipe_nnx
from recipe.inits import bn_scale_init, conv_kernel_init, fc_kernel_init
from recipe.models import LAST_BN_NAME, create_model

NUM_STANDARD_ERRORS = 5.0
# Kernels with at least this many weights must contain a draw beyond 3σ: an untruncated normal
# misses it with probability 0.9973^4096 < 2e-5, while jax's he_normal (a normal truncated at 2σ,
# then rescaled) never exceeds 2.28σ.
MIN_WEIGHTS_FOR_TAIL_CHECK = 4096
TAIL_IN_STDS = 3.0


def assert_normal_sample(weights: jax.Array, expected_std: float, label: str) -> None:
    """Asserts that ``weights`` look like i.i.d. draws from N(0, expected_std²), not truncated."""
    sample = np.asarray(weights, np.float64).ravel()
    size = sample.size
    mean_bound = NUM_STANDARD_ERRORS * expected_std / math.sqrt(size)
    assert abs(sample.mean()) < mean_bound, f"{label}: mean {sample.mean():.3g} > {mean_bound:.3g}"
    relative_std_error = sample.std() / expected_std - 1.0
    std_bound = NUM_STANDARD_ERRORS / math.sqrt(2 * size)
    assert abs(relative_std_error) < std_bound, (
        f"{label}: std {sample.std():.5g}, expected {expected_std:.5g} (±{std_bound:.2%})"
    )
    if size >= MIN_WEIGHTS_FOR_TAIL_CHECK:
        largest = np.abs(sample).max() / expected_std
        assert largest > TAIL_IN_STDS, f"{label}: max |w| = {largest:.2f}σ, looks truncated"


# Small variants of each block type: (name, overrides, number of residual blocks).
SMALL_MODELS = {
    "resnet20": ({"num_filters": 4}, 9),
    "resnet50": ({"num_filters": 4, "stage_sizes": (1, 1)}, 2),
}


FLAX_APIS = ("linen", "nnx")


def init_variables(name: str, key: jax.Array, flax_api: str = "linen", **kwargs) -> dict:
    """Initialises a registered model, linen's or NNX's (jitted: one XLA compile instead of one
    per op); an NNX model's state as linen variables (`recipe.nnx.to_linen_variables`)."""
    if flax_api == "nnx":
        model = recipe_nnx.FunctionalModel(
            functools.partial(recipe_nnx.create_model, name, **kwargs)
        )
    else:
        model = create_model(name, **kwargs)
    images = jnp.zeros((1, 32, 32, 3))
    return jax.jit(lambda k: model.init(k, images, train=False))(key)


@functools.cache
def small_model_variables(name: str, zero_init_last_bn: bool, flax_api: str = "linen") -> dict:
    """Variables of a ``SMALL_MODELS`` entry, initialised once per test session.

    γ, β and the running statistics do not depend on the key; an ``unsafe_rbg`` key compiles
    several times faster than the default threefry.
    """
    overrides, _ = SMALL_MODELS[name]
    key = jax.random.key(0, impl="unsafe_rbg")
    return init_variables(name, key, flax_api, zero_init_last_bn=zero_init_last_bn, **overrides)


def bn_module_paths(variables: dict) -> set[tuple[str, ...]]:
    """Paths of the modules that own ``batch_stats``, i.e. of the BN layers."""
    return {path[:-1] for path in traverse_util.flatten_dict(variables["batch_stats"])}


@pytest.fixture(scope="module", params=FLAX_APIS)
def resnet50_params(request) -> dict:
    """Full-width ResNet-50 params from the default (threefry) key, as users get them: linen's
    `init`, and the NNX model's own draw."""
    return init_variables("resnet50", jax.random.key(0), request.param)["params"]


@pytest.mark.parametrize("shape", [(7, 7, 3, 64), (3, 3, 64, 64), (1, 1, 256, 512)])
def test_conv_kernel_init_is_untruncated_normal_with_fan_out_std(shape):
    kh, kw, _, out_channels = shape
    weights = conv_kernel_init()(jax.random.key(1), shape)
    assert_normal_sample(weights, math.sqrt(2.0 / (kh * kw * out_channels)), str(shape))


@pytest.mark.parametrize("stddev", [0.01, 0.1])
def test_fc_kernel_init_uses_stddev_not_variance(stddev):
    weights = fc_kernel_init(stddev)(jax.random.key(2), (512, 100))
    assert_normal_sample(weights, stddev, f"stddev={stddev}")


@pytest.mark.parametrize(("zero", "expected"), [(False, 1.0), (True, 0.0)])
def test_bn_scale_init(zero, expected):
    chex.assert_trees_all_equal(bn_scale_init(zero)(jax.random.key(0), (5,)), jnp.full(5, expected))


def test_resnet50_conv_kernels_follow_he_normal_fan_out(resnet50_params):
    kernels = {
        "/".join(path): weights
        for path, weights in traverse_util.flatten_dict(resnet50_params).items()
        if path[-1] == "kernel" and weights.ndim == 4
    }
    # Stem + 16 bottlenecks × 3 convs + 4 projections.
    assert len(kernels) == 1 + 16 * 3 + 4
    for label, weights in kernels.items():
        kh, kw, _, out_channels = weights.shape
        assert weights.size >= MIN_WEIGHTS_FOR_TAIL_CHECK, label
        assert_normal_sample(weights, math.sqrt(2.0 / (kh * kw * out_channels)), label)


def test_resnet50_conv_layers_have_no_bias(resnet50_params):
    for path in traverse_util.flatten_dict(resnet50_params):
        if "conv" in path[-2]:
            assert path[-1] == "kernel", "/".join(path)


def test_resnet50_fc_is_normal_with_std_0_01_and_zero_bias(resnet50_params):
    fc = resnet50_params["fc"]
    chex.assert_shape(fc["kernel"], (2048, 1000))
    assert_normal_sample(fc["kernel"], 0.01, "fc/kernel")
    chex.assert_trees_all_equal(fc["bias"], jnp.zeros(1000))


def test_resnet50_gamma_is_zero_in_the_16_last_bns_and_one_elsewhere(resnet50_params):
    scales = {
        path[:-1]: scale
        for path, scale in traverse_util.flatten_dict(resnet50_params).items()
        if path[-1] == "scale"
    }
    assert sum(path[-1] == LAST_BN_NAME for path in scales) == 16
    for path, scale in scales.items():
        expected_gamma = 0.0 if path[-1] == LAST_BN_NAME else 1.0
        chex.assert_trees_all_equal(scale, jnp.full_like(scale, expected_gamma))


@pytest.mark.parametrize("flax_api", FLAX_APIS)
@pytest.mark.parametrize("zero_init_last_bn", [True, False])
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_bn_gamma_is_zero_exactly_in_the_last_bn_of_each_block(name, zero_init_last_bn, flax_api):
    variables = small_model_variables(name, zero_init_last_bn, flax_api)
    _, num_blocks = SMALL_MODELS[name]
    bn_paths = bn_module_paths(variables)
    last_bn_paths = {path for path in bn_paths if path[-1] == LAST_BN_NAME}
    blocks = {module for module in variables["params"] if module.startswith("stage")}
    assert len(blocks) == num_blocks
    assert last_bn_paths == {(block, LAST_BN_NAME) for block in blocks}

    params = traverse_util.flatten_dict(variables["params"])
    stats = traverse_util.flatten_dict(variables["batch_stats"])
    scale_paths = {path[:-1] for path in params if path[-1] == "scale"}
    assert scale_paths == bn_paths, "every γ must belong to a module owning batch_stats"
    params_and_stats = {**params, **stats}
    for path in bn_paths:
        assert {key[-1] for key in params if key[:-1] == path} == {"scale", "bias"}, path
        gamma = 0.0 if zero_init_last_bn and path in last_bn_paths else 1.0
        for variable, value in {"scale": gamma, "bias": 0.0, "mean": 0.0, "var": 1.0}.items():
            leaf = params_and_stats[(*path, variable)]
            chex.assert_trees_all_equal(leaf, jnp.full_like(leaf, value))


@pytest.mark.parametrize("zero_init_last_bn", [True, False])
def test_zero_gamma_makes_every_block_start_as_its_shortcut(zero_init_last_bn):
    """With γ = 0 in bn_last each block outputs ReLU(shortcut(x)) at init (Goyal §5.1)."""
    overrides, _ = SMALL_MODELS["resnet20"]
    model = create_model("resnet20", zero_init_last_bn=zero_init_last_bn, **overrides)
    variables = small_model_variables("resnet20", zero_init_last_bn)
    images = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
    _, state = model.apply(
        variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    outputs = state["intermediates"]
    block_input = jax.nn.relu(outputs["stem_bn"]["__call__"][0])
    matches_shortcut = []
    for stage in (1, 2, 3):
        for block in (1, 2, 3):
            block_outputs = outputs[f"stage{stage}_block{block}"]
            shortcut = (
                block_outputs["proj_bn"]["__call__"][0] if block == 1 < stage else block_input
            )
            block_output = block_outputs["__call__"][0]
            matches_shortcut.append(bool(jnp.allclose(block_output, jax.nn.relu(shortcut))))
            block_input = block_output
    assert matches_shortcut == [zero_init_last_bn] * 9
