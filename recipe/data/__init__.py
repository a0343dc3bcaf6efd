"""Datasets and the deterministic, resumable input pipeline."""

from recipe.data.datasets import (
    DATASET_NAMES,
    DatasetNotPreparedError,
    DatasetSpec,
    InMemorySource,
    default_data_dir,
    get_dataset_spec,
    load_source,
    prepare_dataset,
)
from recipe.data.fashion_mnist import FashionMnist
from recipe.data.mnist5k import Mnist5k
from recipe.data.pipeline import (
    Batch,
    augment_image,
    epoch_permutation,
    eval_batches,
    eval_image,
    num_eval_steps,
    steps_per_epoch,
    train_batches,
)

__all__ = [
    "DATASET_NAMES",
    "Batch",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "FashionMnist",
    "InMemorySource",
    "Mnist5k",
    "augment_image",
    "default_data_dir",
    "epoch_permutation",
    "eval_batches",
    "eval_image",
    "get_dataset_spec",
    "load_source",
    "num_eval_steps",
    "prepare_dataset",
    "steps_per_epoch",
    "train_batches",
]
