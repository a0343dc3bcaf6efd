"""Deterministic, resumable input pipeline (Goyal et al. 2017, §3 Remark 4).

Training: each epoch uses one random permutation of the whole training split, seeded by
``(seed, epoch)`` and divided among all processes and devices. Global step ``s`` of an epoch
covers permuted positions ``[s·G, (s+1)·G)`` (``G`` the global batch); process ``p`` of ``P``
takes the contiguous slice ``[p·L, (p+1)·L)`` of those (``L = G/P``) and reshapes it to
``(local_device_count, L / local_device_count, H, W, C)``. The last ``num_train mod G``
positions of each epoch are dropped, so every example is seen at most once per epoch.

Every batch is a pure function of ``(seed, global step)``: element ``i`` of the underlying
``grain.MapDataset`` is the process-local batch of global step ``start_step + i``, and an
example's augmentation draws from a generator seeded by ``(seed, epoch, example index)``
(``augmentation_rng``). Resuming at step ``s`` therefore yields exactly the batches an
uninterrupted run sees from ``s``, and an example's augmentation does not depend on the batch
size or the process count. A batch of the 'small' family is augmented as one array
(``augment_images``): the same pixels as ``augment_image`` on each example, at a fraction of
the cost.

Batches are computed ahead of the consumer by ``worker_count`` grain worker processes, or
(``worker_count=0``) by ``thread_count`` threads of this process; the JPEG decoder and the
resize release the GIL. Either way a batch is the same pure function of its step, so workers
change neither the batches nor resumption.

Evaluation: the split is padded to a multiple of ``G`` with masked all-zero examples and cut
the same way, so every example is evaluated exactly once across all processes.

An image that does not decode (a truncated or corrupt file, not an image at all: the 'imagenet'
family's bytes) is never passed over silently. With ``unreadable='stop'`` (the default) the
batch raises ``UnreadableImageError`` naming the example (its file for an image folder). With
``unreadable='skip'`` batches gain an ``'unreadable'`` field, True where the example's image did
not decode: in a training batch that place holds a copy of the batch's next readable example
(image and label; ``'index'`` still names the unreadable one), in an evaluation batch an
all-zero example with ``'mask'`` 0. Counting them is the caller's.

Batches are dicts of numpy arrays, each with leading dimensions ``(D, B)``: ``'image'``
float32 ``(D, B, H, W, C)`` normalised per channel as ``(x/255 - mean) / std`` (or, with
``normalize=False``, the uint8 pixels, a quarter of the bytes to the devices, for
``normalize_images`` inside the jitted step), ``'label'`` int32, ``'index'`` int64 (the
example's position in its split; -1 for padding), for evaluation only ``'mask'`` float32
(1 for real examples, 0 for padding), and with ``unreadable='skip'`` ``'unreadable'`` bool.
"""

import dataclasses
import functools
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import cv2
import grain
import numpy as np
from absl import flags
from PIL import Image

from recipe import checks
from recipe.data import jpeg
from recipe.data.datasets import DatasetSpec, read_examples

Batch = dict[str, np.ndarray]
Unreadable = Literal["stop", "skip"]
UNREADABLE_CHOICES: tuple[str, ...] = ("stop", "skip")

# First entropy word of each random stream, so the streams never share a seed sequence.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1
# Inception-style crop parameters (Szegedy et al. 2015), as used by Goyal et al.
_CROP_AREA_RANGE = (0.08, 1.0)
_CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10
# Evaluation crops the central 87.5% of the shorter side (224 of 256).
_EVAL_CENTRAL_FRACTION = 0.875


class UnreadableImageError(ValueError):
    """An example's image does not decode (with ``unreadable='stop'``); the message names it."""


def steps_per_epoch(num_examples: int, global_batch: int, accumulation_steps: int = 1) -> int:
    """Global batches in an epoch: whole optimizer updates of `accumulation_steps` batches each.

    The examples past the last whole update are dropped (each epoch's shuffle decides which), so
    an epoch is ``num_examples // (global_batch · accumulation_steps)`` updates and every
    example is seen at most once per epoch.

    >>> steps_per_epoch(4000, 128), steps_per_epoch(4000, 128, accumulation_steps=2)
    (31, 30)
    """
    return num_examples // (global_batch * accumulation_steps) * accumulation_steps


