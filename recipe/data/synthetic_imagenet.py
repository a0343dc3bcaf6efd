"""TFDS builder of ImageNet-like JPEGs, generated deterministically at prepare time.

For tests and benchmarks of the ImageNet input path without ImageNet: the examples have the
features of TFDS's ``imagenet2012`` (``image`` a JPEG-encoded ``tfds.features.Image``,
``label`` a ``ClassLabel``, ``file_name`` a ``Text``) and splits ``train`` and ``validation``,
and are stored as array_record and read through ``tfds.data_source`` exactly as imagenet2012.

The images follow ImageNet's sizes: the shorter side uniform in [300, 500] pixels, the longer
side 1 to 4/3 times it (log-uniform) for 85% of the images and 4/3 to 2 times it for the rest,
landscape three times in four; encoded by Pillow at JPEG quality 90, about 100 KB each on
average. Their content is neither noise nor flat: a smooth blend of two colours of the class,
an oriented grating of the class's frequency, a few ellipses and rectangles in a third colour
of the class, and a luminance texture of two octaves. So a model can learn a little about the
label, and the JPEG decoder does work comparable to photographs' (same bytes per pixel, not the
incompressible entropy of white noise).

Image ``i`` of a split is a pure function of (config, split, i): preparing again gives the same
bytes with the same Pillow and numpy. Preparing needs neither TensorFlow nor a download: the
JPEG bytes are encoded with Pillow and handed to TFDS as they are.
"""

import dataclasses
import io
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageDraw

JPEG_QUALITY = 90
SHORT_SIDE_RANGE = (300, 500)
# Fraction of images with aspect ratios wider than 4:3, and the widest ratio.
WIDE_FRACTION = 0.15
MAX_ASPECT_RATIO = 2.0
_SPLIT_STREAMS = {"train": 0, "validation": 1}
_CLASS_STREAM = 2


@dataclasses.dataclass(eq=False)
class SyntheticImagenetConfig(tfds.core.BuilderConfig):
    """How many classes and images a synthetic ImageNet has.

    Attributes:
        num_classes: Number of labels; images are assigned labels round-robin.
        num_train: Images in the train split.
        num_validation: Images in the validation split.
    """

    num_classes: int = 1000
    num_train: int = 3072
    num_validation: int = 512


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """Samples ``(height, width)`` from the ImageNet-like size distribution."""
    short = int(rng.integers(SHORT_SIDE_RANGE[0], SHORT_SIDE_RANGE[1] + 1))
    if rng.random() < WIDE_FRACTION:
        ratio = rng.uniform(4 / 3, MAX_ASPECT_RATIO)
    else:
        ratio = np.exp(rng.uniform(0.0, np.log(4 / 3)))
    long = round(short * ratio)
    return (short, long) if rng.random() < 0.75 else (long, short)


def _upsample(small: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic upsampling of a uint8 ``(h, w)`` or ``(h, w, 3)`` array to ``(height, width)``."""
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


def synthesize_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """An ImageNet-sized uint8 RGB image whose colours and grating depend on ``label``."""
    class_rng = np.random.default_rng([_CLASS_STREAM, label])
    colors = class_rng.uniform(20, 235, (3, 3))
    angle = class_rng.uniform(0, np.pi)
    cycles = class_rng.uniform(3, 12)  # grating periods along the shorter side

    height, width = image_size(rng)
    short = min(height, width)
    # Smooth structure at a quarter of the resolution: two class colours blended by a field of
    # a few cells, plus the class grating.
    low_h, low_w = height // 4, width // 4
    blend_cells = rng.integers(0, 256, (3, round(3 * width / height) + 1), dtype=np.uint8)
    blend = _upsample(blend_cells, low_h, low_w).astype(np.float32)[..., None] / 255
    y, x = np.ogrid[0:low_h, 0:low_w]
    phase = 2 * np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle)) / (short / 4)
    grating = np.sin(phase + rng.uniform(0, 2 * np.pi))[..., None]
    low = colors[0] * (1 - blend) + colors[1] * blend + 25 * grating
    canvas = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    # Objects with sharp edges.
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.3, 2) * short
        fill = tuple(int(v) for v in np.clip(colors[2] + rng.normal(0, 25, 3), 0, 255))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
    # Luminance texture: coarse and fine octaves of bicubic-interpolated noise, plus grain.
    texture = np.zeros((height, width), np.int16)
    for cells, amplitude in ((height // 8, 40), (height // 3, 120)):
        shape = (cells, round(cells * width / height))
        noise = rng.integers(128 - amplitude, 128 + amplitude + 1, shape, dtype=np.uint8)
        texture += _upsample(noise, height, width).astype(np.int16) - 128
    texture += rng.integers(-6, 7, (height, width), dtype=np.int16)
    image = np.asarray(canvas, np.int16) + texture[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of a uint8 RGB image (Pillow, quality 90, 4:2:0 chroma subsampling)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class SyntheticImagenet(tfds.core.GeneratorBasedBuilder):
    """ImageNet-like JPEGs with imagenet2012's features, generated from a seed."""

    name = "synthetic_imagenet"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SyntheticImagenetConfig(
            name="default",
            description="1,000 classes, 3,072 train and 512 validation images (~1 min to prepare).",
        ),
        SyntheticImagenetConfig(
            name="small",
            description="10 classes, 320 train and 80 validation images (a few s), for tests.",
            num_classes=10,
            num_train=320,
            num_validation=80,
        ),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file (see ``Mnist5k.code_path`` for why it is overridden)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=self.builder_config.num_classes),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Generated: nothing is downloaded.
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.num_train),
            "validation": self._generate_examples("validation", config.num_validation),
        }

    def _generate_examples(
        self, split: str, count: int
    ) -> Iterator[tuple[int, dict[str, bytes | int | str]]]:
        for index in range(count):
            label = index % self.builder_config.num_classes
            rng = np.random.default_rng([_SPLIT_STREAMS[split], index])
            yield (
                index,
                {
                    "image": encode_jpeg(synthesize_image(label, rng)),
                    "label": label,
                    "file_name": f"{split}_{index:08d}.JPEG",
                },
            )
