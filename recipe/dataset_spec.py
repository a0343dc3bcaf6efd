"""What the input pipeline and a trained model need to know about a dataset: ``DatasetSpec``.

It lives outside ``recipe.data`` (which needs the ``data`` extra: TensorFlow Datasets, grain,
the JPEG decoder) so that ``recipe.load_run`` reads a trained run's spec from its work dir
(``dataset.json``) with the core install alone. ``recipe.data.DatasetSpec`` is the same class.
"""

import dataclasses
from typing import Any, Literal

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DatasetSpec"]

# ImageNet's per-channel statistics in 0–1 pixel units, as commonly quoted: the ImageNet-style
# datasets use them, and image folders of photographs by default.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the input pipeline needs to know about a dataset.

    Attributes:
        name: The name ``recipe.data.get_dataset_spec`` knows the dataset by: one of
            ``recipe.data.DATASET_NAMES``, any TFDS image-classification dataset prepared in
            the data dir (``cifar100``, ``food101``, ``name/config``), or ``folder:PATH``.
        tfds_name: The TFDS name (with builder config, if any) the source is read from; ''
            for an image folder.
        num_classes: Number of labels.
        image_shape: ``(height, width, channels)`` of the pipeline's output images at the
            default size: the stored size for the 'small' family, the crop size for 'imagenet'.
        num_train: Examples in ``train_split``.
        num_test: Examples in ``test_split``.
        train_split: The split used for training.
        test_split: The split used for evaluation.
        family: Augmentation family: 'small' pads, randomly crops back to size and optionally
            flips; 'imagenet' takes an Inception-style random-resized crop and flips.
        mean: Per-channel mean of the pixels, in 0–1 units.
        std: Per-channel standard deviation of the pixels, in 0–1 units.
        horizontal_flip: Whether training augmentation mirrors images left–right.
        crop_padding: Zero padding (pixels per side) before the random crop ('small' only).
        stored_as: How each image is stored: 'uint8' (a raw array, no decoding), 'png' or
            'jpeg' (TFDS's encoded images: decoded by TFDS for the 'small' family, by recipe's
            own crop-aware path for 'imagenet'), or 'files' (JPEG and PNG files of an image
            folder, read through the crop-aware path).
        class_names: The classes' names, by label, where the dataset names them (image
            folders, TFDS metadata); () otherwise.
    """

    name: str
    tfds_name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    train_split: str
    test_split: str
    family: Literal["small", "imagenet"]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    horizontal_flip: bool
    crop_padding: int = 0
    stored_as: Literal["uint8", "png", "jpeg", "files"] = "uint8"
    class_names: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON values (``from_json`` reads it back).

        >>> spec = DatasetSpec("d", "d", 2, (8, 8, 1), 4, 2, "train", "test", "small",
        ...                    (0.5,), (0.25,), False)
        >>> DatasetSpec.from_json(spec.to_json()) == spec
        True
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "DatasetSpec":
        """The spec ``to_json`` gave (JSON's lists back to tuples)."""
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in values.items()})
