"""What the trainer's loops feed the steps: this process's share of the loader, and the inputs'
normalisation inside the jitted steps (batches cross to the devices as uint8)."""

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from recipe.data import pipeline
from train.resolve import Setup


def loader_options(setup: Setup) -> dict[str, Any]:
    """This process's share of the batch, and uint8 images from `setup.data_workers` workers."""
    return dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        image_size=setup.config.image_size,
        worker_count=setup.data_workers,
        normalize=False,  # uint8 to the devices; `normalizer` inside the steps
    )


def normalizer(setup: Setup) -> Callable[[jax.Array], jax.Array]:
    """The input normalisation of the steps, `(x/255 − mean) / std` in the compute dtype, which
    XLA fuses into the first convolution."""
    return functools.partial(
        pipeline.normalize_images, spec=setup.spec, dtype=jax.numpy.dtype(setup.config.dtype)
    )


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays the steps read (drops the loader's bookkeeping such as 'index')."""
    return {k: v for k, v in batch.items() if k in ("image", "label", "mask")}
