"""ResNet v1 (v1.5 bottleneck, Goyal et al. 2017 §5.1) and its batch norm, in Flax linen.

Naming convention (the weight-decay mask and the tests rely on it):

* Every batch-norm layer is a :class:`BatchNorm`. It owns the ``batch_stats`` variables ``mean``
  and ``var`` and the params ``scale`` (γ) and ``bias`` (β), so "a module with ``batch_stats``"
  identifies exactly the BN layers, and their params are exactly the BN params.
* :class:`ResNet` children: ``stem_conv``, ``stem_bn``, the blocks ``stage{s}_block{b}``
  (1-based, e.g. ``stage1_block1``) and the classifier ``fc``.
* Block children: the residual branch ``conv1``, ``bn1``, ``conv2`` (:class:`BasicBlock`) or
  ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3`` (:class:`BottleneckBlock`), then the branch's
  last BN, always named :data:`LAST_BN_NAME` (``"bn_last"``); its γ starts at 0 when
  ``zero_init_last_bn`` (Goyal §5.1). A projection shortcut, when present, is ``proj_conv`` and
  ``proj_bn`` (γ = 1, like every BN other than ``bn_last``).

So ``params["stage2_block1"]["bn_last"]["scale"]`` is the zero-initialised γ of the first block of
the second stage.

>>> import jax, jax.numpy as jnp
>>> model = create_model("resnet20", num_filters=4)
>>> variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False)
>>> model.apply(variables, jnp.zeros((2, 8, 8, 3)), train=False).shape
(2, 10)
"""

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.typing import Dtype, Initializer

from recipe import checks
from recipe.inits import bn_scale_init, conv_kernel_init, fc_kernel_init

LAST_BN_NAME = "bn_last"
"""Name of the last BN of every residual block's residual branch (γ = 0 at init, Goyal §5.1)."""

ModuleFactory = Callable[..., nn.Module]


def device_groups(device_count: int, group_size: int) -> tuple[tuple[int, ...], ...]:
    """Consecutive groups of `group_size` device indices: `BNScope.across`'s `groups`.

    Ying et al. 2018 ("Image Classification at Supercomputer Scale") share BatchNorm
    statistics within groups of replicas, so the BN batch stays near its best size whatever the
    device count. The groups are consecutive indices along the mapped axis (neighbouring chips
    on a TPU slice, the devices of a host).

    Raises:
        ValueError: If `group_size` is not a positive divisor of `device_count`.

    >>> device_groups(4, 2)
    ((0, 1), (2, 3))
    """
    checks.check_positive_int("group_size", group_size)
    if device_count % group_size:
        raise ValueError(
            f"group_size must divide the device count {device_count}, got {group_size!r}"
        )
    return tuple(tuple(range(g, g + group_size)) for g in range(0, device_count, group_size))


