"""Precise BatchNorm: population statistics recomputed with the current weights.

BN running averages are an EMA of per-batch statistics taken while the weights moved, so early
in training (few steps per epoch, a high learning rate) they describe older weights than the
ones evaluated. Wu & Johnson 2021 ("Rethinking 'Batch' in BatchNorm", §3) recompute them
instead: freeze the weights, run N training batches through the model in training mode, and
combine the per-batch statistics (fvcore's `PreciseBN`).

Per BN layer and feature, with μ_b and σ²_b the mean and biased variance a layer computes in
training mode on batch b = 1 … N (all batches of the same size):

    μ  = (1/N) Σ_b μ_b
    σ² = (1/N) Σ_b σ²_b + (1/N) Σ_b (μ_b − μ)²      'population'
    σ² = (1/N) Σ_b σ²_b                             'batch_mean'

'population' is E[x²] − E[x]² over all examples of the N batches (the mean of the batch
variances plus the variance of the batch means; fvcore's default estimator, Wu & Johnson's
appendix): the statistics of the N batches concatenated, each layer's input being what the
batch's own training-mode pass produced (as in training, and in fvcore). It is the estimate for
per-device, grouped and cross-device BN. 'batch_mean' is the expected variance of one
normalisation batch (fvcore's `_MeanOfBatchVarianceEstimator`); it is the one for ghost-batch BN
(`recipe.BNScope.ghost(n)`), whose per-batch statistic is already the mean over its n-example
groups: averaging it over the N batches gives the mean over all their groups, the statistic its
running averages estimate. (Through the per-batch statistics a model reports, the
population variance of ghost BN is not available: it would need every group's mean.)

Any linen BN whose running averages are updated as `r ← m · r + (1 − m) · s` and stored as
`batch_stats` leaves named 'mean' and 'var' works (`flax.linen.BatchNorm`, `recipe.BatchNorm`):
the model is applied with running averages of zero, which leaves (1 − m) · s, the batch
statistic s scaled by a known factor. The combination uses Welford's update over batches (no
E[x²] − E[x]² cancellation) and, across devices, the law of total variance.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import core, traverse_util
from jax import lax

from recipe import checks

VARIANCE_ESTIMATORS = ("population", "batch_mean")
_STAT_NAMES = ("mean", "var")

ApplyFn = Callable[[Mapping[str, Any], Any], tuple[Any, Mapping[str, Any]]]


class PreciseBNState(NamedTuple):
    """Running moments over the batches seen so far, per `batch_stats` leaf.

    Attributes:
      count: number of batches accumulated (int32 scalar).
      mean: (1/N) Σ_b s_b for every leaf s ('mean' and 'var').
      sum_sq_dev: Σ_b (s_b − mean)² for every leaf (Welford's M2); the 'mean' leaves' give
        the variance of the batch means.
    """

    count: jax.Array
    mean: Any
    sum_sq_dev: Any


class PreciseBN(NamedTuple):
    """The pieces of `precise_bn_estimator`: pure, jit- and pmap-safe functions.

    Attributes:
      init: `batch_stats -> PreciseBNState` (zeros shaped like the model's statistics).
      update: `(state, variables, inputs) -> state`: one batch through the model.
      result: `state -> batch_stats`: the precise statistics, shaped like the model's.
    """

    init: Callable[[Any], PreciseBNState]
    update: Callable[[PreciseBNState, Mapping[str, Any], Any], PreciseBNState]
    result: Callable[[PreciseBNState], Any]


def precise_bn_estimator(
    apply_fn: ApplyFn,
    *,
    momentum: float,
    variance: str = "population",
    axis_name: str | None = None,
) -> PreciseBN:
    """Precise BN statistics (Wu & Johnson 2021, §3) as init / update / result functions.

    With μ_b, σ²_b the statistics a BN layer computes on batch b (see the module docstring):
    μ = (1/N) Σ μ_b, and σ² = (1/N) Σ σ²_b + (1/N) Σ (μ_b − μ)² ('population', E[x²] − E[x]²
    over all N batches' examples) or (1/N) Σ σ²_b ('batch_mean', for ghost-batch BN).

    Args:
      apply_fn: `apply_fn(variables, inputs) -> (outputs, mutated)` running the model in
        training mode with `batch_stats` mutable, e.g.
        `functools.partial(model.apply, train=True, mutable=["batch_stats"])`.
      momentum: m of the model's BN running averages (0.9 for `recipe.BatchNorm`, 0.99 for
        `flax.linen.BatchNorm`'s default); every BN layer must use it. In [0, 1).
      variance: one of `VARIANCE_ESTIMATORS`.
      axis_name: under `pmap`/`shard_map`, the device axis: `result` then combines every
        device's batches (each device must have seen the same number). Needed for per-device
        BN; harmless for cross-device BN, whose devices already agree.

    Returns:
      A `PreciseBN`. Call `update` once per batch, then `result`; batches must all hold the
      same number of examples (per device).

    Raises:
      ValueError: if `momentum` or `variance` is out of range.

    >>> import functools, jax, jax.numpy as jnp
    >>> from recipe.models import BatchNorm
    >>> bn = BatchNorm(momentum=0.9)
    >>> x = jnp.array([[0.0], [2.0], [4.0], [6.0]])
    >>> variables = bn.init(jax.random.key(0), x, use_running_average=True)
    >>> apply_fn = functools.partial(bn.apply, use_running_average=False,
    ...                              mutable=["batch_stats"])
    >>> pbn = precise_bn_estimator(apply_fn, momentum=0.9)
    >>> state = pbn.init(variables["batch_stats"])
    >>> for batch in (x[:2], x[2:]):  # batch variances 1 and 1, batch means 1 and 5
    ...     state = pbn.update(state, variables, batch)
    >>> {k: round(float(v[0]), 4) for k, v in pbn.result(state).items()}
    {'mean': 3.0, 'var': 5.0}
    """
    momentum = _check_momentum(momentum)
    checks.check_choice("variance", variance, VARIANCE_ESTIMATORS)
    # The model scales the batch statistic by (1 − m) in float32; undo it with the same factor.
    keep = jnp.float32(1.0 - momentum)

    def init(batch_stats: Any) -> PreciseBNState:
        _flat_stats(batch_stats)  # checks the leaf names
        zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), batch_stats)
        return PreciseBNState(count=jnp.zeros((), jnp.int32), mean=zeros, sum_sq_dev=zeros)

    def update(state: PreciseBNState, variables: Mapping[str, Any], inputs: Any) -> PreciseBNState:
        zeros = jax.tree_util.tree_map(jnp.zeros_like, variables["batch_stats"])
        _, mutated = apply_fn({**variables, "batch_stats": zeros}, inputs)
        batch = jax.tree_util.tree_map(
            lambda s: s.astype(jnp.float32) / keep, mutated["batch_stats"]
        )
        count = state.count + 1
        delta = jax.tree_util.tree_map(jnp.subtract, batch, state.mean)
        mean = jax.tree_util.tree_map(lambda m, d: m + d / count, state.mean, delta)
        sum_sq_dev = jax.tree_util.tree_map(
            lambda q, d, s, m: q + d * (s - m), state.sum_sq_dev, delta, batch, mean
        )
        return PreciseBNState(count=count, mean=mean, sum_sq_dev=sum_sq_dev)

    def result(state: PreciseBNState) -> Any:
        means, sq_devs = _flat_stats(state.mean), _flat_stats(state.sum_sq_dev)
        out = {}
        for layer, stats in means.items():
            mean, var = stats["mean"], stats["var"]
            if variance == "population":
                var = var + sq_devs[layer]["mean"] / state.count
            if axis_name is not None:
                overall = lax.pmean(mean, axis_name)
                if variance == "population":
                    var = var + jnp.square(mean - overall)  # between-device spread
                mean, var = overall, lax.pmean(var, axis_name)
            out[layer + ("mean",)] = mean
            out[layer + ("var",)] = jnp.maximum(var, 0.0)
        stats = traverse_util.unflatten_dict(out)
        return core.freeze(stats) if isinstance(state.mean, core.FrozenDict) else stats

    return PreciseBN(init=init, update=update, result=result)


def precise_batch_stats(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    batches: Iterable[Any],
    *,
    momentum: float,
    variance: str = "population",
) -> Any:
    """Precise BN statistics of a model over `batches`, on one device (see `precise_bn_estimator`).

        μ = (1/N) Σ_b μ_b,   σ² = (1/N) Σ_b σ²_b + (1/N) Σ_b (μ_b − μ)²   ('population')

    Args:
      apply_fn: the model in training mode with `batch_stats` mutable, e.g.
        `functools.partial(model.apply, train=True, mutable=["batch_stats"])`.
      variables: the model's variables ('params', 'batch_stats', ...); the weights are used
        as they are and nothing in them changes.
      batches: the model inputs of N >= 1 batches of equal size (typically training images,
        without or with the training augmentation).
      momentum: m of the model's BN running averages, in [0, 1).
      variance: 'population' (per-device or cross-device BN) or 'batch_mean' (ghost BN).

    Returns:
      New `batch_stats`, to evaluate with: `{**variables, "batch_stats": result}`.

    Raises:
      ValueError: if `batches` is empty, or as `precise_bn_estimator`.

    >>> import functools, flax.linen as nn, jax, jax.numpy as jnp
    >>> model = nn.BatchNorm(momentum=0.99)  # any linen model with BN layers
    >>> x = jnp.array([[0.0], [2.0], [4.0], [6.0]])
    >>> variables = model.init(jax.random.key(0), x, use_running_average=True)
    >>> apply_fn = functools.partial(model.apply, use_running_average=False,
    ...                              mutable=["batch_stats"])
    >>> stats = precise_batch_stats(apply_fn, variables, [x[:2], x[2:]], momentum=0.99)
    >>> [round(float(stats[name][0]), 4) for name in ("mean", "var")]  # float32 sums: 4.999999
    [3.0, 5.0]
    """
    pbn = precise_bn_estimator(apply_fn, momentum=momentum, variance=variance)
    update = jax.jit(pbn.update)
    state = pbn.init(variables["batch_stats"])
    for inputs in batches:
        state = update(state, variables, inputs)
    if int(state.count) == 0:
        raise ValueError("batches must hold at least one batch, got none")
    return jax.jit(pbn.result)(state)


def _check_momentum(momentum: object) -> float:
    momentum = checks.check_non_negative("momentum", momentum)
    if not momentum < 1.0:
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
    return momentum


def _flat_stats(batch_stats: Any) -> dict[tuple[str, ...], dict[str, jax.Array]]:
    """{BN layer path: {'mean': …, 'var': …}}; raises if a leaf is neither."""
    layers: dict[tuple[str, ...], dict[str, jax.Array]] = {}
    for path, leaf in traverse_util.flatten_dict(batch_stats).items():
        if path[-1] not in _STAT_NAMES:
            raise ValueError(
                f"batch_stats leaf {'/'.join(path)} is neither 'mean' nor 'var'; precise BN "
                "needs BN layers that keep exactly a running 'mean' and 'var'"
            )
        layers.setdefault(path[:-1], {})[path[-1]] = leaf
    for layer, stats in layers.items():
        if len(stats) != 2:
            raise ValueError(f"BN layer {'/'.join(layer)} keeps {sorted(stats)}, not mean and var")
    return layers
