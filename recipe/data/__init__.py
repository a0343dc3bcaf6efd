"""Datasets and the deterministic, resumable input pipeline."""

from recipe.data.datasets import (
    DATASET_NAMES,
    GENERATED,
    DatasetNotPreparedError,
    DatasetSpec,
    InMemorySource,
    default_data_dir,
    get_dataset_spec,
    load_in_memory,
    load_source,
    prepare_dataset,
)
from recipe.data.fashion_mnist import FashionMnist
from recipe.data.mnist5k import Mnist5k
from recipe.data.pipeline import (
    Batch,
    augment_image,
    augment_images,
    augmentation_rng,
    default_worker_count,
    epoch_permutation,
    eval_batches,
    eval_image,
    normalize_images,
    num_eval_steps,
    steps_per_epoch,
    train_batches,
)
from recipe.data.synthetic_imagenet import SyntheticImagenet

__all__ = [
    "DATASET_NAMES",
    "GENERATED",
    "Batch",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "FashionMnist",
    "InMemorySource",
    "Mnist5k",
    "SyntheticImagenet",
    "augment_image",
    "augment_images",
    "augmentation_rng",
    "default_data_dir",
    "default_worker_count",
    "epoch_permutation",
    "eval_batches",
    "eval_image",
    "get_dataset_spec",
    "normalize_images",
    "load_in_memory",
    "load_source",
    "num_eval_steps",
    "prepare_dataset",
    "steps_per_epoch",
    "train_batches",
]