AxisName = str | tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BNScope:
    """Which examples share a :class:`BatchNorm` layer's batch statistics: one value, made by
    one of three constructors.

    * ``BNScope.per_device()`` (the default): the examples on this device. Goyal §2.3 computes
      BN statistics per worker over n = 32 examples, not across workers.
    * ``BNScope.ghost(n)``: each run of n consecutive examples on this device is normalised
      with its own statistics (ghost batches), e.g. to keep Goyal's n = 32 while a device holds
      more. The running averages are updated with the mean over ghost batches of their means
      and of their variances.
    * ``BNScope.across(axis_name)``: μ and E[x²] are ``lax.pmean``-ed over the named mapped
      axis (or axes), so all devices share the statistics of the concatenated batch.
      ``BNScope.across(axis_name, groups=device_groups(d, g))``: each group of indices along
      the axis shares its concatenated batch's statistics (Ying et al. 2018), through
      ``lax.pmean``'s ``axis_index_groups`` (``jax.pmap`` supports them, as Flax's own
      ``BatchNorm`` does). ``jax.shard_map`` has no ``axis_index_groups``: there, name the
      inner axis of a (groups, devices in a group) mesh instead
      (``train.runners.shard_map_runner(bn_group_size=...)`` builds one).

    The dataclass is frozen and hashable, so it is a plain Flax module attribute; its
    constructor rejects the combinations that mean nothing (ghost batches within a device
    averaged across devices, groups without an axis).

    Attributes:
        axis_name: The mapped axis (or axes) the statistics are averaged over, or None (this
            device's examples only).
        groups: Groups of indices along ``axis_name`` sharing statistics, as tuples, or None
            for the whole axis.
        ghost_batch_size: Examples per ghost batch within a device, or None for the whole
            per-device batch; must divide it.

    >>> BNScope.ghost(32)
    BNScope(axis_name=None, groups=None, ghost_batch_size=32)
    >>> BNScope.across("batch", groups=device_groups(4, 2)).groups
    ((0, 1), (2, 3))
    >>> create_model("resnet50", bn_scope=BNScope.across("batch")).bn_scope.axis_name
    'batch'
    """

    axis_name: AxisName | None = None
    groups: tuple[tuple[int, ...], ...] | None = None
    ghost_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.groups is not None:
            if self.axis_name is None:
                raise ValueError(
                    f"BNScope: groups={self.groups!r} need the axis_name they index; use "
                    "BNScope.across(axis_name, groups=...)."
                )
            object.__setattr__(self, "groups", tuple(tuple(g) for g in self.groups))
        if self.ghost_batch_size is not None:
            if self.axis_name is not None:
                raise ValueError(
                    f"BNScope: ghost_batch_size={self.ghost_batch_size} and "
                    f"axis_name={self.axis_name!r} cannot be combined; ghost batches are "
                    "normalised within one device."
                )
            if self.ghost_batch_size <= 0:
                raise ValueError(
                    f"BNScope: ghost_batch_size must be positive, got {self.ghost_batch_size}."
                )

    @classmethod
    def per_device(cls) -> "BNScope":
        """Statistics of the examples on this device (Goyal §2.3)."""
        return cls()

    @classmethod
    def ghost(cls, batch_size: int) -> "BNScope":
        """Statistics of each run of `batch_size` consecutive examples on this device."""
        return cls(ghost_batch_size=batch_size)

    @classmethod
    def across(
        cls, axis_name: AxisName, groups: Sequence[Sequence[int]] | None = None
    ) -> "BNScope":
        """Statistics of the batch concatenated over the mapped `axis_name`, or over each of
        its `groups` of indices (:func:`device_groups`)."""
        return cls(axis_name=axis_name, groups=groups)


