"""Datasets and the deterministic, resumable input pipeline.

Needs the ``data`` extra (``pip install 'large-batch-recipe[data]'``): TensorFlow Datasets,
array_record, grain, simplejpeg, OpenCV and Pillow. ``import recipe`` does not import this
package, and the core install does not bring them.
"""

from recipe import extras

extras.require("recipe.data", "data", extras.DATA)

from recipe.data.datasets import (  # noqa: E402  (after the check that names the extra)
    DATASET_NAMES,
    FAMILIES,
    GENERATED,
    DatasetNotPreparedError,
    DatasetSpec,
    InMemorySource,
    default_data_dir,
    get_dataset_spec,
    load_in_memory,
    load_source,
    pixel_statistics,
    prepare_dataset,
    split_labels,
)
from recipe.data.fashion_mnist import FashionMnist  # noqa: E402
from recipe.data.folder import FolderLayoutError, FolderSource  # noqa: E402
from recipe.data.mnist5k import Mnist5k  # noqa: E402
from recipe.data.pipeline import (  # noqa: E402
    Batch,
    UnreadableImageError,
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
from recipe.data.subsets import Subset, class_balanced_subset  # noqa: E402
from recipe.data.synthetic_imagenet import SyntheticImagenet  # noqa: E402

__all__ = [
    "DATASET_NAMES",
    "FAMILIES",
    "GENERATED",
    "Batch",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "FashionMnist",
    "FolderLayoutError",
    "FolderSource",
    "InMemorySource",
    "Mnist5k",
    "Subset",
    "SyntheticImagenet",
    "UnreadableImageError",
    "augment_image",
    "augment_images",
    "augmentation_rng",
    "class_balanced_subset",
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
    "pixel_statistics",
    "prepare_dataset",
    "split_labels",
    "steps_per_epoch",
    "train_batches",
]
