"""Which parameters get weight decay (Goyal et al. §5.1; "no bias decay" from He et al. 2019).

Goyal et al. apply λ = 1e-4 to every weight except BatchNorm's γ and β. A mask written against
parameter *names* breaks as soon as a module is renamed (Flax calls γ `scale`, PyTorch `weight`),
so BatchNorm layers are found by what they *are*: a module that owns running statistics (the
`batch_stats` collection in linen, `nnx.BatchStat` variables in NNX). Every parameter of such a
module is excluded; every other parameter is decayed, optionally except biases.

Use the mask in front of the momentum, as coupled L2 (the gradient of (λ/2)‖w‖² added to the loss
gradient, Remark 1):

    optax.chain(optax.add_decayed_weights(1e-4, mask=weight_decay_mask(variables)),
                optax.sgd(schedule, momentum=0.9, nesterov=True))
"""

import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax

Path = tuple[str, ...]


class DecayReport(NamedTuple):
    """Parameter paths ('/'-joined) that are decayed and that are not."""

    decayed: list[str]
    not_decayed: list[str]


def weight_decay_mask(model_or_variables: Any, *, decay_bias: bool = True) -> Any:
    """Where weight decay applies: True for decayed parameters.

    False for every parameter of a BatchNorm layer (γ and β, whatever the layer is called) and,
    with `decay_bias=False`, for every parameter named `bias`.

    Args:
      model_or_variables: a Flax linen variables dict (with 'params' and, for models with
        BatchNorm, 'batch_stats'), or a Flax NNX module.
      decay_bias: False excludes all biases too ("no bias decay").

    Returns:
      For linen, a bool dict shaped like `variables['params']`. For NNX, a function from a
      parameter pytree to its bool mask: `nnx.Optimizer` hands the transformation `nnx.Param`
      variables at init and plain arrays at update, and a callable mask fits both. Either goes
      into `optax.add_decayed_weights(λ, mask=...)`.

    >>> import flax.linen as nn, jax.numpy as jnp
    >>> model = nn.Sequential([nn.Dense(2), nn.BatchNorm(use_running_average=True)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> weight_decay_mask(variables)
    {'layers_0': {'bias': True, 'kernel': True}, 'layers_1': {'bias': False, 'scale': False}}
    """
    params, mask_fn = _params_and_mask_fn(model_or_variables, decay_bias)
    return mask_fn if _is_nnx_module(model_or_variables) else mask_fn(params)


def decay_report(model_or_variables: Any, *, decay_bias: bool = True) -> DecayReport:
    """Lists the parameters `weight_decay_mask` decays and those it leaves alone.

    >>> import flax.linen as nn, jax.numpy as jnp
    >>> variables = nn.BatchNorm(use_running_average=True).init(
    ...     jax.random.key(0), jnp.ones((1, 3)))
    >>> decay_report(variables)
    DecayReport(decayed=[], not_decayed=['bias', 'scale'])
    """
    params, mask_fn = _params_and_mask_fn(model_or_variables, decay_bias)
    report = DecayReport(decayed=[], not_decayed=[])
    for path, decayed in jax.tree_util.tree_leaves_with_path(mask_fn(params)):
        (report.decayed if decayed else report.not_decayed).append("/".join(_names(path)))
    return report


def _is_nnx_module(value: Any) -> bool:
    """Whether `value` is a Flax NNX module, without importing `flax.nnx` where nothing has: an
    NNX module exists only once it is imported, and linen programs (the trainer, its data
    workers) are spared its import (a fifth of a second, with IPython and treescope)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(value, nnx.Module)


def _params_and_mask_fn(model_or_variables: Any, decay_bias: bool) -> tuple[Any, Any]:
    if _is_nnx_module(model_or_variables):
        from flax import nnx

        params = nnx.state(model_or_variables, nnx.Param)
        stats = nnx.state(model_or_variables, nnx.BatchStat)
    elif isinstance(model_or_variables, Mapping) and "params" in model_or_variables:
        params = model_or_variables["params"]
        stats = model_or_variables.get("batch_stats", {})
    else:
        raise ValueError(
            "weight_decay_mask needs a Flax NNX module or a linen variables dict with a 'params' "
            "entry (the whole `model.init(...)` output, so BatchNorm layers can be found through "
            f"'batch_stats'); got {type(model_or_variables).__name__}"
        )
    norm_modules = {_names(path)[:-1] for path, _ in jax.tree_util.tree_leaves_with_path(stats)}

    def decays(path: jax.tree_util.KeyPath, _: Any) -> bool:
        names = _names(path)
        if names[:-1] in norm_modules:
            return False
        return decay_bias or names[-1] != "bias"

    return params, lambda tree: jax.tree_util.tree_map_with_path(decays, tree)


def _names(path: jax.tree_util.KeyPath) -> Path:
    """Module path + leaf name of a pytree key path (NNX's trailing `.value` dropped)."""
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            names.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            names.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            names.append(key.name)
        else:
            names.append(str(key))
    if isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        names.pop()
    return tuple(names)
