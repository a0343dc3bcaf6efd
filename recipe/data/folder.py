"""An image folder as a dataset: ``folder:PATH``, read as it is, with no preparation step.

The layout is the one ImageNet's archives, torchvision's ``ImageFolder`` and TFDS's
``ImageFolder`` share: a folder per split, ``PATH/train`` and ``PATH/val``, holding a folder per
class, whose JPEG and PNG files (``.jpg``, ``.jpeg``, ``.png``, any case, in any subfolder) are
its images::

    PATH/train/cat/0001.jpg   PATH/train/dog/0001.png   ...
    PATH/val/cat/0101.jpg     PATH/val/dog/0102.jpg     ...

The classes are the class folders' names in sorted order (label 0 is the first); other files,
and names starting with a dot, are ignored. The images are read through the crop-aware path of
the 'imagenet' family (``recipe.data.jpeg``: a JPEG decoded only as far as its crop needs, a
PNG by Pillow), so they may have any size. ``read_layout`` lists the folder once per process
and refuses, in one line (``FolderLayoutError``), a layout it cannot train on: a missing split
folder, no class folders, no images at all, train and val with different classes, an empty
class. A file that turns out not to decode is the pipeline's to report
(``recipe.data.pipeline``'s ``unreadable`` argument): it is never skipped silently.
"""

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

from recipe.dataset_spec import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec

PREFIX = "folder:"
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The crop side of the 'imagenet' family (ImageNet's 224), unless the config sets image_size.
DEFAULT_IMAGE_SIZE = 224


class FolderLayoutError(ValueError):
    """An image folder's layout cannot be trained on (one line: what is wrong, and where)."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """An image folder, listed.

    Attributes:
        root: The folder (``PATH`` of ``folder:PATH``).
        classes: The class folders' names, sorted: label ``i`` is ``classes[i]``.
        files: Per split, the image files' paths relative to ``root``, sorted by class, then
            by path.
        labels: Per split, each file's label, in the order of ``files``.
    """

    root: str
    classes: tuple[str, ...]
    files: dict[str, tuple[str, ...]]
    labels: dict[str, tuple[int, ...]]


def folder_path(name: str) -> str:
    """``PATH`` of a dataset named ``folder:PATH``.

    >>> folder_path("folder:/data/photos")
    '/data/photos'
    """
    return name.removeprefix(PREFIX)


def _images_under(directory: str) -> list[str]:
    """The image files under ``directory`` (any depth), relative to it, sorted; dot-names
    skipped."""
    found = []
    for parent, subdirectories, names in os.walk(directory, onerror=_raise):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(os.path.relpath(os.path.join(parent, name), directory))
    return sorted(found)


def _raise(error: OSError) -> None:
    """os.walk's error handler: a folder it cannot list is an error, not a gap."""
    raise error


def _class_folders(split_dir: str) -> list[str]:
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


@functools.cache
def read_layout(root: str) -> Layout:
    """Lists the image folder ``root`` (once per process) and checks its layout.

    Raises:
        FolderLayoutError: ``root`` or a split folder is missing or cannot be listed, a split
            has no class folders, there are no images at all, the splits' classes differ, or a
            class folder holds no images.
    """
    try:
        return _read_layout(root)
    except OSError as error:  # a folder that cannot be listed (permissions, I/O)
        raise FolderLayoutError(
            f"{error.filename or root} cannot be listed ({error.strerror or error}); fix: make "
            "it readable"
        ) from None


def _read_layout(root: str) -> Layout:
    suffixes = ", ".join(IMAGE_SUFFIXES)
    if not os.path.isdir(root):
        raise FolderLayoutError(
            f"{root} is not a folder; fix: give the folder that holds train/ and val/"
        )
    images: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            found = ", ".join(_class_folders(root)) or "nothing"
            raise FolderLayoutError(
                f"{root} has no {split}/ folder (it holds {found}); fix: lay it out as "
                f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg"
            )
        classes = _class_folders(split_dir)
        if not classes:
            raise FolderLayoutError(
                f"{split_dir} holds no class folders; fix: put each class's images in a folder "
                f"of its own, {split_dir}/<class>/*.jpg"
            )
        images[split] = {name: _images_under(os.path.join(split_dir, name)) for name in classes}
    if not any(files for split in images.values() for files in split.values()):
        raise FolderLayoutError(
            f"{root} holds no images ({suffixes}) in its class folders; fix: add them, as "
            f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg"
        )
    train_classes, val_classes = set(images["train"]), set(images["val"])
    if train_classes != val_classes:
        only_train = ", ".join(sorted(train_classes - val_classes)) or "none"
        only_val = ", ".join(sorted(val_classes - train_classes)) or "none"
        raise FolderLayoutError(
            f"{root}/train and {root}/val hold different classes (only in train: {only_train}; "
            f"only in val: {only_val}); fix: give both splits the same class folders"
        )
    for split, per_class in images.items():
        empty = [name for name, files in per_class.items() if not files]
        if empty:
            raise FolderLayoutError(
                f"class folder{'s' * (len(empty) > 1)} {', '.join(empty)} in {root}/{split} "
                f"hold{'s' * (len(empty) == 1)} no images ({suffixes}); fix: add images, or "
                f"remove the class from both splits"
            )
    classes = tuple(sorted(train_classes))
    files, labels = {}, {}
    for split, per_class in images.items():
        files[split] = tuple(
            os.path.join(split, name, file) for name in classes for file in per_class[name]
        )
        labels[split] = tuple(label for label, name in enumerate(classes) for _ in per_class[name])
    return Layout(root=root, classes=classes, files=files, labels=labels)


def folder_spec(name: str) -> DatasetSpec:
    """The spec of the image folder ``folder:PATH``: its classes and split sizes, the
    'imagenet' family at 224 px, ImageNet's statistics.

    Raises:
        FolderLayoutError: As ``read_layout``.
    """
    layout = read_layout(folder_path(name))
    return DatasetSpec(
        name=name,
        tfds_name="",
        num_classes=len(layout.classes),
        image_shape=(DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3),
        num_train=len(layout.files["train"]),
        num_test=len(layout.files["val"]),
        train_split="train",
        test_split="val",
        family="imagenet",
        # Photographs: ImageNet's statistics, unless the config sets them.
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        horizontal_flip=True,
        stored_as="files",
        class_names=layout.classes,
    )


class FolderSource(Sequence[dict[str, Any]]):
    """A split of an image folder as a random-access source: element ``i`` is
    ``{'image': the file's bytes, 'label': int, 'file_name': its path}``, in the order of
    ``Layout.files``. A file that cannot be read (permissions, an I/O error) gives empty bytes
    and ``'error'``, why: the pipeline reports it as it reports an image that does not decode.

    Args:
        layout: The folder (``read_layout``).
        split: 'train' or 'val'.
    """

    def __init__(self, layout: Layout, split: str) -> None:
        self._root = layout.root
        self._files = layout.files[split]
        self._labels = layout.labels[split]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = os.path.join(self._root, self._files[index])
        example = {"image": b"", "label": self._labels[index], "file_name": path}
        try:
            with open(path, "rb") as file:
                example["image"] = file.read()
        except OSError as error:
            example["error"] = f"cannot be read: {error.strerror or error}"
        return example
