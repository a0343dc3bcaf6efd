"""What the trainer's loops feed the steps: the dataset's splits, this process's share of the
loader, and the inputs' normalisation inside the jitted steps (batches cross to the devices as
uint8)."""

import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from recipe.data import datasets, pipeline
from train.resolve import ConfigError, Setup


def open_data(setup: Setup) -> tuple[Any, Any]:
    """(train source, test source) of the run's dataset, held decoded in memory with
    `data_in_memory` (decoded once per process).

    Raises:
      ConfigError: the dataset is not prepared in the data dir.
    """
    spec, data = setup.spec, setup.data
    load = datasets.load_in_memory if data.in_memory else datasets.load_source
    try:
        return (
            load(spec.name, spec.train_split, data.data_dir),
            load(spec.name, spec.test_split, data.data_dir),
        )
    except datasets.DatasetNotPreparedError as error:
        raise ConfigError(" ".join(str(error).split())) from error


def train_batches(
    setup: Setup, source: Any, *, start_step: int, num_steps: int, augment: bool
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the training batches of steps `start_step` … `start_step +
    num_steps − 1` (the stream is a function of the seed and the step, so a resumed run and
    precise BN read exactly the batches of those steps)."""
    return pipeline.train_batches(
        source,
        setup.spec,
        seed=setup.seed,
        global_batch=setup.layout.batch_size,
        start_step=start_step,
        num_steps=num_steps,
        augment=augment,
        accumulation_steps=setup.layout.accumulation_steps,
        **loader_options(setup),
    )


def loader_options(setup: Setup) -> dict[str, Any]:
    """This process's share of the batch, and uint8 images from `setup.data_workers` workers."""
    return dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        image_size=setup.data.image_size,
        worker_count=setup.data_workers,
        normalize=False,  # uint8 to the devices; `normalizer` inside the steps
    )


def normalizer(setup: Setup) -> Callable[[jax.Array], jax.Array]:
    """The input normalisation of the steps, `(x/255 − mean) / std` in the compute dtype, which
    XLA fuses into the first convolution."""
    return functools.partial(pipeline.normalize_images, spec=setup.spec, dtype=setup.model.dtype)


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays the steps read (drops the loader's bookkeeping such as 'index')."""
    return {k: v for k, v in batch.items() if k in ("image", "label", "mask")}
