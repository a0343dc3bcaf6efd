"""Dataset metadata and random-access sources: TFDS array_record files, and image folders.

The datasets with a spec here (``DATASET_NAMES``) are described by it; any other TFDS
image-classification dataset is read from its prepared metadata (``get_dataset_spec``), and an
image folder, ``folder:PATH``, from its listing (``recipe.data.folder``). The datasets built on
this machine are prepared implicitly on first use, offline: ``mnist5k`` from the digits shipped
in this package in under a second, the synthetic ImageNet JPEGs (``synthetic_imagenet`` in about
a minute, ``synthetic_imagenet_small`` in a few seconds), and ``fashion_mnist`` when its IDX
files are on the machine (Debian's ``dataset-fashion-mnist`` package, or
``<data_dir>/downloads/manual``). Every other TFDS dataset must already be prepared as
array_record in the data directory; ``load_source`` checks the files itself before calling
TFDS, so it never starts a download. ``prepare_dataset`` is the explicit, networked way to
prepare one.
"""

import contextlib
import dataclasses
import difflib
import functools
import importlib.util
import io
import json
import os
import socket
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.download import resource as tfds_resource

from recipe import checks
from recipe.data import fashion_mnist, folder
from recipe.data.mnist5k import Mnist5k
from recipe.data.synthetic_imagenet import SyntheticImagenet
from recipe.dataset_spec import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec

# Per-channel statistics in 0–1 pixel units, as commonly quoted for each dataset.
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)


_SPECS = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist5k",
            tfds_name="mnist5k",
            num_classes=10,
            image_shape=(28, 28, 1),
            num_train=4000,
            num_test=1000,
            train_split="train",
            test_split="test",
            family="small",
            # Mean and std of all pixels/255 of the 4,000 training images (0.130860, 0.308016),
            # computed once with numpy from `read_mnist5k` and `split_row_indices`.
            mean=(0.1309,),
            std=(0.3080,),
            # Mirrored digits are not digits. Strokes stay within the central 20×20 box, so
            # shifts of up to 2 px keep them inside the 28×28 frame.
            horizontal_flip=False,
            crop_padding=2,
        ),
        DatasetSpec(
            name="cifar10",
            tfds_name="cifar10",
            num_classes=10,
            image_shape=(32, 32, 3),
            num_train=50_000,
            num_test=10_000,
            train_split="train",
            test_split="test",
            family="small",
            stored_as="png",
            mean=_CIFAR10_MEAN,
            std=_CIFAR10_STD,
            horizontal_flip=True,
            crop_padding=4,
        ),
        DatasetSpec(
            name="imagenette",
            # The 160 px (shorter side) variant of Imagenette v2, cropped to 128 px as in the
            # fast.ai Imagenette benchmarks; pass `image_size` to the pipeline to change it.
            tfds_name="imagenette/160px-v2",
            num_classes=10,
            image_shape=(128, 128, 3),
            num_train=9469,
            num_test=3925,
            train_split="train",
            test_split="validation",
            family="imagenet",
            stored_as="jpeg",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            horizontal_flip=True,
        ),
        DatasetSpec(
            name="imagenet2012",
            tfds_name="imagenet2012",
            num_classes=1000,
            image_shape=(224, 224, 3),
            num_train=1_281_167,
            num_test=50_000,
            train_split="train",
            test_split="validation",
            family="imagenet",
            stored_as="jpeg",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            horizontal_flip=True,
        ),
        DatasetSpec(
            name="fashion_mnist",
            tfds_name="fashion_mnist",
            num_classes=10,
            image_shape=(28, 28, 1),
            num_train=60_000,
            num_test=10_000,
            train_split="train",
            test_split="test",
            family="small",
            stored_as="png",
            # Mean and std of all pixels/255 of the 60,000 training images (0.286041,
            # 0.353024), computed once with numpy from `fashion_mnist.read_idx` of
            # train-images-idx3-ubyte.gz.
            mean=(0.2860,),
            std=(0.3530,),
            # A mirrored garment is the same garment (shoes all point left; mirrored, they
            # point right). Items fill the frame, so shifts stay small: 2 px of 28.
            horizontal_flip=True,
            crop_padding=2,
        ),
        *(
            DatasetSpec(
                name=name,
                tfds_name=f"synthetic_imagenet/{config.name}",
                num_classes=config.num_classes,
                image_shape=(224, 224, 3),
                num_train=config.num_train,
                num_test=config.num_validation,
                train_split="train",
                test_split="validation",
                family="imagenet",
                stored_as="jpeg",
                # ImageNet's statistics, so configs written for imagenet2012 apply unchanged.
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                horizontal_flip=True,
            )
            for name, config in (
                ("synthetic_imagenet", SyntheticImagenet.builder_configs["default"]),
                ("synthetic_imagenet_small", SyntheticImagenet.builder_configs["small"]),
            )
        ),
    )
}

