"""The recipe in Flax NNX: the ResNets and their BatchNorm as NNX modules (`nnx.Module`),
converters to and from linen's variables, and the modern extras on NNX models.

The NNX face of the library shares every rule with the linen one (``recipe.models``): the
architecture table (`models.architecture`), the block layout (`models.block_plan`), the Goyal
initialisers (``recipe.inits``) and the BatchNorm computation with its scopes
(`models.batch_norm`: per device, across a mapped axis or groups of its devices, ghost
batches). Modules and parameters carry the linen model's names, so the NNX model's state is
the linen model's variables, path for path: `params["stage2_block1"]["bn_last"]["scale"]` is
`model.stage2_block1.bn_last.scale`. That makes the converters a renaming of containers
(`to_linen_variables`, `from_linen_variables`), the weight-decay mask the same split
(`recipe.weight_decay_mask` on either), and checkpoints of either API the same files.

Train and evaluation mode are NNX's: `model.train()` normalises with batch statistics and
updates the running averages, `model.eval()` uses the running averages.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> model = create_model("resnet20", num_filters=4, in_features=1, rngs=nnx.Rngs(0))
>>> model.train()  # batch statistics, running averages updated
>>> model(jnp.ones((4, 28, 28, 1))).shape
(4, 10)
>>> sorted(to_linen_variables(model))
['batch_stats', 'params']

Functional code written for linen's `init`/`apply` pair, such as a train step mapped with
`jax.pmap` or `jax.shard_map`, runs these models through `FunctionalModel`: `nnx.split` and
`nnx.merge`, the form Flax's performance guide advises for hot loops.
"""

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype, Initializer

from recipe import models
from recipe import precise_bn as precise_bn_lib
from recipe.inits import bn_scale_init, conv_kernel_init, fc_kernel_init
from recipe.models import LAST_BN_NAME, BNScope

_PER_DEVICE = BNScope.per_device()
_GAMMA_ONE = bn_scale_init()

__all__ = [
    "BasicBlock",
    "BatchNorm",
    "BottleneckBlock",
    "FunctionalModel",
    "ResNet",
    "create_model",
    "fixed_batch_loss",
    "from_linen_variables",
    "precise_batch_stats",
    "to_linen_variables",
]


