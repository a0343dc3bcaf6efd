"""Fashion-MNIST (Xiao et al. 2017, arXiv 1708.07747) through TFDS's own ``fashion_mnist`` builder,
prepared offline from local IDX files.

``FashionMnist`` subclasses ``tfds.image_classification.FashionMNIST`` and keeps everything that
decides what lands on disk: the name ``fashion_mnist``, version 3.0.1, the features (a PNG
``Image`` of shape 28×28×1 and a ``ClassLabel`` with the ten class names), the ``train`` and
``test`` splits and the example keys (the image's index in its IDX file, so TFDS's key-hash
shuffle puts the examples in the same order). Data it prepares is therefore read by TFDS's own
registered builder (``tfds.data_source('fashion_mnist')``) exactly like data that TFDS downloaded
and prepared itself on a networked machine, and the other way round.

It changes two things:

* ``_split_generators`` reads the four IDX files (``train-images-idx3-ubyte.gz`` …) from a local
  directory when it is given one: Debian's ``dataset-fashion-mnist`` package installs them in
  ``/usr/share/datasets/fashion-mnist``, re-gzipped, so their checksums differ from the ones TFDS
  registered for its download and TFDS's own manual-dir path rejects them; the decompressed
  content is the dataset. Without a directory it is TFDS's own download, verified against
  TFDS's registered checksums.
* ``_generate_examples`` decodes the IDX files with numpy and hands the images to the
  ``Image`` feature as PIL images, which it encodes with PIL. TFDS's original reads with
  ``tf.io.gfile`` and encodes with ``tf.image.encode_png``; this way preparing never imports
  TensorFlow. The PNG bytes may differ from TensorFlow's; the decoded pixels are the same.
"""

import gzip
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

# Where Debian's (and Ubuntu's) `dataset-fashion-mnist` package installs the IDX files.
DEBIAN_IDX_DIR = epath.Path("/usr/share/datasets/fashion-mnist")
# The original file names (github.com/zalandoresearch/fashion-mnist), per split and field.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SIDE = 28
NUM_CLASSES = 10

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UINT8 = 0x08


def read_idx(path: epath.PathLike) -> np.ndarray:
    """Reads an IDX file of unsigned bytes (LeCun et al.'s MNIST format), gzipped or not.

    The header is two zero bytes, the type code (0x08 for uint8), the number of dimensions
    ``d``, then ``d`` big-endian int32 sizes; the data follow in row-major order.

    Args:
        path: The file.

    Returns:
        The uint8 array with the header's shape.

    Raises:
        ValueError: If the file is not an IDX file of unsigned bytes of the size it declares.
    """
    raw = epath.Path(path).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != _IDX_UINT8:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    ndim = raw[3]
    shape = tuple(int(size) for size in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != np.prod(shape):
        raise ValueError(f"{path} holds {data.size} bytes of data, its header says {shape}.")
    return data.reshape(shape)


def _idx_file(directory: epath.Path, name: str) -> epath.Path | None:
    """The file ``name`` in ``directory``, gzipped or (as TFDS extracts it) not, if present."""
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def missing_idx_files(directory: epath.PathLike) -> list[str]:
    """The names of the four IDX files that ``directory`` lacks (empty if it holds all)."""
    directory = epath.Path(directory)
    names = [name for pair in IDX_FILES.values() for name in pair]
    return [name for name in names if _idx_file(directory, name) is None]


def find_idx_dir(candidates: Sequence[epath.PathLike]) -> epath.Path | None:
    """The first of ``candidates`` that holds all four IDX files, or None."""
    for directory in candidates:
        if not missing_idx_files(directory):
            return epath.Path(directory)
    return None


class FashionMnist(tfds.image_classification.FashionMNIST, skip_registration=True):
    """TFDS's ``fashion_mnist``, optionally prepared from local IDX files (see the module doc).

    Args:
        idx_dir: Directory holding the four IDX files; None lets TFDS download them.
        **kwargs: ``tfds.core.GeneratorBasedBuilder`` arguments (``data_dir``, ...).
    """

    name = "fashion_mnist"

    def __init__(self, *, idx_dir: epath.PathLike | None = None, **kwargs) -> None:
        self._idx_dir = epath.Path(idx_dir) if idx_dir is not None else None
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """TFDS's own builder file: TFDS finds the checksums it registered for the download by
        this path and the name (``url_checksums/fashion_mnist.txt``)."""
        return tfds.image_classification.FashionMNIST.code_path

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> list:
        if self._idx_dir is None:
            return super()._split_generators(dl_manager)
        generators = []
        for split, (images_name, labels_name) in IDX_FILES.items():
            labels_path = _idx_file(self._idx_dir, labels_name)
            images_path = _idx_file(self._idx_dir, images_name)
            if labels_path is None or images_path is None:
                raise FileNotFoundError(
                    f"{self._idx_dir} lacks {', '.join(missing_idx_files(self._idx_dir))}."
                )
            num_examples = len(read_idx(labels_path))
            generators.append(
                tfds.core.SplitGenerator(
                    name=split,
                    gen_kwargs=dict(
                        num_examples=num_examples, data_path=images_path, label_path=labels_path
                    ),
                )
            )
        return generators

    def _generate_examples(
        self, num_examples: int, data_path: epath.PathLike, label_path: epath.PathLike
    ) -> Iterator[tuple[int, dict]]:
        images, labels = read_idx(data_path), read_idx(label_path)
        if images.shape != (num_examples, IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(
                f"{data_path} holds images of shape {images.shape}; expected "
                f"({num_examples}, {IMAGE_SIDE}, {IMAGE_SIDE})."
            )
        if labels.shape != (num_examples,) or labels.max(initial=0) >= NUM_CLASSES:
            raise ValueError(
                f"{label_path} holds labels of shape {labels.shape} up to {labels.max()}; "
                f"expected ({num_examples},) in [0, {NUM_CLASSES})."
            )
        # The key is the index in the file, as in TFDS's own builder.
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": Image.fromarray(image), "label": int(label)}
