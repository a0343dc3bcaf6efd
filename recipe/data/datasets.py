"""Dataset metadata and random-access sources read from TFDS array_record files.

The datasets built on this machine are prepared implicitly on first use, offline:
``mnist5k`` from the digits shipped in this package in under a second, the synthetic ImageNet JPEGs
(``synthetic_imagenet`` in about a minute, ``synthetic_imagenet_small`` in a few seconds), and
``fashion_mnist`` when its IDX files are on the machine (Debian's ``dataset-fashion-mnist``
package, or ``<data_dir>/downloads/manual``). Every other dataset must already be prepared as
array_record in the data directory; ``load_source`` checks the files itself before calling
TFDS, so it never starts a download. ``prepare_dataset`` is the explicit, networked way to
prepare one.
"""

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from recipe.data import fashion_mnist
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


def get_dataset_spec(name: str) -> DatasetSpec:
    """Returns the spec of a known dataset.

    Args:
        name: One of ``DATASET_NAMES``.

    Raises:
        ValueError: If the name is unknown.
    """
    if name not in _SPECS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}.")
    return _SPECS[name]


def default_data_dir() -> str:
    """Returns ``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare_dataset(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> None:
    """Downloads (if needed) and prepares a dataset as array_record in ``data_dir``.

    ``mnist5k`` is built from the digits shipped in this package and the synthetic ImageNets are
    generated (``load_source`` does both itself). ``fashion_mnist`` is built from its four IDX
    files in ``manual_dir`` if given (it must hold them), else in
    ``<data_dir>/downloads/manual`` or Debian's ``/usr/share/datasets/fashion-mnist``, whichever
    holds them first, else from TFDS's own download; neither way needs TensorFlow. The others
    are fetched by TFDS, which needs network access and TensorFlow (the ``prepare`` extra) to
    encode images; ``imagenet2012`` needs ``ILSVRC2012_img_train.tar`` and
    ``ILSVRC2012_img_val.tar`` in ``manual_dir`` (default ``<data_dir>/downloads/manual``).
    Reading the prepared files needs no TensorFlow.

    Args:
        name: One of ``DATASET_NAMES``.
        data_dir: TFDS data directory; defaults to ``default_data_dir()``.
        manual_dir: Where manually downloaded archives or files are.

    Raises:
        ImportError: If the dataset needs TensorFlow and it is not installed (checked before
            anything is downloaded).
        DatasetNotPreparedError: If ``manual_dir`` is given for ``fashion_mnist`` and lacks
            some of its IDX files.
    """
    spec = get_dataset_spec(name)
    data_dir = data_dir or default_data_dir()
    if spec.name == "mnist5k":
        builder = Mnist5k(data_dir=data_dir)
    elif spec.tfds_name.startswith(SyntheticImagenet.name + "/"):
        builder = SyntheticImagenet(config=spec.tfds_name.partition("/")[2], data_dir=data_dir)
    elif spec.name == "fashion_mnist":
        idx_dir = _fashion_mnist_idx_dir(data_dir, manual_dir)
        builder = fashion_mnist.FashionMnist(data_dir=data_dir, idx_dir=idx_dir)
    else:
        _check_tensorflow_for_preparing(spec)
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
    )


def _check_tensorflow_for_preparing(spec: DatasetSpec) -> None:
    if importlib.util.find_spec("tensorflow") is None:  # found, not imported: TFDS imports it
        raise ImportError(
            f"preparing {spec.name} needs TensorFlow: TFDS encodes its images with it (training "
            "on the prepared files does not need it). Install it with "
            "`pip install 'large-batch-recipe[prepare]'` (or `pip install tensorflow-cpu`), "
            "prepare once, then train with or without it."
        )


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


def _missing_array_record_files(spec: DatasetSpec, split: str, data_dir: str) -> str | None:
    """Returns why ``split`` cannot be read from ``data_dir``, or None if it can."""
    dataset_dir = epath.Path(data_dir) / spec.tfds_name
    version_dirs = sorted(path.parent for path in dataset_dir.glob("*/dataset_info.json"))
    if not version_dirs:
        return f"no prepared version under {dataset_dir}"
    split_name = split.partition("[")[0]
    for version_dir in version_dirs:
        if any(version_dir.glob(f"*-{split_name}.array_record-*")):
            return None
    return (
        f"no array_record files for split {split_name!r} in "
        f"{', '.join(map(str, version_dirs))} (prepared in another file format? Delete it and "
        "prepare again)"
    )


def _how_to_prepare(spec: DatasetSpec, data_dir: str) -> str:
    command = (
        f'python -c "from recipe.data import prepare_dataset; '
        f"prepare_dataset('{spec.name}', '{data_dir}')\""
    )
    if spec.name == "fashion_mnist":
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
    if spec.name == "imagenet2012":
        instructions += (
            "\nafter placing ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
            f"{_default_manual_dir(data_dir)} (TFDS cannot download ImageNet)."
        )
    return instructions


def load_source(name: str, split: str, data_dir: str | None = None) -> Sequence[dict[str, Any]]:
    """Returns a random-access source of a split's examples (dicts with 'image' and 'label').

    'image' is a uint8 ``(H, W, C)`` array for the 'small' family and the JPEG's bytes for the
    'imagenet' family (``tfds.decode.SkipDecoding``): the pipeline decodes only what its crop
    needs. ``mnist5k``, the synthetic ImageNets (``GENERATED``) and ``fashion_mnist`` when its
    IDX files are on the machine (see ``prepare_dataset``) are prepared into ``data_dir`` on
    first use. Any other dataset must already be prepared as array_record there; this function
    checks the files before calling TFDS, so it never downloads.

    Args:
        name: One of ``DATASET_NAMES``.
        split: A TFDS split of the dataset, e.g. ``spec.train_split``.
        data_dir: TFDS data directory; defaults to ``default_data_dir()``.

    Raises:
        ValueError: If the name is unknown.
        DatasetNotPreparedError: If the split is not prepared as array_record in ``data_dir``.
    """
    spec = get_dataset_spec(name)
    data_dir = data_dir or default_data_dir()
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
            + _how_to_prepare(spec, data_dir)
        )
    decoders = {"image": tfds.decode.SkipDecoding()} if spec.family == "imagenet" else None
    return tfds.data_source(
        spec.tfds_name, split=split, data_dir=data_dir, download=False, decoders=decoders
    )


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
    """``load_source(name, split, data_dir)`` decoded into an ``InMemorySource``, once per
    process: a later call with the same arguments returns the same object, so several runs in
    one process (a sweep) decode the split once.

    Raises:
        ValueError: If the name is unknown.
        DatasetNotPreparedError: If the split is not prepared as array_record in ``data_dir``.
    """
    return InMemorySource(load_source(name, split, data_dir))