def num_eval_steps(num_examples: int, global_batch: int) -> int:
    """Number of global batches that cover every evaluation example once (the last padded)."""
    return math.ceil(num_examples / global_batch)


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator example ``index`` of the split draws its training augmentation from in
    ``epoch``: seeded by ``(seed, epoch, index)`` alone, so an example is augmented the same
    whatever the batch size, the process count or the step a run resumed at.

    The same (seed, epoch, index) draws the same numbers; another index, epoch or seed draws
    others (a change of these numbers would change the augmentation of every resumed run):

    >>> [round(float(augmentation_rng(0, 1, index).random()), 4) for index in (2, 2, 3)]
    [0.8062, 0.8062, 0.9018]
    >>> [round(float(augmentation_rng(s, e, 2).random()), 4) for s, e in ((0, 2), (1, 1))]
    [0.9629, 0.7688]
    """
    return np.random.default_rng([seed, _AUGMENTATION_STREAM, epoch, index])


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """Returns the training order of an epoch: a permutation of ``range(num_examples)``."""
    rng = np.random.default_rng([seed, _PERMUTATION_STREAM, epoch])
    return rng.permutation(num_examples)


def _output_size(spec: DatasetSpec, image_size: int | None) -> tuple[int, int]:
    return (image_size, image_size) if image_size else spec.image_shape[:2]


def _resize(image: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resizes a uint8 ``(H, W, C)`` image with PIL."""
    single_channel = image.shape[-1] == 1
    pil_image = Image.fromarray(image[..., 0] if single_channel else image)
    resized = np.asarray(pil_image.resize((size[1], size[0]), resample=resample))
    return resized[..., None] if single_channel else resized