class BatchNorm(nn.Module):
    """Batch normalisation with per-device, cross-device, grouped or ghost-batch statistics.

    In training mode each feature (last axis) is normalised with statistics of the current batch:

        y = γ · (x − μ_B) / sqrt(σ²_B + ε) + β,
        running_mean ← momentum · running_mean + (1 − momentum) · μ_B   (likewise for var),

    where σ²_B is the biased batch variance E[x²] − μ_B² (as Flax's BatchNorm) and momentum = 0.9
    (Goyal §2.3). The batch B is the layer's ``bn_scope`` (:class:`BNScope`): this device's
    examples (the default), ghost batches within it, or the batch concatenated over a mapped
    axis or over groups of its devices.

    Statistics and the normalisation are computed in float32 whatever ``dtype`` is. In
    evaluation mode (``use_running_average=True``) the running averages are used instead. The
    running averages are not updated while the module is being initialised.

    Attributes:
        use_running_average: Use the running averages instead of batch statistics; may instead
            be passed to ``__call__``.
        bn_scope: Which examples share the statistics (:class:`BNScope`; per device by default;
            ``scope`` is Flax's own attribute).
        momentum: Decay of the running averages.
        epsilon: Added to the variance for numerical stability.
        dtype: Output dtype; None keeps the input's dtype.
        param_dtype: Dtype of γ and β.
        scale_init: Initializer of γ (see :func:`recipe.inits.bn_scale_init`).
        bias_init: Initializer of β.

    >>> import jax, jax.numpy as jnp
    >>> bn = BatchNorm(bn_scope=BNScope.ghost(2))
    >>> x = jnp.arange(8.0).reshape(4, 2)
    >>> variables = bn.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> y[:, 0].round(3).tolist()
    [-1.0, 1.0, -1.0, 1.0]
    """

    use_running_average: bool | None = None
    bn_scope: BNScope = BNScope()
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    scale_init: Initializer = bn_scale_init()
    bias_init: Initializer = jax.nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalises ``x`` of shape ``(batch, ..., features)``.

        Args:
            x: Input; the batch axis first, the features last.
            use_running_average: Overrides the attribute of the same name (exactly one of the two
                must be set).

        Returns:
            The normalised input, in ``dtype`` (or ``x.dtype`` if ``dtype`` is None).

        Raises:
            ValueError: If the scope's ``ghost_batch_size`` does not divide the batch.
        """
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        features = x.shape[-1]
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)
        )
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((features,), jnp.float32)
        )
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        y, mean, var = batch_norm(
            x,
            scale=scale,
            bias=bias,
            running_mean=running_mean.value,
            running_var=running_var.value,
            use_running_average=use_running_average,
            bn_scope=self.bn_scope,
            momentum=self.momentum,
            epsilon=self.epsilon,
            dtype=self.dtype,
        )
        if not use_running_average and not self.is_initializing():
            running_mean.value, running_var.value = mean, var
        return y


def batch_norm(
    x: jax.Array,
    *,
    scale: jax.Array,
    bias: jax.Array,
    running_mean: jax.Array,
    running_var: jax.Array,
    use_running_average: bool,
    bn_scope: BNScope,
    momentum: float,
    epsilon: float,
    dtype: Dtype | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The one rule of :class:`BatchNorm` and its Flax NNX twin (:class:`recipe.nnx.BatchNorm`):
    ``(y, new running mean, new running variance)`` for ``x`` of shape
    ``(batch, ..., features)``.

    With ``use_running_average`` the running averages normalise and come back unchanged;
    otherwise the statistics of the scope's batch do (module doc of :class:`BatchNorm`) and the
    running averages move towards them: ``m · running + (1 − m) · batch statistic``.

    Raises:
        ValueError: If the scope's ``ghost_batch_size`` does not divide the batch.
    """
    out_dtype = x.dtype if dtype is None else dtype
    if use_running_average:
        y = _normalize(x.astype(jnp.float32), running_mean, running_var, scale, bias, epsilon)
        return y.astype(out_dtype), running_mean, running_var

    features = x.shape[-1]
    batch_size = x.shape[0]
    group_size = batch_size if bn_scope.ghost_batch_size is None else bn_scope.ghost_batch_size
    if batch_size % group_size:
        raise ValueError(
            f"BatchNorm: ghost_batch_size={group_size} does not divide the per-device batch "
            f"size {batch_size}."
        )
    # (groups, group_size, ..., features); without ghost batches there is one group.
    groups = x.astype(jnp.float32).reshape((batch_size // group_size, group_size, *x.shape[1:]))
    reduction_axes = tuple(range(1, groups.ndim - 1))
    mean = groups.mean(reduction_axes, keepdims=True)
    mean_of_squares = jnp.square(groups).mean(reduction_axes, keepdims=True)
    if bn_scope.axis_name is not None:
        mean, mean_of_squares = jax.lax.pmean(
            (mean, mean_of_squares), bn_scope.axis_name, axis_index_groups=bn_scope.groups
        )
    # E[x²] − E[x]² can round below zero.
    var = jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)
    y = _normalize(groups, mean, var, scale, bias, epsilon).reshape(x.shape)
    # Average over the ghost batches (a no-op for a single group).
    batch_mean = mean.reshape(-1, features).mean(axis=0)
    batch_var = var.reshape(-1, features).mean(axis=0)
    new_mean = momentum * running_mean + (1.0 - momentum) * batch_mean
    new_var = momentum * running_var + (1.0 - momentum) * batch_var
    return y.astype(out_dtype), new_mean, new_var


def _normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    epsilon: float,
) -> jax.Array:
    """Returns γ · (x − mean) / sqrt(var + ε) + β in float32 (features on the last axis)."""
    multiplier = scale.astype(jnp.float32) * jax.lax.rsqrt(var + epsilon)
    return (x - mean) * multiplier + bias.astype(jnp.float32)