DATASET_NAMES: tuple[str, ...] = tuple(_SPECS)
# Datasets built on this machine without a download, which `load_source` prepares on first use.
GENERATED: tuple[str, ...] = ("mnist5k", "synthetic_imagenet", "synthetic_imagenet_small")


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset is not prepared as array_record in the data directory."""


FAMILIES: tuple[str, ...] = ("small", "imagenet")
# A TFDS dataset read from its metadata whose images all have one size, at most SMALL_SIDE
# pixels on a side (MNIST's 28, CIFAR's 32, Tiny ImageNet's 64), is of the 'small' family (pad,
# crop, flip); any other of the 'imagenet' family, cropped to a side of at most IMAGENET_CROP.
SMALL_SIDE = 64
IMAGENET_CROP = 224
# What recipe computes once from a prepared TFDS dataset and stores beside its files (in its
# version directory): the per-channel statistics of a dataset it has no entry for, and a
# split's labels (``split_labels``).
STATISTICS_FILE = "recipe_statistics.json"
LABELS_FILE = "recipe_{split}_labels.npy"
# The statistics come from at most this many training images, drawn with a fixed seed (all of
# a smaller split): within about 0.001 of the whole split's, for a fraction of the time.
STATISTICS_IMAGES = 10_000
_CHUNK = 1024  # examples read per call


def get_dataset_spec(
    name: str,
    data_dir: str | None = None,
    *,
    family: str | None = None,
    statistics: tuple[Sequence[float], Sequence[float]] | None = None,
) -> DatasetSpec:
    """Returns the spec of a dataset.

    A dataset of ``DATASET_NAMES`` has a spec written here. An image folder, ``folder:PATH``,
    is listed (``recipe.data.folder``). Any other name is a TFDS image-classification dataset
    prepared as array_record in ``data_dir`` (``cifar100``, ``food101``, ``name/config``,
    ``name:version``; prepare one with ``prepare_dataset``), read offline from its metadata:
    the image feature and the class-label feature (its supervised keys, or its only ones), the
    classes, the ``train`` split and the ``test`` (else ``validation``) split, their sizes and
    the image shape; the family by the image size (``SMALL_SIDE``); the per-channel mean and std
    of its training images (``pixel_statistics`` of up to ``STATISTICS_IMAGES`` of them),
    computed once and stored beside the prepared files (``STATISTICS_FILE``).

    Args:
        name: A dataset name, as above.
        data_dir: TFDS data directory (for TFDS datasets without a spec here); defaults to
            ``default_data_dir()``.
        family: The augmentation family to read it with instead of its own: 'imagenet' for any
            dataset, 'small' for one whose images all have one size.
        statistics: ``(mean, std)`` per channel, in 0–1 units, instead of the dataset's own
            (then nothing is computed).

    Raises:
        ValueError: The name is none of the above, the TFDS dataset is not an image
            classification one or lacks a train or test split, or ``family`` is 'small' for
            images of varying size (``recipe.data.folder.FolderLayoutError``, a ValueError,
            for an image folder's layout).
        DatasetNotPreparedError: A TFDS dataset without a spec here is not prepared in
            ``data_dir`` (the message says how to prepare it).
    """
    if family is not None:
        checks.check_choice("family", family, FAMILIES)
    if name in _SPECS:
        spec = _SPECS[name]
    elif name.startswith(folder.PREFIX):
        spec = folder.folder_spec(name)
    else:
        spec = _tfds_spec(name, data_dir or default_data_dir(), family, statistics is None)
    if family is not None and family != spec.family:
        if family == "small":
            raise ValueError(
                f"the 'small' augmentation family pads and crops images of one size; "
                f"{spec.name}'s vary in size: read it with the 'imagenet' family"
            )
        spec = dataclasses.replace(spec, family=family)
    if statistics is not None:
        mean, std = statistics
        spec = dataclasses.replace(spec, mean=tuple(mean), std=tuple(std))
    return spec


def default_data_dir() -> str:
    """Returns ``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare_dataset(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> None:
    """Downloads (if needed) and prepares a dataset as array_record in ``data_dir``.

    ``mnist5k`` is built from the digits shipped in this package and the synthetic ImageNets
    are generated (``load_source`` does both itself). ``fashion_mnist`` is built from its four
    IDX files in ``manual_dir`` if given (it must hold them), else in
    ``<data_dir>/downloads/manual`` or Debian's ``/usr/share/datasets/fashion-mnist``, whichever
    holds them first, else from TFDS's own download; neither way needs TensorFlow. The others,
    and any TFDS image-classification dataset by its TFDS name (``cifar100``, ``food101``,
    ``oxford_flowers102``, ``name/config``), are fetched by TFDS, which needs network access and
    TensorFlow (the ``prepare`` extra) to encode images; ``imagenet2012`` needs
    ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` in ``manual_dir`` (default
    ``<data_dir>/downloads/manual``). For a dataset without a spec here, the per-channel
    statistics of its training images are computed and stored beside it
    (``get_dataset_spec``). Reading the prepared files needs no TensorFlow.

    Args:
        name: One of ``DATASET_NAMES``, or a TFDS image-classification dataset's name.
        data_dir: TFDS data directory; defaults to ``default_data_dir()``.
        manual_dir: Where manually downloaded archives or files are.

    Raises:
        ImportError: If the dataset needs TensorFlow and it is not installed (checked before
            anything is downloaded).
        ConnectionError: If a host it must download from does not resolve (no network, no
            proxy): at once, instead of TFDS's retries (about 3 minutes).
        ValueError: TFDS has no dataset of that name, or it is not an image-classification
            dataset (checked before anything is downloaded).
        DatasetNotPreparedError: If ``manual_dir`` is given for ``fashion_mnist`` and lacks
            some of its IDX files.
    """
    data_dir = data_dir or default_data_dir()
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    if name not in _SPECS:
        builder = tfds.builder(name, data_dir=data_dir)
        _image_and_label_keys(name, builder.info)
        _check_tensorflow_for_preparing(name)
        _check_download_hosts(name, name, builder, data_dir)
        builder.download_and_prepare(file_format="array_record", download_config=download_config)
        get_dataset_spec(name, data_dir)  # its statistics, computed and stored now
        return
    spec = _SPECS[name]
    downloads = False
    if spec.name == "mnist5k":
        builder = Mnist5k(data_dir=data_dir)
    elif spec.tfds_name.startswith(SyntheticImagenet.name + "/"):
        builder = SyntheticImagenet(config=spec.tfds_name.partition("/")[2], data_dir=data_dir)
    elif spec.name == "fashion_mnist":
        idx_dir = _fashion_mnist_idx_dir(data_dir, manual_dir)
        builder = fashion_mnist.FashionMnist(data_dir=data_dir, idx_dir=idx_dir)
        downloads = idx_dir is None
    else:
        _check_tensorflow_for_preparing(spec.name)
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
        downloads = True
    if downloads:
        _check_download_hosts(spec.name, spec.tfds_name, builder, data_dir)
    builder.download_and_prepare(file_format="array_record", download_config=download_config)


def _check_tensorflow_for_preparing(name: str) -> None:
    if importlib.util.find_spec("tensorflow") is None:  # found, not imported: TFDS imports it
        raise ImportError(
            f"preparing {name} needs TensorFlow: TFDS encodes its images with it (training "
            "on the prepared files does not need it). Install it with "
            "`pip install 'large-batch-recipe[prepare]'` (or `pip install tensorflow-cpu`), "
            "prepare once, then train with or without it."
        )


# Where these are set, requests reaches the network through a proxy, which resolves the hosts.
_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def _check_download_hosts(name: str, tfds_name: str, builder: Any, data_dir: str) -> None:
    """Fails at once, in one line naming dataset ``name``, if a host ``builder`` (TFDS's
    ``tfds_name``) would download from does not resolve.

    Offline, TFDS's downloader retries each file 10 times with a doubling back-off, about 3
    minutes, before it gives up. Files already in ``<data_dir>/downloads`` (TFDS reuses them),
    builders that read only a manual directory (``imagenet2012``) and a configured proxy (which
    resolves the hosts itself) need no check.
    """
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or any(
        os.environ.get(name) for name in _PROXY_VARIABLES
    ):
        return
    downloads = epath.Path(data_dir) / "downloads"

    def downloaded(url: str, checksum: str) -> bool:  # in TFDS's layout, old or new
        name = tfds_resource.get_dl_fname(url, checksum)
        return (downloads / name).exists() or any(downloads.glob(f"*/{name}"))

    hosts = sorted(
        {
            urllib.parse.urlsplit(url).hostname
            for url, info in (builder.url_infos or {}).items()
            if not downloaded(url, info.checksum)
        }
        - {None}
    )
    for host in hosts:
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror as error:
            raise ConnectionError(
                f"preparing {name} downloads it from {host}, which does not resolve "
                f"({error.strerror}): no network access? Connect this machine (or set "
                "HTTPS_PROXY), or prepare it where there is network and copy "
                f"{epath.Path(data_dir) / tfds_name.partition('/')[0]} here. (TFDS itself "
                "would retry for about 3 minutes.)"
            ) from error


def _default_manual_dir(data_dir: str) -> epath.Path:
    """TFDS's default manual directory of ``data_dir``."""
    return epath.Path(data_dir) / "downloads" / "manual"


def _fashion_mnist_idx_dir(data_dir: str, manual_dir: str | None) -> epath.Path | None:
    """Where Fashion-MNIST's IDX files are: ``manual_dir`` if given (it must hold them), else
    the first of ``<data_dir>/downloads/manual`` and Debian's directory that holds them."""
    if manual_dir is not None:
        if missing := fashion_mnist.missing_idx_files(manual_dir):
            raise DatasetNotPreparedError(f"manual_dir {manual_dir} lacks {', '.join(missing)}.")
        return epath.Path(manual_dir)
    return fashion_mnist.find_idx_dir([_default_manual_dir(data_dir), fashion_mnist.DEBIAN_IDX_DIR])


def _prepares_offline(spec: DatasetSpec, data_dir: str) -> bool:
    """Whether ``prepare_dataset`` can prepare the dataset without the network."""
    if spec.name == "fashion_mnist":
        return _fashion_mnist_idx_dir(data_dir, None) is not None
    return spec.name in GENERATED


def _version_dirs(dataset_dir: epath.Path) -> list[epath.Path]:
    """The prepared version directories of a TFDS dataset (or builder config), newest first."""
    dirs = [path.parent for path in dataset_dir.glob("*/dataset_info.json")]
    versions = [path for path in dirs if tfds.core.Version.is_valid(path.name)]
    return sorted(versions, key=lambda path: tfds.core.Version(path.name), reverse=True)


def _split_files_problem(version_dirs: Sequence[epath.Path], split: str) -> str | None:
    """Why ``split`` cannot be read from any of ``version_dirs``, or None if it can."""
    split_name = split.partition("[")[0]
    if any(any(path.glob(f"*-{split_name}.array_record-*")) for path in version_dirs):
        return None
    return (
        f"no array_record files for split {split_name!r} in "
        f"{', '.join(map(str, version_dirs))} (prepared in another file format? Delete it and "
        "prepare again)"
    )


def _missing_array_record_files(spec: DatasetSpec, split: str, data_dir: str) -> str | None:
    """Returns why ``split`` cannot be read from ``data_dir``, or None if it can."""
    dataset_dir = epath.Path(data_dir) / spec.tfds_name
    version_dirs = _version_dirs(dataset_dir)
    if not version_dirs:
        return f"no prepared version under {dataset_dir}"
    return _split_files_problem(version_dirs, split)


def _how_to_prepare(name: str, data_dir: str) -> str:
    command = (
        f'python -c "from recipe.data import prepare_dataset; '
        f"prepare_dataset('{name}', '{data_dir}')\""
    )
    if name == "fashion_mnist":
        return (
            f"Its IDX files are in neither {_default_manual_dir(data_dir)} nor "
            f"{fashion_mnist.DEBIAN_IDX_DIR}. Install them (offline, Debian/Ubuntu) with:\n"
            "  apt-get install dataset-fashion-mnist\n"
            f"or let TFDS download and prepare it (needs network access) with:\n  {command}"
        )
    instructions = (
        "Prepare it once (needs network access and TensorFlow: "
        f"`pip install 'large-batch-recipe[prepare]'`) with:\n  {command}"
    )
    if name == "imagenet2012":
        instructions += (
            "\nafter placing ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
            f"{_default_manual_dir(data_dir)} (TFDS cannot download ImageNet)."
        )
    return instructions


# ---- TFDS image-classification datasets without a spec here, read from their metadata.


def _prepared_version_dir(name: str, data_dir: str) -> epath.Path | None:
    """The newest prepared version directory of the TFDS dataset ``name`` (``name``,
    ``name/config``, ``name:version``) in ``data_dir``, or None.

    Raises:
        ValueError: ``name`` names no config and several of its configs are prepared.
    """
    base, _, version = name.partition(":")
    dataset_dir = epath.Path(data_dir) / base
    if version:
        version_dir = dataset_dir / version
        return version_dir if (version_dir / "dataset_info.json").exists() else None
    if version_dirs := _version_dirs(dataset_dir):
        return version_dirs[0]
    if "/" in base or not dataset_dir.is_dir():
        return None
    configs = sorted(path for path in dataset_dir.iterdir() if _version_dirs(path))
    if len(configs) > 1:
        names = ", ".join(f"{base}/{path.name}" for path in configs)
        raise ValueError(
            f"{base} has several builder configs prepared in {data_dir} ({names}): name one, "
            f"e.g. {base}/{configs[0].name}"
        )
    return _version_dirs(configs[0])[0] if configs else None


@functools.cache
def _read_only_builder(version_dir: str) -> tfds.core.DatasetBuilder:
    """The prepared dataset's builder, from its files alone (its code need not be at hand)."""
    return tfds.builder_from_directory(version_dir)


def _image_and_label_keys(name: str, info: tfds.core.DatasetInfo) -> tuple[str, str]:
    """The image feature's and the class-label feature's keys: the supervised keys if they
    are such features, else the only image and the only class label.

    Raises:
        ValueError: There is no such pair: not an image-classification dataset.
    """
    features = info.features
    images = [key for key, f in features.items() if isinstance(f, tfds.features.Image)]
    labels = [key for key, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    supervised = info.supervised_keys
    if (
        isinstance(supervised, tuple)
        and len(supervised) == 2
        and supervised[0] in images
        and supervised[1] in labels
    ):
        return supervised
    if len(images) == 1 and len(labels) == 1:
        return images[0], labels[0]
    kinds = ", ".join(f"{key} ({type(feature).__name__})" for key, feature in features.items())
    raise ValueError(
        f"{name} is not an image-classification dataset recipe can read: it needs one image "
        f"feature and one class-label feature (supervised keys, or the only ones), and has "
        f"{kinds}"
    )


def _own_family(image: tfds.features.Image) -> str:
    """'small' for images of one size with sides up to ``SMALL_SIDE``, else 'imagenet'."""
    height, width, _ = image.shape
    fixed = height is not None and width is not None
    return "small" if fixed and max(height, width) <= SMALL_SIDE else "imagenet"


def _not_prepared(name: str, data_dir: str) -> Exception:
    """The error for a TFDS dataset without a spec here that ``data_dir`` does not hold:
    how to prepare it, or that TFDS has no such image-classification dataset."""
    base = name.partition(":")[0].partition("/")[0]
    try:
        tfds.builder_cls(base)  # TFDS's registry only: no import of TensorFlow, no network
    except tfds.core.registered.DatasetNotFoundError:
        known = [*DATASET_NAMES, *tfds.list_builders(with_community_datasets=False)]
        close = difflib.get_close_matches(base, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return ValueError(
            f"{name!r} is none of {', '.join(DATASET_NAMES)}, no TFDS dataset prepared in "
            f"{data_dir}, no dataset TFDS knows, and not folder:PATH{hint}"
        )
    builder = tfds.builder(name, data_dir=data_dir)  # constructed: nothing is downloaded
    _image_and_label_keys(name, builder.info)
    return DatasetNotPreparedError(
        f"{name} is not prepared as array_record in {data_dir}. " + _how_to_prepare(name, data_dir)
    )


def _tfds_version_dir(name: str, data_dir: str, splits: Sequence[str]) -> epath.Path:
    """The prepared version directory of a TFDS dataset without a spec here, holding
    ``splits`` as array_record.

    Raises:
        ValueError, DatasetNotPreparedError: As ``get_dataset_spec``.
    """
    version_dir = _prepared_version_dir(name, data_dir)
    if version_dir is None:
        raise _not_prepared(name, data_dir)
    for split in splits:
        if problem := _split_files_problem([version_dir], split):
            raise DatasetNotPreparedError(
                f"{name} is not prepared as array_record in {data_dir}: {problem}. "
                + _how_to_prepare(name, data_dir)
            )
    return version_dir


def _tfds_spec(
    name: str, data_dir: str, family: str | None, compute_statistics: bool
) -> DatasetSpec:
    """The spec of a TFDS dataset without a spec here, from its prepared metadata (see
    ``get_dataset_spec``); with ``compute_statistics`` False its mean and std are
    placeholders (0 and 1) for the caller's."""
    version_dir = _prepared_version_dir(name, data_dir)
    if version_dir is None:
        raise _not_prepared(name, data_dir)
    info = _read_only_builder(str(version_dir)).info
    image_key, label_key = _image_and_label_keys(name, info)
    test_split = next((s for s in ("test", "validation") if s in info.splits), None)
    if "train" not in info.splits or test_split is None:
        raise ValueError(
            f"{name} has the splits {', '.join(info.splits)}; training needs 'train' and "
            "'test' (or 'validation')"
        )
    _tfds_version_dir(name, data_dir, ("train", test_split))
    image, label = info.features[image_key], info.features[label_key]
    height, width, channels = image.shape
    channels = channels or 3
    own_family = _own_family(image)
    family = family or own_family
    if family == "small" and (height is None or width is None):
        raise ValueError(
            f"the 'small' augmentation family pads and crops images of one size; {name}'s vary "
            "in size: read it with the 'imagenet' family"
        )
    if family == "small":
        image_shape = (height, width, channels)
    else:
        side = IMAGENET_CROP if height is None or width is None else min(height, width)
        image_shape = (min(side, IMAGENET_CROP),) * 2 + (channels,)
    if compute_statistics:
        mean, std = _stored_statistics(name, version_dir, image_key, info.splits["train"])
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    return DatasetSpec(
        name=name,
        tfds_name=str(version_dir.parent.relative_to(data_dir)),
        num_classes=label.num_classes,
        image_shape=image_shape,
        num_train=info.splits["train"].num_examples,
        num_test=info.splits[test_split].num_examples,
        train_split="train",
        test_split=test_split,
        family=family,
        mean=mean,
        std=std,
        horizontal_flip=True,
        crop_padding=max(1, round(min(image_shape[:2]) / 8)) if family == "small" else 0,
        stored_as="jpeg" if image.encoding_format == "jpeg" else "png",
        class_names=tuple(label.names),
    )


def _tfds_source(
    name: str, split: str, data_dir: str, family: str | None
) -> Sequence[dict[str, Any]]:
    """A split of a TFDS dataset without a spec here, as dicts with 'image' and 'label'."""
    version_dir = _tfds_version_dir(name, data_dir, (split,))
    builder = _read_only_builder(str(version_dir))
    image_key, label_key = _image_and_label_keys(name, builder.info)
    as_bytes = (family or _own_family(builder.info.features[image_key])) == "imagenet"
    decoders = {image_key: tfds.decode.SkipDecoding()} if as_bytes else None
    source = builder.as_data_source(split, decoders=decoders)
    return _Renamed(source, image_key, label_key)


class _Renamed(Sequence[dict[str, Any]]):
    """A source whose image and label features have other keys, as 'image' and 'label'."""

    def __init__(self, source: Sequence[dict[str, Any]], image_key: str, label_key: str):
        self._source, self._keys = source, (image_key, label_key)

    def __len__(self) -> int:
        return len(self._source)

    def _renamed(self, example: dict[str, Any]) -> dict[str, Any]:
        return {"image": example[self._keys[0]], "label": example[self._keys[1]]}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._renamed(self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self._renamed(example) for example in read_examples(self._source, indices)]


def pixel_statistics(images: Iterable[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of all the pixels of uint8 ``(H, W, C)`` images
    (of any sizes), in 0–1 units.

    >>> images = [np.zeros((2, 2, 1), np.uint8), np.full((2, 2, 1), 255, np.uint8)]
    >>> pixel_statistics(images)
    ((0.5,), (0.5,))
    """
    total = squares = None
    count = 0
    for image in images:
        pixels = np.asarray(image, np.float64).reshape(-1, image.shape[-1]) / 255
        total = pixels.sum(0) if total is None else total + pixels.sum(0)
        squares = (pixels**2).sum(0) if squares is None else squares + (pixels**2).sum(0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _write_beside(path: epath.Path, data: bytes) -> None:
    """Writes ``path`` whole (a temporary file renamed into place, so concurrent writers and
    readers see either nothing or all of it); where the data dir is read-only, says so."""
    temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        temporary.write_bytes(data)
        temporary.rename(path)
    except OSError as error:
        print(f"could not store {path} ({error}): it is computed again on each run")


def _stored_statistics(
    name: str, version_dir: epath.Path, image_key: str, split_info: Any
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std of the dataset's training images: stored beside it, or
    computed now from up to ``STATISTICS_IMAGES`` of them (a fixed draw) and stored."""
    path = version_dir / STATISTICS_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        return tuple(stored["mean"]), tuple(stored["std"])
    source = _read_only_builder(str(version_dir)).as_data_source("train")
    num_train = split_info.num_examples
    count = min(num_train, STATISTICS_IMAGES)
    rng = np.random.default_rng(0)
    indices = np.sort(rng.choice(num_train, count, replace=False)) if count < num_train else None
    indices = np.arange(num_train) if indices is None else indices
    print(
        f"computing {name}'s per-channel mean and std from {count} of its {num_train} training "
        f"images (once: stored in {path})"
    )
    mean, std = pixel_statistics(example[image_key] for example in _read_in_chunks(source, indices))
    record = {"split": "train", "images": count, "of": num_train, "mean": mean, "std": std}
    _write_beside(path, (json.dumps(record, indent=1) + "\n").encode())
    return mean, std


def _read_in_chunks(
    source: Sequence[dict[str, Any]], indices: np.ndarray
) -> Iterator[dict[str, Any]]:
    for start in range(0, len(indices), _CHUNK):
        yield from read_examples(source, indices[start : start + _CHUNK])


def load_source(
    name: str, split: str, data_dir: str | None = None, *, family: str | None = None
) -> Sequence[dict[str, Any]]:
    """Returns a random-access source of a split's examples (dicts with 'image' and 'label').

    'image' is a uint8 ``(H, W, C)`` array for the 'small' family and, for the 'imagenet'
    family, the encoded image's bytes where it is stored encoded (``tfds.decode.SkipDecoding``;
    an image folder's files): the pipeline decodes only what its crop needs. ``mnist5k``, the
    synthetic ImageNets (``GENERATED``) and ``fashion_mnist`` when its IDX files are on the
    machine (see ``prepare_dataset``) are prepared into ``data_dir`` on first use. Any other
    TFDS dataset must already be prepared as array_record there; this function checks the files
    before calling TFDS, so it never downloads. An image folder (``folder:PATH``) is read as it
    is (``recipe.data.folder.FolderSource``).

    Args:
        name: A dataset name (see ``get_dataset_spec``).
        split: A split of the dataset, e.g. ``spec.train_split``.
        data_dir: TFDS data directory; defaults to ``default_data_dir()``.
        family: The augmentation family it is read for, if not its own (``get_dataset_spec``'s
            ``family``): it decides whether encoded images come as arrays or bytes.

    Raises:
        ValueError: If the name is unknown (see ``get_dataset_spec``).
        DatasetNotPreparedError: If the split is not prepared as array_record in ``data_dir``.
    """
    if name.startswith(folder.PREFIX):
        return folder.FolderSource(folder.read_layout(folder.folder_path(name)), split)
    data_dir = data_dir or default_data_dir()
    if name not in _SPECS:
        return _tfds_source(name, split, data_dir, family)
    spec = _SPECS[name]
    problem = _missing_array_record_files(spec, split, data_dir)
    if problem and _prepares_offline(spec, data_dir):
        # Processes preparing concurrently write identical data; all but the first fail to
        # rename theirs into place with FileExistsError, and then read the first's.
        with contextlib.suppress(FileExistsError):
            prepare_dataset(spec.name, data_dir)
        problem = _missing_array_record_files(spec, split, data_dir)
    if problem:
        raise DatasetNotPreparedError(
            f"{spec.tfds_name} is not prepared as array_record in {data_dir}: {problem}.\n"
            + _how_to_prepare(spec.name, data_dir)
        )
    as_bytes = (family or spec.family) == "imagenet" and spec.stored_as in ("png", "jpeg")
    decoders = {"image": tfds.decode.SkipDecoding()} if as_bytes else None
    return tfds.data_source(
        spec.tfds_name, split=split, data_dir=data_dir, download=False, decoders=decoders
    )


@functools.cache
def split_labels(name: str, split: str, data_dir: str | None = None) -> np.ndarray:
    """Every label of a split, in its order (int64), read once per process: an image folder's
    from its listing; a TFDS dataset's from its examples (images not decoded), stored beside
    its files (``LABELS_FILE``) so that later processes read them at once.

    Raises:
        As ``load_source``.
    """
    if name.startswith(folder.PREFIX):
        return np.asarray(folder.read_layout(folder.folder_path(name)).labels[split], np.int64)
    data_dir = data_dir or default_data_dir()
    source = load_source(name, split, data_dir, family="imagenet")  # encoded images: bytes
    if name in _SPECS:
        version_dir = _version_dirs(epath.Path(data_dir) / _SPECS[name].tfds_name)[0]
    else:
        version_dir = _tfds_version_dir(name, data_dir, (split,))
    path = version_dir / LABELS_FILE.format(split=split)
    if path.exists():
        return np.load(io.BytesIO(path.read_bytes()))
    labels = np.fromiter(
        (example["label"] for example in _read_in_chunks(source, np.arange(len(source)))),
        np.int64,
        len(source),
    )
    buffer = io.BytesIO()
    np.save(buffer, labels)
    _write_beside(path, buffer.getvalue())
    return labels


def read_examples(source: Sequence[dict[str, Any]], indices: Iterable[int]) -> list[dict[str, Any]]:
    """The examples at ``indices``, in one ``source.__getitems__`` call where the source has
    one (TFDS sources read them as one batch), else one by one.

    >>> read_examples([{"label": 7}, {"label": 8}], [1, 0])
    [{'label': 8}, {'label': 7}]
    """
    keys = [int(index) for index in indices]
    read_many = getattr(source, "__getitems__", None)
    return list(read_many(keys)) if read_many else [source[key] for key in keys]


class InMemorySource(Sequence[dict[str, Any]]):
    """A source's examples decoded once and held in memory, one stacked numpy array per field.

    Reading a TFDS source decodes every example again each epoch: for ``fashion_mnist`` (PNG
    images, as TFDS stores them) that is most of what the input pipeline spends. Held decoded,
    the 60,000 training images take 47 MB. For datasets that fit in memory (the ``small``
    family); element ``i`` is the source's element ``i``, as numpy values.

    >>> source = [{"image": np.full((2, 2, 1), i, np.uint8), "label": i} for i in range(5)]
    >>> memory = InMemorySource(source, chunk_size=2)
    >>> len(memory), memory[3]["image"].shape, int(memory[3]["label"])
    (5, (2, 2, 1), 3)

    Args:
        source: A random-access source of dicts with the same keys (``load_source``'s).
        chunk_size: Examples read per call (``read_examples``).
    """

    def __init__(self, source: Sequence[dict[str, Any]], chunk_size: int = 1024) -> None:
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(source), chunk_size):
            examples = read_examples(source, range(start, min(start + chunk_size, len(source))))
            for key in examples[0]:
                chunks.setdefault(key, []).append(np.stack([e[key] for e in examples]))
        self._fields = {key: np.concatenate(parts) for key, parts in chunks.items()}
        self._length = len(source)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {key: values[index] for key, values in self._fields.items()}


@functools.cache
def load_in_memory(name: str, split: str, data_dir: str | None = None) -> InMemorySource:
    """``load_source(name, split, data_dir)`` decoded into an ``InMemorySource`` (images as
    arrays, for the 'small' family), once per process: a later call with the same arguments
    returns the same object, so several runs in one process (a sweep) decode the split once.

    Raises:
        ValueError: If the name is unknown.
        DatasetNotPreparedError: If the split is not prepared as array_record in ``data_dir``.
    """
    return InMemorySource(load_source(name, split, data_dir, family="small"))