class BatchNorm(nnx.Module):
    """Batch normalisation with per-device, cross-device, grouped or ghost-batch statistics:
    the NNX twin of :class:`recipe.models.BatchNorm`, computing the same
    (:func:`recipe.models.batch_norm`).

    Owns the `nnx.Param`s `scale` (γ) and `bias` (β) and the `nnx.BatchStat`s `mean` and `var`
    (float32 whatever `dtype` is). In training mode (`use_running_average=False`, which
    `model.train()` sets) it normalises with the statistics of the `bn_scope`'s batch and
    moves the running averages towards them: `running ← momentum · running + (1 − momentum) ·
    batch statistic`; in evaluation mode (`model.eval()`) it normalises with the running
    averages.

    Args:
        num_features: Features (the input's last axis).
        bn_scope: Which examples share the statistics (:class:`recipe.BNScope`).
        momentum: Decay of the running averages (0.9, Goyal §2.3).
        epsilon: Added to the variance.
        dtype: Output dtype; None keeps the input's.
        param_dtype: Dtype of γ and β.
        scale_init: Initializer of γ (:func:`recipe.inits.bn_scale_init`).
        bias_init: Initializer of β.
        use_running_average: The initial mode (False: training).
        rngs: For the initializers (γ and β are constants: nothing is drawn).

    >>> import jax.numpy as jnp
    >>> bn = BatchNorm(2, bn_scope=BNScope.ghost(2), rngs=nnx.Rngs(0))
    >>> bn(jnp.arange(8.0).reshape(4, 2))[:, 0].round(3).tolist()
    [-1.0, 1.0, -1.0, 1.0]
    """

    def __init__(
        self,
        num_features: int,
        *,
        bn_scope: BNScope = _PER_DEVICE,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        scale_init: Initializer = _GAMMA_ONE,
        bias_init: Initializer = jax.nn.initializers.zeros,
        use_running_average: bool = False,
        rngs: nnx.Rngs,
    ):
        key = rngs.params()
        self.scale = nnx.Param(scale_init(key, (num_features,), param_dtype))
        self.bias = nnx.Param(bias_init(key, (num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.bn_scope, self.momentum, self.epsilon = bn_scope, momentum, epsilon
        self.dtype = dtype
        self.use_running_average = use_running_average

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalises `x` of shape `(batch, ..., features)` (`use_running_average` overrides the
        mode for this call)."""
        if use_running_average is None:
            use_running_average = self.use_running_average
        y, mean, var = models.batch_norm(
            x,
            scale=self.scale[...],
            bias=self.bias[...],
            running_mean=self.mean[...],
            running_var=self.var[...],
            use_running_average=use_running_average,
            bn_scope=self.bn_scope,
            momentum=self.momentum,
            epsilon=self.epsilon,
            dtype=self.dtype,
        )
        if not use_running_average:
            self.mean[...], self.var[...] = mean, var
        return y


def _conv(dtype: Dtype, rngs: nnx.Rngs) -> Callable[..., nnx.Conv]:
    """Conv factory of the recipe's ResNets: no bias (a BN follows), He-normal fan-out."""
    return functools.partial(
        nnx.Conv,
        use_bias=False,
        kernel_init=conv_kernel_init(),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


class _Block(nnx.Module):
    """What both residual blocks share: the projection shortcut when the shape changes."""

    def _shortcut_layers(
        self, in_features: int, out_features: int, strides: int, conv, norm
    ) -> None:
        if models.needs_projection(in_features, out_features, strides):
            self.proj_conv = conv(in_features, out_features, (1, 1), strides, padding=0)
            self.proj_bn = norm(out_features)
        else:
            self.proj_conv = self.proj_bn = None

    def _shortcut(self, x: jax.Array) -> jax.Array:
        return x if self.proj_conv is None else self.proj_bn(self.proj_conv(x))


class BasicBlock(_Block):
    """ResNet v1 basic block, :class:`recipe.models.BasicBlock` in NNX: two 3×3 convs (the
    first strided), `bn_last`'s γ = 0 at init with `zero_init_last_bn`, and a projection
    shortcut (`proj_conv`, `proj_bn`) when the width or the resolution changes.

    Args:
        in_features: Input channels.
        filters: Output channels.
        strides: Stride of the first conv (and of the projection).
        conv: Conv factory (`nnx.Conv` with the kernel init, no bias, dtype bound).
        norm: BN factory (:class:`BatchNorm` with its scope and momentum bound), of the
            number of features.
        zero_init_last_bn: Whether γ of `bn_last` starts at 0 (Goyal §5.1).
    """

    expansion = 1

    def __init__(
        self,
        in_features: int,
        filters: int,
        strides: int,
        *,
        conv: Callable[..., nnx.Conv],
        norm: Callable[..., BatchNorm],
        zero_init_last_bn: bool = True,
    ):
        self._shortcut_layers(in_features, filters, strides, conv, norm)
        self.conv1 = conv(in_features, filters, (3, 3), strides, padding=1)
        self.bn1 = norm(filters)
        self.conv2 = conv(filters, filters, (3, 3), 1, padding=1)
        setattr(self, LAST_BN_NAME, norm(filters, scale_init=bn_scale_init(zero_init_last_bn)))

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = self._shortcut(x)
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = getattr(self, LAST_BN_NAME)(self.conv2(y))
        return nnx.relu(y + shortcut)


class BottleneckBlock(_Block):
    """ResNet v1.5 bottleneck block, :class:`recipe.models.BottleneckBlock` in NNX: 1×1, 3×3
    (strided, Goyal §5.1), 1×1 convs with 4× expansion, `bn_last`'s γ = 0 at init with
    `zero_init_last_bn`, and a projection shortcut when the shape changes. Arguments as
    :class:`BasicBlock`'s; the block outputs `4 · filters` channels.
    """

    expansion = 4

    def __init__(
        self,
        in_features: int,
        filters: int,
        strides: int,
        *,
        conv: Callable[..., nnx.Conv],
        norm: Callable[..., BatchNorm],
        zero_init_last_bn: bool = True,
    ):
        out_features = filters * self.expansion
        self._shortcut_layers(in_features, out_features, strides, conv, norm)
        self.conv1 = conv(in_features, filters, (1, 1), 1, padding=0)
        self.bn1 = norm(filters)
        self.conv2 = conv(filters, filters, (3, 3), strides, padding=1)
        self.bn2 = norm(filters)
        self.conv3 = conv(filters, out_features, (1, 1), 1, padding=0)
        setattr(self, LAST_BN_NAME, norm(out_features, scale_init=bn_scale_init(zero_init_last_bn)))

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = self._shortcut(x)
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = getattr(self, LAST_BN_NAME)(self.conv3(y))
        return nnx.relu(y + shortcut)


# The linen blocks' NNX twins, for the shared architecture table (`models.architecture`).
_BLOCKS = {models.BasicBlock: BasicBlock, models.BottleneckBlock: BottleneckBlock}


class ResNet(nnx.Module):
    """ResNet v1 (v1.5 bottleneck) in Flax NNX: :class:`recipe.models.ResNet`'s architecture,
    initialisation, BatchNorm scopes and names.

    stem (`stem_conv`, `stem_bn`) → the blocks `stage{s}_block{b}` → global average pool →
    `fc`. Convs have no bias and He-normal fan-out kernels, `fc` draws N(0, 0.01²) with a zero
    bias, and each block's `bn_last` starts with γ = 0 (Goyal §5.1). Computation in `dtype`
    (e.g. bfloat16); parameters and BN statistics stay float32, logits come back in float32.

    Args:
        stage_sizes: Blocks per stage.
        block_cls: :class:`BasicBlock` or :class:`BottleneckBlock`.
        num_classes: Logits.
        num_filters: Width of the stem and the first stage.
        stem: `"imagenet"` (7×7/2 conv, BN, ReLU, 3×3/2 max pool) or `"cifar"` (3×3/1 conv, BN,
            ReLU).
        bn_scope: Which examples share each BN's statistics (:class:`recipe.BNScope`).
        bn_momentum: Momentum of the BN running averages.
        dtype: Computation dtype.
        zero_init_last_bn: Whether each block's last BN starts with γ = 0.
        in_features: Input channels (3 for RGB, 1 for MNIST).
        rngs: The `params` stream draws the weights.

    Raises:
        ValueError: If `stem` is unknown.

    >>> import jax.numpy as jnp
    >>> model = ResNet((1, 1), BasicBlock, num_classes=3, num_filters=4, stem="cifar",
    ...                in_features=1, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 8, 8, 1))).dtype
    dtype('float32')
    >>> float(model.stage1_block1.bn_last.scale[...].sum())  # γ = 0 (Goyal §5.1)
    0.0
    """

    def __init__(
        self,
        stage_sizes: Sequence[int],
        block_cls: type[BasicBlock] | type[BottleneckBlock],
        *,
        num_classes: int = 1000,
        num_filters: int = 64,
        stem: str = "imagenet",
        bn_scope: BNScope = _PER_DEVICE,
        bn_momentum: float = 0.9,
        dtype: Dtype = jnp.float32,
        zero_init_last_bn: bool = True,
        in_features: int = 3,
        rngs: nnx.Rngs,
    ):
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"Unknown stem {stem!r}; expected 'imagenet' or 'cifar'.")
        conv = _conv(dtype, rngs)
        norm = functools.partial(
            BatchNorm, bn_scope=bn_scope, momentum=bn_momentum, dtype=dtype, rngs=rngs
        )
        self.stage_sizes, self.num_filters, self.stem = tuple(stage_sizes), num_filters, stem
        self.bn_scope, self.bn_momentum, self.dtype = bn_scope, bn_momentum, dtype
        if stem == "imagenet":
            self.stem_conv = conv(in_features, num_filters, (7, 7), 2, padding=3)
        else:
            self.stem_conv = conv(in_features, num_filters, (3, 3), 1, padding=1)
        self.stem_bn = norm(num_filters)
        features = num_filters
        for name, filters, strides in models.block_plan(stage_sizes, num_filters):
            block = block_cls(
                features,
                filters,
                strides,
                conv=conv,
                norm=norm,
                zero_init_last_bn=zero_init_last_bn,
            )
            setattr(self, name, block)
            features = filters * block_cls.expansion
        self.fc = nnx.Linear(
            features,
            num_classes,
            kernel_init=fc_kernel_init(),
            bias_init=jax.nn.initializers.zeros,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """float32 logits `(batch, num_classes)` of images `(batch, height, width, channels)`."""
        x = nnx.relu(self.stem_bn(self.stem_conv(x)))
        if self.stem == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for name, _, _ in models.block_plan(self.stage_sizes, self.num_filters):
            x = getattr(self, name)(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return self.fc(x).astype(jnp.float32)


def create_model(name: str, *, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
    """A registered ResNet (`recipe.MODEL_NAMES`) as an NNX :class:`ResNet`, the weights drawn
    from `rngs`: the twin of :func:`recipe.create_model`.

    Args:
        name: One of `recipe.MODEL_NAMES`.
        rngs: The `params` stream draws the weights.
        **kwargs: Override any :class:`ResNet` argument (`num_classes`, `num_filters`,
            `stage_sizes`, `stem`, `dtype`, `bn_scope`, `bn_momentum`, `zero_init_last_bn`,
            `in_features`).

    Raises:
        ValueError: If `name` is not registered.

    >>> model = create_model("resnet50", num_classes=10, rngs=nnx.Rngs(0))
    >>> model.fc.kernel.shape
    (2048, 10)
    """
    fields = models.architecture(name)
    fields["block_cls"] = _BLOCKS[fields["block_cls"]]
    return ResNet(**{**fields, **kwargs}, rngs=rngs)


def to_linen_variables(model: nnx.Module) -> dict[str, Any]:
    """The model's state as linen variables: `{'params': ..., 'batch_stats': ...}` (nested
    dicts of arrays; `batch_stats` is absent from a model without BatchNorm). For the
    recipe's ResNets these are exactly the linen twin's variables, path for path.

    >>> model = create_model("resnet8", num_filters=4, rngs=nnx.Rngs(0))
    >>> to_linen_variables(model)["params"]["stage1_block1"]["bn_last"]["scale"].tolist()
    [0.0, 0.0, 0.0, 0.0]
    """
    variables = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
    batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    if batch_stats:
        variables["batch_stats"] = batch_stats
    return variables


def from_linen_variables(model: nnx.Module, variables: dict[str, Any]) -> nnx.Module:
    """Sets the model's parameters and BatchNorm statistics to linen `variables` (the
    `model.init` or `load_run` output of the linen twin) in place, and returns it.

    Each collection given (`params`, `batch_stats`; one alone sets only those) must map one to
    one onto the model's: the same paths and shapes.

    Raises:
        ValueError: If the paths or shapes differ (naming the first few).

    >>> import jax, jax.numpy as jnp
    >>> from recipe import models
    >>> linen = models.create_model("resnet8", num_filters=4)
    >>> variables = linen.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)), train=False)
    >>> model = from_linen_variables(create_model("resnet8", num_filters=4, rngs=nnx.Rngs(0)),
    ...                              variables)
    >>> model.eval()
    >>> x = jnp.ones((2, 8, 8, 3))
    >>> bool(jnp.allclose(model(x), linen.apply(variables, x, train=False)))
    True
    """
    ours = to_linen_variables(model)
    theirs = {kind: variables[kind] for kind in ours if kind in variables}
    ours = {kind: ours[kind] for kind in theirs}
    _check_same_paths(_shapes(ours), _shapes(theirs), list(variables.keys() - ours.keys()))
    for kind, variable_type in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        if kind in theirs:
            state = nnx.state(model, variable_type)
            nnx.replace_by_pure_dict(state, theirs[kind])
            nnx.update(model, state)
    return model


def _shapes(variables: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): tuple(jnp.shape(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
    }


def _check_same_paths(
    ours: dict[str, tuple[int, ...]], theirs: dict[str, tuple[int, ...]], extra: list[str]
) -> None:
    differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    differing += sorted(extra)
    if differing:
        details = ", ".join(
            f"{k}: model {ours.get(k)}, variables {theirs.get(k)}" for k in differing[:3]
        )
        raise ValueError(
            f"the variables do not map one to one onto the model ({len(differing)} differ: "
            f"{details})"
        )


def _with_variables(template: nnx.Module, variables: dict[str, Any]) -> nnx.Module:
    """A new model of `template`'s graph holding `variables` (linen's dicts; a kind that is
    absent keeps the template's); the template itself is left as it is."""
    graphdef, *states = nnx.split(template, nnx.Param, nnx.BatchStat, ...)
    # New Variables, of the current trace (a jit, a grad): the template keeps its own.
    params, batch_stats, rest = jax.tree.map(lambda x: x, states)
    for kind, state in (("params", params), ("batch_stats", batch_stats)):
        if kind in variables:
            nnx.replace_by_pure_dict(state, variables[kind])
    return nnx.merge(graphdef, params, batch_stats, rest)


def _linen_apply(
    template: nnx.Module,
    variables: dict[str, Any],
    *inputs: Any,
    train: bool,
    mutable: bool | Sequence[str] = False,
) -> Any:
    """linen's `apply` of a model of `template`'s graph holding `variables`."""
    model = _with_variables(template, variables)
    if train:
        model.train()
    else:
        model.eval()
    outputs = model(*inputs)
    if not mutable:
        return outputs
    return outputs, {k: v for k, v in to_linen_variables(model).items() if k in mutable}


class FunctionalModel:
    """An NNX model as a pair of pure functions, `init` and `apply`, over linen's variable
    dicts: how code written for linen models runs NNX ones (the trainer's step under
    `jax.pmap` or `jax.shard_map`, :func:`recipe.precise_bn_estimator`,
    :func:`recipe.fixed_batch_loss`, orbax checkpoints of the variables).

    `apply` merges the variables into the model's graph (`nnx.merge`), sets its mode, calls
    it and splits the updated statistics out again (`nnx.split`): the functional form that
    Flax's performance guide advises for hot loops; under `jax.jit` it is the same program as
    the module's own call.

    Args:
        make: Builds the model from `rngs=nnx.Rngs(...)`, e.g.
            `functools.partial(create_model, "resnet50")`. It is called abstractly
            (`nnx.eval_shape`) for the graph, and by `init` to draw the weights.

    The model's `dtype`, `bn_momentum` and `bn_scope` (where it has them) read as attributes,
    as a linen model's fields do.

    >>> import functools, jax, jax.numpy as jnp
    >>> model = FunctionalModel(functools.partial(create_model, "resnet8", num_filters=4))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    >>> logits, updates = model.apply(variables, jnp.ones((2, 8, 8, 3)), train=True,
    ...                               mutable=["batch_stats"])
    >>> logits.shape, sorted(updates)
    ((2, 10), ['batch_stats'])
    """

    def __init__(self, make: Callable[..., nnx.Module]):
        self.make = make

    @functools.cached_property
    def abstract(self) -> nnx.Module:
        """The model with shapes for arrays (`nnx.eval_shape`): its graph and fields."""
        return nnx.eval_shape(lambda: self.make(rngs=nnx.Rngs(0)))

    def __getattr__(self, name: str) -> Any:
        if name in ("dtype", "bn_momentum", "bn_scope"):
            return getattr(self.abstract, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def init(self, key: jax.Array, *inputs: Any, train: bool = False) -> dict[str, Any]:
        """The variables of a model built with weights drawn from `key` (its `params` stream);
        `inputs` and `train` are accepted as linen's `init` takes them, and unused: an NNX
        model is built whole from its arguments."""
        del inputs, train
        return to_linen_variables(self.make(rngs=nnx.Rngs(params=key)))

    def module(self, variables: dict[str, Any]) -> nnx.Module:
        """The model holding `variables` (e.g. to call it, or to save it NNX's way)."""
        return _with_variables(self.abstract, variables)

    def apply(
        self,
        variables: dict[str, Any],
        *inputs: Any,
        train: bool,
        mutable: bool | Sequence[str] = False,
    ) -> Any:
        """The model's outputs on `inputs` as linen's `apply` gives them: in training mode
        (`train`) or evaluation mode, and with `mutable=['batch_stats']` also the updated
        statistics, `(outputs, {'batch_stats': ...})`."""
        return _linen_apply(self.abstract, variables, *inputs, train=train, mutable=mutable)


def precise_batch_stats(
    model: nnx.Module,
    batches: Iterable[Any],
    *,
    momentum: float,
    variance: str = "population",
) -> nnx.Module:
    """Precise BN (Wu & Johnson 2021, §3) for an NNX model: its BatchNorm statistics
    recomputed with its current weights over `batches` (see :func:`recipe.precise_batch_stats`,
    which this calls), set in place. Its weights and mode stay as they are.

        μ = (1/N) Σ_b μ_b,   σ² = (1/N) Σ_b σ²_b + (1/N) Σ_b (μ_b − μ)²   ('population')

    Args:
        model: An NNX model whose BN layers keep `nnx.BatchStat`s `mean` and `var` and update
            them as `r ← m · r + (1 − m) · s` (:class:`BatchNorm`, `flax.nnx.BatchNorm`).
        batches: The model inputs of N >= 1 batches of equal size.
        momentum: m of the model's BN layers, in [0, 1).
        variance: 'population', or 'batch_mean' for ghost-batch BN.

    Returns:
        The model.

    >>> import jax.numpy as jnp
    >>> bn = nnx.BatchNorm(1, momentum=0.99, rngs=nnx.Rngs(0))  # any NNX model with BN
    >>> x = jnp.array([[0.0], [2.0], [4.0], [6.0]])
    >>> _ = precise_batch_stats(bn, [x[:2], x[2:]], momentum=0.99)
    >>> [round(float(v[0]), 4) for v in (bn.mean[...], bn.var[...])]
    [3.0, 5.0]
    """
    variables = to_linen_variables(model)
    apply_fn = functools.partial(_linen_apply, model, train=True, mutable=["batch_stats"])
    batch_stats = precise_bn_lib.precise_batch_stats(
        apply_fn, variables, batches, momentum=momentum, variance=variance
    )
    return from_linen_variables(model, {**variables, "batch_stats": batch_stats})


def fixed_batch_loss(
    model: nnx.Module, inputs: jax.Array, loss_of_outputs: Callable[[jax.Array], jax.Array]
) -> Callable[[nnx.State], jax.Array]:
    """The training-mode loss of one fixed batch as a function of the model's parameters
    (`nnx.state(model, nnx.Param)`), the NNX twin of :func:`recipe.fixed_batch_loss`: BN
    normalises with the batch's statistics, differentiated through, and nothing in the model
    changes (its running averages and mode included). For `recipe.top_hessian_eigenvalue`.

    >>> import jax, jax.numpy as jnp
    >>> import recipe
    >>> model = create_model("resnet8", num_filters=4, stage_sizes=(1,), rngs=nnx.Rngs(0))
    >>> images, labels = jnp.ones((4, 8, 8, 3)), jnp.arange(4)
    >>> loss = fixed_batch_loss(model, images, lambda y: recipe.cross_entropy(y, labels))
    >>> found = recipe.top_hessian_eigenvalue(
    ...     loss, nnx.state(model, nnx.Param), jax.random.key(0), iterations=2)
    >>> found.eigenvalue.shape
    ()
    """

    def loss_fn(params: nnx.State) -> jax.Array:
        variables = {"params": nnx.to_pure_dict(params)}
        outputs, _ = _linen_apply(model, variables, inputs, train=True, mutable=["batch_stats"])
        return loss_of_outputs(outputs)

    return loss_fn