def needs_projection(in_features: int, out_features: int, strides: int) -> bool:
    """Whether a block's shortcut is a 1×1 strided conv + BN ("option B", He 2016) rather than
    the identity: when the block changes the width or the resolution."""
    return strides != 1 or in_features != out_features


def block_plan(stage_sizes: Sequence[int], num_filters: int) -> list[tuple[str, int, int]]:
    """``(name, filters, strides)`` of every residual block in order: stage s (from 0) has
    width ``num_filters · 2^s``, and the first block of every stage but the first has stride 2.

    >>> block_plan((2, 1), 16)
    [('stage1_block1', 16, 1), ('stage1_block2', 16, 1), ('stage2_block1', 32, 2)]
    """
    return [
        (
            f"stage{stage + 1}_block{block + 1}",
            num_filters * 2**stage,
            2 if stage and not block else 1,
        )
        for stage, num_blocks in enumerate(stage_sizes)
        for block in range(num_blocks)
    ]


def _projection_shortcut(
    x: jax.Array, features: int, strides: int, conv: ModuleFactory, norm: ModuleFactory
) -> jax.Array:
    """Returns ``x`` if its shape is kept, else a 1×1 strided conv + BN ("option B", He 2016)."""
    if not needs_projection(x.shape[-1], features, strides):
        return x
    x = conv(features, (1, 1), strides=strides, padding=0, name="proj_conv")(x)
    return norm(name="proj_bn")(x)


