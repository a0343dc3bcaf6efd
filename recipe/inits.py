"""Weight initialisers of Goyal et al. 2017, §5.1.

* Every convolution: He et al. 2015 ("Kaiming") normal, fan-out mode.
* The final fully-connected layer: zero-mean Gaussian with standard deviation 0.01.
* Batch norm: β = 0; γ = 1, except γ = 0 for the last BN of each residual block, so that every
  block starts as the identity on its shortcut.

Each function is a small factory returning a JAX initializer ``init(key, shape, dtype)``.
"""

import jax
from flax.typing import Initializer


def conv_kernel_init() -> Initializer:
    """He/Kaiming normal initializer for convolution kernels (Goyal §5.1).

    Draws from an *untruncated* normal with

        std = sqrt(2 / fan_out),  fan_out = kh · kw · out_channels

    for a Flax kernel of shape ``(kh, kw, in_channels, out_channels)``, as torchvision's
    ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``. ``jax.nn.initializers.he_normal``
    is not used because it samples a truncated normal and uses fan-in.

    Returns:
        An initializer ``init(key, shape, dtype)``.

    >>> import jax
    >>> w = conv_kernel_init()(jax.random.key(0), (3, 3, 16, 32))
    >>> w.shape
    (3, 3, 16, 32)
    """
    return jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def fc_kernel_init(stddev: float = 0.01) -> Initializer:
    """Gaussian initializer for the final fully-connected layer (Goyal §5.1).

    Draws w ~ N(0, σ²) with standard deviation σ = ``stddev`` (0.01 in the paper; the study note's
    "σ² = 0.01" would be σ = 0.1, which is not what the paper says).

    Args:
        stddev: Standard deviation σ of the zero-mean normal.

    Returns:
        An initializer ``init(key, shape, dtype)``.

    >>> import jax
    >>> w = fc_kernel_init()(jax.random.key(0), (2048, 1000))
    >>> round(float(w.std()), 3)
    0.01
    """
    return jax.nn.initializers.normal(stddev)


def bn_scale_init(zero: bool = False) -> Initializer:
    """Initializer for a batch-norm scale γ (Goyal §5.1).

    γ = 1 for every BN, except γ = 0 for the last BN of each residual block (pass ``zero=True``
    there): the block's residual branch then outputs 0, so the block computes
    ReLU(shortcut(x)) at initialisation, which eases optimisation at large minibatches (Table 2).

    Args:
        zero: Whether γ starts at 0 (last BN of a residual block) instead of 1.

    Returns:
        An initializer ``init(key, shape, dtype)`` returning all zeros or all ones.

    >>> import jax
    >>> bn_scale_init(zero=True)(jax.random.key(0), (3,)).tolist()
    [0.0, 0.0, 0.0]
    """
    return jax.nn.initializers.zeros if zero else jax.nn.initializers.ones