def _resize_small(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Box-filter resize of uint8 ``(N, H, W, C)`` images to ``size``. A reduction by whole
    factors is the mean of each block, rounded half up, as one array operation; any other
    size is Pillow's box filter, one image at a time."""
    count, height, width, channels = images.shape
    if size == (height, width):
        return images
    if height % size[0] or width % size[1]:
        return np.stack([_resize(image, size, Image.Resampling.BOX) for image in images])
    block_height, block_width = height // size[0], width // size[1]
    blocks = images.reshape(count, size[0], block_height, size[1], block_width, channels)
    sums = blocks.sum(axis=(2, 4), dtype=np.int32)
    pixels = block_height * block_width
    return ((2 * sums + pixels) // (2 * pixels)).astype(np.uint8)


def _draw_shift_and_mirror(
    rng: np.random.Generator, padding: int, flip: bool
) -> tuple[int, int, bool]:
    """One example's draws for the 'small' augmentation, in this order: the offset (top, left)
    of its window from the unpadded image, two integers in [-padding, padding]; then, if
    ``flip``, the coin that mirrors it."""
    top, left = rng.integers(-padding, padding + 1, size=2)
    return int(top), int(left), bool(flip and rng.random() < 0.5)


def _pad_crop_flip(
    image: np.ndarray, padding: int, flip: bool, rng: np.random.Generator
) -> np.ndarray:
    """Zero-pads by ``padding``, crops a random window of the original size, maybe mirrors
    (``_draw_shift_and_mirror``). ``_shift_and_mirror`` is the same on a batch."""
    height, width = image.shape[:2]
    # Copying the window's overlap with the image into zeros is the same as padding and
    # cropping, without materialising the padded image.
    top, left, mirrored = _draw_shift_and_mirror(rng, padding, flip)
    cropped = np.zeros_like(image)
    cropped[max(0, -top) : height - max(0, top), max(0, -left) : width - max(0, left)] = image[
        max(0, top) : height + min(0, top), max(0, left) : width + min(0, left)
    ]
    if mirrored:
        cropped = cropped[:, ::-1]
    return cropped


def _shift_and_mirror(
    images: np.ndarray, padding: int, flip: bool, rngs: Sequence[np.random.Generator]
) -> np.ndarray:
    """``_pad_crop_flip`` of each of the uint8 ``(N, H, W, C)`` images with its generator, as
    array operations on the whole batch (the same draws, the same pixels)."""
    count, height, width = images.shape[:3]
    draws = [_draw_shift_and_mirror(rng, padding, flip) for rng in rngs]
    offsets = np.array([(top, left) for top, left, _ in draws], np.int64).reshape(count, 2)
    mirrored = np.array([mirror for _, _, mirror in draws], bool)
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = padding + offsets[:, :1] + np.arange(height)
    columns = padding + offsets[:, 1:] + np.arange(width)
    columns = np.where(mirrored[:, None], columns[:, ::-1], columns)
    return padded[np.arange(count)[:, None, None], rows[:, :, None], columns[:, None, :]]


def inception_crop_box(
    height: int, width: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Samples a random-resized-crop box (left, top, right, bottom), as torchvision does:
    up to ten draws of an area fraction in [0.08, 1] and a log-uniform aspect ratio in
    [3/4, 4/3] until the box fits; failing that, the whole image cut to the nearest allowed
    aspect ratio, centred.

    >>> inception_crop_box(1, 100, np.random.default_rng(0))  # too thin to crop: the fallback
    (49, 0, 50, 1)
    """
    log_ratio_range = np.log(_CROP_ASPECT_RATIO_RANGE)
    for _ in range(_CROP_ATTEMPTS):
        area = height * width * rng.uniform(*_CROP_AREA_RANGE)
        aspect_ratio = np.exp(rng.uniform(*log_ratio_range))
        crop_width = round(math.sqrt(area * aspect_ratio))
        crop_height = round(math.sqrt(area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return left, top, left + crop_width, top + crop_height
    # Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    min_ratio, max_ratio = _CROP_ASPECT_RATIO_RANGE
    crop_width = min(width, round(height * max_ratio))
    crop_height = min(height, round(width / min_ratio))
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


def _central_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The central square of side 87.5% of the shorter side (left, top, right, bottom), in
    whole pixels as the Flax ImageNet example's ``_decode_and_center_crop`` takes it."""
    side = int(_EVAL_CENTRAL_FRACTION * min(height, width))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    return left, top, left + side, top + side


def _crop_resize(
    image: np.ndarray | bytes,
    box_for_shape: Callable[[int, int], tuple[int, int, int, int]],
    size: tuple[int, int],
    dct_scaling: bool,
    channels: int,
) -> np.ndarray:
    """Resizes the box ``box_for_shape(height, width)`` of a decoded image or of image bytes
    to ``size``; with ``dct_scaling``, JPEG bytes are decoded only as far as the box needs
    (``jpeg.decode_crop_resize``), else in full (the same pixels as a decoded array gives);
    other bytes (PNG) in full by Pillow.

    Raises:
        jpeg.UndecodableImageError: The bytes do not decode.
    """
    if isinstance(image, bytes):
        box = box_for_shape(*jpeg.image_shape(image))
        if dct_scaling:
            return jpeg.decode_crop_resize(image, box, size, channels)
        image, _ = jpeg.decode_image(image, channels=channels)
    else:
        box = box_for_shape(*image.shape[:2])
    return jpeg.crop_resize(image, box, size)


def augment_image(
    image: np.ndarray | bytes, spec: DatasetSpec, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Training augmentation of one uint8 ``(H, W, C)`` image; returns uint8 ``(*size, C)``.

    'small' family: zero-pad by ``spec.crop_padding``, random crop back to the stored size,
    mirror with probability 1/2 if ``spec.horizontal_flip``, then resize to ``size`` if it
    differs (box filter: by whole factors the mean of each block rounded half up, else
    Pillow's). 'imagenet' family: Inception-style random-resized crop (Szegedy et al. 2015;
    area 8–100%, aspect ratio 3/4–4/3 log-uniform, 10 attempts, else the centre cut to the
    nearest allowed ratio) resized to ``size``, then the optional mirror. 'imagenet' images
    may be given as image bytes: the box is drawn from the header's size and a JPEG decoded
    at the coarsest DCT scale 1/s that keeps the box at least ``size``
    (``recipe.data.jpeg``), which moves the box's edges by at most s/2 pixels; s = 1, the
    same pixels as from the decoded array, for every box smaller than twice ``size``. Other
    bytes (PNG) are decoded in full by Pillow.

    Raises:
        recipe.data.jpeg.UndecodableImageError: Image bytes that do not decode.

    >>> from recipe.data import get_dataset_spec
    >>> spec = get_dataset_spec("imagenette")
    >>> image = np.zeros((375, 500, 3), np.uint8)
    >>> augment_image(image, spec, (128, 128), np.random.default_rng(0)).shape
    (128, 128, 3)
    """
    if spec.family == "small":
        image = _pad_crop_flip(image, spec.crop_padding, spec.horizontal_flip, rng)
        return _resize_small(image[None], size)[0]
    box_for_shape = functools.partial(inception_crop_box, rng=rng)
    image = _crop_resize(image, box_for_shape, size, dct_scaling=True, channels=spec.image_shape[2])
    if spec.horizontal_flip and rng.random() < 0.5:
        # A contiguous copy (a reversed view would make collating the batch 3× slower).
        image = cv2.flip(image, 1).reshape(image.shape)
    return image


def augment_images(
    images: Sequence[np.ndarray | bytes],
    spec: DatasetSpec,
    size: tuple[int, int],
    rngs: Sequence[np.random.Generator],
) -> np.ndarray:
    """``augment_image`` of each image with its own generator, stacked: uint8 ``(N, *size, C)``.

    'small' images are shifted, mirrored and resized as one array (the per-image work is only
    each generator's draws), so a batch costs a fraction of ``N`` calls of ``augment_image``.

    >>> from recipe.data import get_dataset_spec
    >>> spec = get_dataset_spec("mnist5k")
    >>> images, rngs = np.zeros((3, 28, 28, 1), np.uint8), np.random.default_rng(0).spawn(3)
    >>> augment_images(images, spec, (14, 14), rngs).shape
    (3, 14, 14, 1)
    """
    if spec.family == "small":
        shifted = _shift_and_mirror(np.stack(images), spec.crop_padding, spec.horizontal_flip, rngs)
        return _resize_small(shifted, size)
    return np.stack(
        [augment_image(image, spec, size, rng) for image, rng in zip(images, rngs, strict=True)]
    )


def eval_image(image: np.ndarray | bytes, spec: DatasetSpec, size: tuple[int, int]) -> np.ndarray:
    """Deterministic preprocessing of one uint8 image: resize ('small', as ``augment_image``
    does) or the central square of 87.5% of the shorter side ('imagenet'; JPEG bytes are
    decoded in full, so evaluation sees exactly the pixels of the decoded image whatever
    ``size``)."""
    if spec.family == "small":
        return _resize_small(image[None], size)[0]
    channels = spec.image_shape[2]
    return _crop_resize(image, _central_crop_box, size, dct_scaling=False, channels=channels)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How a global batch is split among processes and local devices."""

    global_batch: int
    process_index: int
    process_count: int
    local_device_count: int

    def __post_init__(self) -> None:
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {self.process_index} not in [0, process_count).")
        if self.global_batch % (self.process_count * self.local_device_count):
            raise ValueError(
                f"global_batch {self.global_batch} is not divisible by process_count × "
                f"local_device_count = {self.process_count * self.local_device_count}."
            )

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count

    def positions(self, step: int) -> np.ndarray:
        """Positions of this process's examples in the sequence that global batches
        ``0, 1, …`` cut in order: its slice of global batch ``step``."""
        start = step * self.global_batch + self.process_index * self.local_batch
        return np.arange(start, start + self.local_batch)


def normalize_images(images: Any, spec: DatasetSpec, dtype: Any = np.float32) -> Any:
    """Per-channel normalisation ``(x/255 − mean) / std`` of uint8 images, cast to ``dtype``.

    Works on numpy arrays (on the host) and on jax arrays (inside a jitted step, where XLA
    fuses it into the first convolution's input). Floating-point images are taken as already
    normalised and returned unchanged. Goyal et al. §5.1: "per-channel mean/std".

    >>> from recipe.data import get_dataset_spec
    >>> spec = get_dataset_spec("mnist5k")
    >>> [round(float(x), 3) for x in normalize_images(np.array([[0], [255]], np.uint8), spec)[:, 0]]
    [-0.425, 2.822]
    """
    if np.issubdtype(images.dtype, np.floating):
        return images
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    return ((images.astype(np.float32) / np.float32(255.0) - mean) / std).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Collate:
    """Arranges a process's batch device-major, optionally normalising the images.

    Called with the uint8 images ``(B, H, W, C)`` and the other fields, each ``(B,)``; returns
    them all as ``(local_device_count, B / local_device_count, …)``.
    """

    spec: DatasetSpec
    local_device_count: int
    normalize: bool

    def __call__(self, images: np.ndarray, **fields: np.ndarray) -> Batch:
        batch = {
            "image": normalize_images(images, self.spec) if self.normalize else images,
            **fields,
        }
        return {
            key: value.reshape(self.local_device_count, -1, *value.shape[1:])
            for key, value in batch.items()
        }


def _example_name(example: dict[str, Any], index: int) -> str:
    """The example's file (``'file_name'``: image folders, ImageNet), else its index."""
    name = example.get("file_name")
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return name or f"example {index} of the split"


def _each_image(
    examples: Sequence[dict[str, Any]],
    indices: Sequence[int],
    process: Callable[[int, np.ndarray | bytes], np.ndarray],
    unreadable: Unreadable,
) -> tuple[list[np.ndarray | None], np.ndarray]:
    """``process(i, image)`` of each example's image: (the results, None where the image does
    not decode, and a bool array True there). With ``unreadable='stop'`` the first such image
    raises ``UnreadableImageError`` naming it instead.

    >>> out, bad = _each_image([{"image": b"?"}], [7], lambda i, x: jpeg.decode_image(x), "skip")
    >>> out, bad.tolist()
    ([None], [True])
    """
    results: list[np.ndarray | None] = []
    bad = np.zeros(len(examples), bool)
    for i, (example, index) in enumerate(zip(examples, indices, strict=True)):
        try:
            if "error" in example:  # an image folder's file that could not be read
                raise jpeg.UndecodableImageError(example["error"])
            results.append(process(i, example["image"]))
        except jpeg.UndecodableImageError as error:
            if unreadable == "stop":
                name = _example_name(example, int(index))
                raise UnreadableImageError(f"{name} is unreadable ({error})") from None
            results.append(None)
            bad[i] = True
    return results, bad


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
    """The process's slice of global training step ``step``, counted from step 0."""

    source: Sequence[dict[str, Any]]
    spec: DatasetSpec
    layout: _Layout
    seed: int
    size: tuple[int, int]
    augment: bool
    accumulation_steps: int
    collate: Collate
    unreadable: Unreadable

    def __call__(self, step: int) -> Batch:
        num_examples = len(self.source)
        epoch_steps = steps_per_epoch(
            num_examples, self.layout.global_batch, self.accumulation_steps
        )
        epoch, step_in_epoch = divmod(step, epoch_steps)
        positions = self.layout.positions(step_in_epoch)
        indices = epoch_permutation(self.seed, epoch, num_examples)[positions]
        examples = read_examples(self.source, indices)
        labels = np.asarray([example["label"] for example in examples], np.int32)
        unreadable = np.zeros(len(examples), bool)
        rngs = (
            [augmentation_rng(self.seed, epoch, index) for index in indices.tolist()]
            if self.augment
            else []
        )
        if self.spec.family == "small":  # decoded arrays, augmented as one array
            images = [example["image"] for example in examples]
            if self.augment:
                images = augment_images(images, self.spec, self.size, rngs)
            else:
                images = _resize_small(np.stack(images), self.size)
        else:
            process = (
                (lambda i, image: augment_image(image, self.spec, self.size, rngs[i]))
                if self.augment
                else (lambda i, image: eval_image(image, self.spec, self.size))
            )
            pieces, unreadable = _each_image(examples, indices, process, self.unreadable)
            readable = np.flatnonzero(~unreadable)
            if not readable.size:
                name = _example_name(examples[0], int(indices[0]))
                raise UnreadableImageError(f"no image of a batch decodes ({name}, ...)")
            for i in np.flatnonzero(unreadable):
                # The next readable example of the batch, cyclically, takes the place.
                j = readable[np.searchsorted(readable, i) % readable.size]
                pieces[i], labels[i] = pieces[j], labels[j]
            images = np.stack(pieces)
        fields = {"label": labels, "index": indices.astype(np.int64)}
        if self.unreadable == "skip":
            fields["unreadable"] = unreadable
        return self.collate(images, **fields)


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
    """The process's slice of evaluation step ``step``; positions past the split's end are
    masked all-zero examples (so are unreadable ones, with ``unreadable='skip'``)."""

    source: Sequence[dict[str, Any]]
    spec: DatasetSpec
    layout: _Layout
    size: tuple[int, int]
    collate: Collate
    unreadable: Unreadable

    def __call__(self, step: int) -> Batch:
        positions = self.layout.positions(step)
        real = positions < len(self.source)
        examples = read_examples(self.source, positions[real])
        images = np.zeros((len(positions), *self.size, self.spec.image_shape[2]), np.uint8)
        labels = np.zeros(len(positions), np.int32)
        unreadable = np.zeros(len(positions), bool)
        if examples:
            labels[real] = [example["label"] for example in examples]
            if self.spec.family == "small":
                images[real] = _resize_small(np.stack([e["image"] for e in examples]), self.size)
            else:
                process = lambda i, image: eval_image(image, self.spec, self.size)  # noqa: E731
                pieces, bad = _each_image(examples, positions[real], process, self.unreadable)
                for position, piece in zip(np.flatnonzero(real), pieces, strict=True):
                    if piece is not None:
                        images[position] = piece
                unreadable[np.flatnonzero(real)[bad]] = True
        fields = {
            "label": labels,
            "index": np.where(real, positions, -1).astype(np.int64),
            "mask": (real & ~unreadable).astype(np.float32),
        }
        if self.unreadable == "skip":
            fields["unreadable"] = unreadable
        return self.collate(images, **fields)


def default_worker_count(processes_on_host: int = 1) -> int:
    """The cores this process may run on (``os.sched_getaffinity``), shared among the
    processes of one host that each run a loader; at least 1.

    >>> default_worker_count() == len(os.sched_getaffinity(0))
    True
    >>> default_worker_count(processes_on_host=len(os.sched_getaffinity(0)) + 1)  # at least 1
    1
    """
    return max(1, len(os.sched_getaffinity(0)) // processes_on_host)


def _iterate(
    dataset: grain.MapDataset, worker_count: int, thread_count: int, prefetch_batches: int
) -> Iterator[Batch]:
    """Iterates a dataset of batches, computing upcoming batches in threads or processes."""
    if worker_count and not flags.FLAGS.is_parsed():
        # grain's worker processes read absl flags; outside an absl app, use their defaults.
        flags.FLAGS.mark_as_parsed()
    read_options = grain.ReadOptions(
        num_threads=thread_count if prefetch_batches else 0,
        prefetch_buffer_size=max(prefetch_batches, thread_count),
    )
    iter_dataset = dataset.to_iter_dataset(read_options)
    if worker_count:
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count)
        )
    return iter(iter_dataset)


def train_batches(
    source: Sequence[dict[str, Any]],
    spec: DatasetSpec,
    *,
    seed: int,
    global_batch: int,
    process_index: int,
    process_count: int,
    local_device_count: int,
    start_step: int = 0,
    num_steps: int | None = None,
    augment: bool = True,
    image_size: int | None = None,
    accumulation_steps: int = 1,
    worker_count: int = 0,
    thread_count: int = 1,
    prefetch_batches: int = 2,
    normalize: bool = True,
    unreadable: Unreadable = "stop",
) -> Iterator[Batch]:
    """Yields this process's training batches for global steps ``start_step, start_step + 1, …``.

    Args:
        source: Random-access training examples (``load_source(name, spec.train_split)``).
        spec: The dataset's spec.
        seed: Non-negative seed of the epoch permutations and the augmentation.
        global_batch: Examples per step summed over all processes and devices.
        process_index: This process's index (``jax.process_index()``).
        process_count: Number of processes (``jax.process_count()``).
        local_device_count: Devices of this process (``jax.local_device_count()``).
        start_step: First global step to yield (resume from a checkpoint at this step).
        num_steps: Number of batches to yield; None for an endless stream.
        augment: Apply training augmentation; if False, images get the evaluation treatment.
        image_size: Square output side; defaults to ``spec.image_shape``.
        accumulation_steps: Micro-batches per optimizer update; an epoch is a whole number of
            updates (``steps_per_epoch``).
        worker_count: Processes computing batches (0: threads of this process), e.g.
            ``default_worker_count()``. Entry points using workers need an
            ``if __name__ == '__main__':`` guard.
        thread_count: Threads computing batches when ``worker_count`` is 0.
        prefetch_batches: Batches computed ahead of the consumer.
        normalize: Normalise images on the host to float32; False keeps them uint8.
        unreadable: An image that does not decode: 'stop' raises ``UnreadableImageError``
            (naming it) from the iterator; 'skip' puts a copy of the batch's next readable
            example in its place and marks it in the batch's ``'unreadable'`` field.

    Returns:
        An iterator of dicts: 'image' ``(D, B, H, W, C)``, 'label' int32 ``(D, B)`` and
        'index' int64 ``(D, B)``, with ``D = local_device_count`` and
        ``B = global_batch / (process_count · D)``; with ``unreadable='skip'`` also
        'unreadable' bool ``(D, B)``.

    Raises:
        ValueError: If the batch does not divide evenly or exceeds the split, or
            ``unreadable`` is neither 'stop' nor 'skip'.
    """
    checks.check_choice("unreadable", unreadable, UNREADABLE_CHOICES)
    layout = _Layout(global_batch, process_index, process_count, local_device_count)
    if steps_per_epoch(len(source), global_batch, accumulation_steps) < 1:
        raise ValueError(
            f"global_batch {global_batch} × accumulation_steps {accumulation_steps} exceeds the "
            f"{len(source)} examples."
        )
    stop_step = start_step + num_steps if num_steps is not None else sys.maxsize
    batch = _TrainBatch(
        source,
        spec,
        layout,
        seed,
        _output_size(spec, image_size),
        augment,
        accumulation_steps,
        Collate(spec, local_device_count, normalize),
        unreadable,
    )
    batches = grain.MapDataset.range(start_step, stop_step).map(batch)
    return _iterate(batches, worker_count, thread_count, prefetch_batches)


def eval_batches(
    source: Sequence[dict[str, Any]],
    spec: DatasetSpec,
    *,
    global_batch: int,
    process_index: int,
    process_count: int,
    local_device_count: int,
    image_size: int | None = None,
    worker_count: int = 0,
    thread_count: int = 1,
    prefetch_batches: int = 2,
    normalize: bool = True,
    unreadable: Unreadable = "stop",
) -> Iterator[Batch]:
    """Yields this process's evaluation batches; together they hold every example once.

    The split is padded with all-zero examples (``'mask'`` 0, ``'index'`` -1, ``'label'`` 0)
    to ``num_eval_steps(len(source), global_batch)`` global batches. Weight per-example
    metrics by ``'mask'`` and sum over all processes.

    Args:
        source: Random-access evaluation examples (``load_source(name, spec.test_split)``).
        spec: The dataset's spec.
        global_batch: Examples per step summed over all processes and devices.
        process_index: This process's index.
        process_count: Number of processes.
        local_device_count: Devices of this process.
        image_size: Square output side; defaults to ``spec.image_shape``.
        worker_count: Processes computing batches (0: threads of this process).
        thread_count: Threads computing batches when ``worker_count`` is 0.
        prefetch_batches: Batches computed ahead of the consumer.
        normalize: Normalise images on the host to float32; False keeps them uint8.
        unreadable: An image that does not decode: 'stop' raises ``UnreadableImageError``;
            'skip' gives it 'mask' 0 and marks it in the batch's ``'unreadable'`` field.

    Returns:
        An iterator of dicts like ``train_batches``' plus 'mask' float32 ``(D, B)``.
    """
    checks.check_choice("unreadable", unreadable, UNREADABLE_CHOICES)
    layout = _Layout(global_batch, process_index, process_count, local_device_count)
    batch = _EvalBatch(
        source,
        spec,
        layout,
        _output_size(spec, image_size),
        Collate(spec, local_device_count, normalize),
        unreadable,
    )
    batches = grain.MapDataset.range(num_eval_steps(len(source), global_batch)).map(batch)
    return _iterate(batches, worker_count, thread_count, prefetch_batches)