class BasicBlock(nn.Module):
    """ResNet v1 basic block: two 3×3 convs, y = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)).

    The first conv carries the stride. The shortcut is the identity, or a projection (1×1 conv +
    BN) when the stride or the width changes; the CIFAR ResNets of He et al. 2016 use a
    zero-padding identity ("option A") there, this one uses the projection everywhere.

    Attributes:
        filters: Output channels of both convs.
        strides: Stride of the first conv (and of the projection).
        conv: Conv factory (``nn.Conv`` with the kernel init, no bias, dtype bound).
        norm: BN factory (:class:`BatchNorm` with its mode and statistic scope bound).
        zero_init_last_bn: Whether γ of ``bn_last`` starts at 0 (Goyal §5.1).
    """

    filters: int
    strides: int
    conv: ModuleFactory
    norm: ModuleFactory
    zero_init_last_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block to ``x`` of shape ``(batch, height, width, channels)``."""
        shortcut = _projection_shortcut(x, self.filters, self.strides, self.conv, self.norm)
        y = self.conv(self.filters, (3, 3), strides=self.strides, padding=1, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), padding=1, name="conv2")(y)
        y = self.norm(scale_init=bn_scale_init(zero=self.zero_init_last_bn), name=LAST_BN_NAME)(y)
        return nn.relu(y + shortcut)


class BottleneckBlock(nn.Module):
    """ResNet v1.5 bottleneck block: 1×1, 3×3 (strided), 1×1 convs with 4× expansion.

    y = ReLU(BN(conv1×1(ReLU(BN(conv3×3(ReLU(BN(conv1×1(x))))))) + shortcut(x)), output channels
    4 · ``filters``. The stride sits on the 3×3 conv, as in Goyal §5.1 (and torchvision), not on
    the first 1×1 conv as in the original ResNet v1. The shortcut is the identity, or a
    projection (1×1 conv + BN) when the stride or the width changes.

    Attributes:
        filters: Channels of the bottleneck (the block outputs ``4 * filters``).
        strides: Stride of the 3×3 conv (and of the projection).
        conv: Conv factory (``nn.Conv`` with the kernel init, no bias, dtype bound).
        norm: BN factory (:class:`BatchNorm` with its mode and statistic scope bound).
        zero_init_last_bn: Whether γ of ``bn_last`` starts at 0 (Goyal §5.1).
    """

    filters: int
    strides: int
    conv: ModuleFactory
    norm: ModuleFactory
    zero_init_last_bn: bool = True

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block to ``x`` of shape ``(batch, height, width, channels)``."""
        out_features = self.filters * self.expansion
        shortcut = _projection_shortcut(x, out_features, self.strides, self.conv, self.norm)
        y = self.conv(self.filters, (1, 1), padding=0, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), strides=self.strides, padding=1, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(out_features, (1, 1), padding=0, name="conv3")(y)
        y = self.norm(scale_init=bn_scale_init(zero=self.zero_init_last_bn), name=LAST_BN_NAME)(y)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet v1 for ImageNet (He et al. 2016, torchvision layout) or CIFAR-sized images.

    stem → stages of residual blocks (stage s has width ``num_filters · 2^s``; the first block of
    every stage but the first has stride 2) → global average pool → fully-connected layer.
    Convs have no bias (a BN follows each) and use :func:`recipe.inits.conv_kernel_init`; the
    fully-connected layer uses :func:`recipe.inits.fc_kernel_init` with a zero bias (Goyal §5.1).
    Padding is symmetric as in torchvision, so weights map one to one.

    Attributes:
        stage_sizes: Number of blocks in each stage.
        block_cls: :class:`BasicBlock` or :class:`BottleneckBlock`.
        num_classes: Number of logits.
        num_filters: Width of the stem and the first stage (64 for ImageNet, 16 for CIFAR).
        stem: ``"imagenet"`` (7×7/2 conv, BN, ReLU, 3×3/2 max pool) or ``"cifar"`` (3×3/1 conv,
            BN, ReLU).
        bn_scope: Which examples share each BN layer's statistics (:class:`BNScope`); per
            device by default (Goyal §2.3).
        bn_momentum: Momentum of the BN running averages (0.9, Goyal §2.3).
        dtype: Computation dtype (e.g. ``jnp.bfloat16``); params and BN statistics stay float32,
            and the logits are returned in float32.
        zero_init_last_bn: Whether the last BN of each residual block starts with γ = 0.

    >>> import jax, jax.numpy as jnp
    >>> model = ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, num_classes=3, num_filters=4,
    ...                stem="cifar")
    >>> x = jnp.ones((2, 8, 8, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    >>> logits.shape, logits.dtype
    ((2, 3), dtype('float32'))
    """

    stage_sizes: Sequence[int]
    block_cls: type[BasicBlock] | type[BottleneckBlock]
    num_classes: int = 1000
    num_filters: int = 64
    stem: str = "imagenet"
    bn_scope: BNScope = BNScope()
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32
    zero_init_last_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Computes the logits.

        Args:
            x: Images of shape ``(batch, height, width, channels)``.
            train: Use batch statistics in BN and update its running averages (the caller must
                then pass ``mutable=["batch_stats"]``); else use the running averages.

        Returns:
            float32 logits of shape ``(batch, num_classes)``.

        Raises:
            ValueError: If ``stem`` is unknown, or as :class:`BatchNorm` for the BN settings.
        """
        conv = partial(
            nn.Conv,
            use_bias=False,
            kernel_init=conv_kernel_init(),
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        norm = partial(
            BatchNorm,
            use_running_average=not train,
            bn_scope=self.bn_scope,
            momentum=self.bn_momentum,
            dtype=self.dtype,
        )
        if self.stem == "imagenet":
            x = conv(self.num_filters, (7, 7), strides=2, padding=3, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        elif self.stem == "cifar":
            x = conv(self.num_filters, (3, 3), padding=1, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        else:
            raise ValueError(f"Unknown stem {self.stem!r}; expected 'imagenet' or 'cifar'.")

        for name, filters, strides in block_plan(self.stage_sizes, self.num_filters):
            x = self.block_cls(
                filters=filters,
                strides=strides,
                conv=conv,
                norm=norm,
                zero_init_last_bn=self.zero_init_last_bn,
                name=name,
            )(x)

        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = nn.Dense(
            self.num_classes,
            kernel_init=fc_kernel_init(),
            bias_init=jax.nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="fc",
        )(x)
        return x.astype(jnp.float32)


def _cifar_config(depth: int) -> dict[str, Any]:
    """CIFAR ResNet-``depth`` of He et al. 2016 §4.2: 3 stages of (depth − 2) / 6 basic blocks."""
    return {
        "stage_sizes": ((depth - 2) // 6,) * 3,
        "block_cls": BasicBlock,
        "num_classes": 10,
        "num_filters": 16,
        "stem": "cifar",
    }


def _imagenet_config(
    stage_sizes: tuple[int, ...], block_cls: type[BasicBlock] | type[BottleneckBlock]
) -> dict[str, Any]:
    """ImageNet ResNet of He et al. 2016 Table 1 (torchvision layout)."""
    return {
        "stage_sizes": stage_sizes,
        "block_cls": block_cls,
        "num_classes": 1000,
        "num_filters": 64,
        "stem": "imagenet",
    }


_CONFIGS: dict[str, dict[str, Any]] = {
    # ResNet-8 (one block per stage) is not in He et al.; it keeps tests and quick runs small.
    **{f"resnet{depth}": _cifar_config(depth) for depth in (8, 20, 32, 44, 56, 110)},
    "resnet18": _imagenet_config((2, 2, 2, 2), BasicBlock),
    "resnet34": _imagenet_config((3, 4, 6, 3), BasicBlock),
    "resnet50": _imagenet_config((3, 4, 6, 3), BottleneckBlock),
    "resnet101": _imagenet_config((3, 4, 23, 3), BottleneckBlock),
    "resnet152": _imagenet_config((3, 8, 36, 3), BottleneckBlock),
}

MODEL_NAMES: tuple[str, ...] = tuple(_CONFIGS)
"""Names accepted by :func:`create_model`: CIFAR ``resnet8``–``resnet110``, ImageNet
``resnet18``–``resnet152``."""


def architecture(name: str) -> dict[str, Any]:
    """The :class:`ResNet` fields of a registered model (its ``stage_sizes``, ``block_cls``,
    ``num_classes``, ``num_filters`` and ``stem``): the one table of both Flax APIs.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    if name not in _CONFIGS:
        raise ValueError(f"Unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}.")
    return dict(_CONFIGS[name])


def create_model(name: str, **kwargs: Any) -> ResNet:
    """Builds a registered ResNet in Flax linen (:func:`recipe.nnx.create_model` builds its
    Flax NNX twin: the same architecture, initialisation, BatchNorm scopes and names).

    CIFAR models (``resnet20/32/44/56/110``): basic blocks, 3 stages of (depth − 2) / 6 blocks,
    widths 16/32/64, 3×3 stem, 10 classes. ImageNet models (``resnet18/34`` basic,
    ``resnet50/101/152`` bottleneck v1.5): 4 stages, widths 64–512, 7×7 stem + max pool, 1000
    classes.

    Args:
        name: One of :data:`MODEL_NAMES`.
        **kwargs: Override any :class:`ResNet` field, e.g. ``num_classes``, ``num_filters``,
            ``stem="cifar"`` (an ImageNet ResNet for small images), ``dtype``,
            ``bn_scope`` (e.g. ``BNScope.ghost(32)``), ``bn_momentum``, ``zero_init_last_bn``.

    Returns:
        The (unbound) :class:`ResNet`.

    Raises:
        ValueError: If ``name`` is not registered.

    >>> create_model("resnet50", num_classes=10).num_classes
    10
    """
    return ResNet(**{**architecture(name), **kwargs})
