"""Tests of the ImageNet input path: the synthetic JPEG dataset, crop-aware decoding, the
Inception crop's statistics, uint8 batches and parallel workers."""

import io
import json
import math
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from recipe import data
from recipe.data import jpeg, pipeline, synthetic_imagenet

REPO = pathlib.Path(__file__).resolve().parents[1]

SPEC = data.get_dataset_spec("synthetic_imagenet_small")


@pytest.fixture(scope="session")
def jpeg_source(data_dir: str):
    """The small synthetic ImageNet's train split (prepared on first use, ~4 s)."""
    return data.load_source(SPEC.name, SPEC.train_split, data_dir)


@pytest.fixture(scope="session")
def jpegs(jpeg_source) -> list[bytes]:
    return [jpeg_source[i]["image"] for i in range(48)]


def _batches(source, **overrides) -> list[data.Batch]:
    kwargs = dict(
        seed=0,
        global_batch=16,
        process_index=0,
        process_count=1,
        local_device_count=2,
        num_steps=3,
        image_size=32,
    )
    return list(data.train_batches(source, SPEC, **(kwargs | overrides)))


def _assert_same_batches(batches: list[data.Batch], others: list[data.Batch]) -> None:
    assert len(batches) == len(others)
    for batch, other in zip(batches, others, strict=True):
        assert batch.keys() == other.keys()
        for key in batch:
            np.testing.assert_array_equal(batch[key], other[key])


# ---- The dataset.


def test_synthetic_imagenet_is_imagenet_like_and_deterministic(jpeg_source, data_dir):
    validation = data.load_source(SPEC.name, SPEC.test_split, data_dir)
    assert (len(jpeg_source), len(validation)) == (SPEC.num_train, SPEC.num_test) == (320, 80)
    sizes, shapes = [], []
    for index in range(len(jpeg_source)):
        example = jpeg_source[index]
        assert example["label"] == index % SPEC.num_classes
        assert example["file_name"] == f"train_{index:08d}.JPEG".encode()
        sizes.append(len(example["image"]))
        shapes.append(jpeg.jpeg_shape(example["image"]))
    short, long = np.min(shapes, axis=1), np.max(shapes, axis=1)
    assert 300 <= short.min() and short.max() <= 500 and 380 < short.mean() < 420
    ratio = long / short
    assert ratio.max() <= 2.0 and 0.08 < np.mean(ratio > 4 / 3 + 0.01) < 0.25
    assert 0.6 < np.mean([h < w for h, w in shapes]) < 0.9  # mostly landscape
    assert 70_000 < np.mean(sizes) < 140_000  # ImageNet's JPEGs average ~110 KB
    # Image i is a pure function of (split, i): regenerating it gives the stored bytes.
    rng = np.random.default_rng([0, 7])
    regenerated = synthetic_imagenet.encode_jpeg(synthetic_imagenet.synthesize_image(7, rng))
    assert regenerated == jpeg_source[7]["image"]
    assert validation[0]["image"] != jpeg_source[0]["image"]


def test_images_are_structured_not_noise(jpegs):
    image = jpeg.decode(jpegs[0]).astype(np.float32)
    # Neighbouring pixels are strongly correlated (white noise would give ~0).
    a, b = image[:, :-1].ravel(), image[:, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.5
    # Classes differ in colour: mean colours of two classes are far apart.
    means = [jpeg.decode(jpegs[i]).reshape(-1, 3).mean(0) for i in (0, 1, 10, 11)]
    same = np.abs(means[0] - means[2]).max()
    assert np.abs(means[0] - means[1]).max() > same or np.abs(means[2] - means[3]).max() > same


def test_prepare_and_read_without_tensorflow(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from recipe import data
        spec = data.get_dataset_spec("synthetic_imagenet_small")
        source = data.load_source(spec.name, "validation", {str(tmp_path)!r})
        assert isinstance(source[0]["image"], bytes)
        batch = next(data.eval_batches(source, spec, global_batch=8, process_index=0,
                                       process_count=1, local_device_count=1, image_size=32))
        assert batch["image"].shape == (1, 8, 32, 32, 3)
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)


# ---- Decoding only what the crop needs.


@pytest.mark.parametrize(
    ("box", "size", "scale"),
    [
        ((0, 0, 500, 375), (224, 224), 1),
        ((0, 0, 448, 448), (224, 224), 2),
        ((10, 20, 457, 467), (224, 224), 1),  # 447 px: one short of 2 × 224
        ((0, 0, 500, 375), (64, 64), 4),
        ((0, 0, 300, 300), (32, 32), 8),
        ((5, 5, 100, 300), (64, 64), 1),
    ],
)
def test_dct_scale_is_largest_that_keeps_the_output_resolution(box, size, scale):
    assert jpeg.dct_scale(box, size) == scale
    left, top, right, bottom = box
    assert (right - left) / scale >= size[1] and (bottom - top) / scale >= size[0]


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_scaled_decode_is_the_downscaled_image(jpegs, scale):
    """Against Pillow, another decoder: its full decode, block-averaged by the scale, and its
    own DCT-domain scaled decode (`Image.draft`, libjpeg's scaled inverse DCT)."""
    image = Image.open(io.BytesIO(jpegs[0]))
    width, height = image.size
    full = np.asarray(image.convert("RGB"))
    scaled = jpeg.decode(jpegs[0], scale)
    assert scaled.shape == (math.ceil(height / scale), math.ceil(width / scale), 3)
    # The DCT-domain downscale is a block average up to JPEG rounding.
    crop = full[: height // scale * scale, : width // scale * scale].astype(np.float32)
    pooled = crop.reshape(height // scale, scale, width // scale, scale, 3).mean((1, 3))
    difference = np.abs(scaled[: height // scale, : width // scale] - pooled)
    assert difference.mean() < (0.6 if scale == 1 else 4.0)
    # Pillow decoding at the same scale gives the same pixels (measured: identical).
    drafted = Image.open(io.BytesIO(jpegs[0]))
    drafted.draft("RGB", (width // scale, height // scale))
    pillow_scaled = np.asarray(drafted.convert("RGB"))
    assert pillow_scaled.shape == scaled.shape
    assert np.abs(scaled.astype(np.float32) - pillow_scaled).mean() < 0.5


@pytest.mark.parametrize("size", [(224, 224), (96, 96), (32, 32)])
def test_crop_from_bytes_matches_full_decode(jpegs, size):
    """Bytes and decoded arrays take the same boxes. Evaluation decodes in full: the same
    pixels. A training box at least twice ``size`` is decoded at 1/s: the same pixels at s = 1,
    and at s > 1 the box's edges snap to the s-pixel grid and the DCT downscale replaces the
    area average; on these images (texture down to 3 px) that changes the crop by ~5–7 of
    255 on average, against the same snapped box decoded in full."""
    exact, snapped = [], []
    for index, image in enumerate(jpegs[:16]):
        decoded = jpeg.decode(image)
        np.testing.assert_array_equal(
            data.eval_image(image, SPEC, size), data.eval_image(decoded, SPEC, size)
        )
        box = pipeline.inception_crop_box(*decoded.shape[:2], np.random.default_rng(index))
        from_bytes = data.augment_image(image, SPEC, size, np.random.default_rng(index))
        from_array = data.augment_image(decoded, SPEC, size, np.random.default_rng(index))
        assert from_bytes.shape == (*size, 3) and from_bytes.dtype == np.uint8
        scale = jpeg.dct_scale(box, size)
        if scale == 1:
            exact.append(np.abs(from_bytes.astype(np.float32) - from_array).max())
        else:
            grid_box = tuple(round(edge / scale) * scale for edge in box)
            unscaled = jpeg.crop_resize(decoded, grid_box, size).astype(np.float32)
            scaled = jpeg.decode_crop_resize(image, box, size)
            snapped.append(np.abs(scaled - unscaled).mean())
    assert exact == [0.0] * len(exact)
    if size == (224, 224):  # 300–500 px images: a box of twice 224 is rare
        assert len(exact) >= 12
    else:
        assert len(snapped) >= 8 and np.mean(snapped) < 8.0


def test_central_crop_box_is_the_flax_examples():
    # crop = int(0.875 · shorter side), offset ((side − crop + 1) // 2), in whole pixels.
    assert pipeline._central_crop_box(375, 500) == (86, 24, 86 + 328, 24 + 328)
    assert pipeline._central_crop_box(500, 333) == (21, 105, 21 + 291, 105 + 291)


# ---- The Inception crop's statistics (Szegedy et al. 2015; Goyal et al. §5.1).

_AREA = (0.08, 1.0)
_LOG_RATIO = math.log(4 / 3)


def _accept_probability() -> float:
    """P(an attempt fits) in a square image: area fraction a ~ U(0.08, 1) and log aspect
    u ~ U(−c, c) fit iff a ≤ exp(−|u|); E_u[(exp(−|u|) − 0.08) / 0.92]."""
    c = _LOG_RATIO
    return ((1 - math.exp(-c)) / c - _AREA[0]) / (_AREA[1] - _AREA[0])


def _accepted_mean_area() -> float:
    """E[a | fits] = E_u[(exp(−2|u|) − 0.08²) / 2] / E_u[exp(−|u|) − 0.08]."""
    c = _LOG_RATIO
    numerator = ((1 - math.exp(-2 * c)) / (2 * c) - _AREA[0] ** 2) / 2
    return numerator / ((1 - math.exp(-c)) / c - _AREA[0])


def test_inception_crop_statistics_match_closed_forms():
    side, draws = 2000, 20_000
    rng = np.random.default_rng(0)
    boxes = np.array([pipeline.inception_crop_box(side, side, rng) for _ in range(draws)])
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = widths * heights / side**2
    log_ratio = np.log(widths / heights)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= side).all()
    assert area.min() >= 0.0799 and area.max() <= 1.0
    assert np.abs(log_ratio).max() <= _LOG_RATIO + 1e-3
    # No attempt fits 10 times in a row with probability (1 − p)^10: the centre fallback,
    # which in a square is the whole image.
    fallback = (widths == side) & (heights == side)
    expected_fallback = (1 - _accept_probability()) ** 10
    assert abs(fallback.mean() - expected_fallback) < 4 * math.sqrt(expected_fallback / draws)
    accepted = area[~fallback]
    standard_error = accepted.std() / math.sqrt(len(accepted))
    assert abs(accepted.mean() - _accepted_mean_area()) < 4 * standard_error
    # Given the area, the aspect ratio is symmetric in log space, and the box is uniformly
    # placed: its offset is uniform over the free range.
    assert abs(log_ratio[~fallback].mean()) < 4 * log_ratio.std() / math.sqrt(len(accepted))
    free = side - widths[~fallback]
    offset = boxes[~fallback, 0][free > 0] / free[free > 0]
    assert abs(offset.mean() - 0.5) < 4 * math.sqrt(1 / 12 / len(offset))


def test_inception_crop_fallback_is_centred_allowed_ratio():
    # A 1 × 100 strip never fits a 3/4–4/3 box of ≥ 8% area: the fallback is its centre,
    # cut to the widest allowed ratio.
    assert pipeline.inception_crop_box(1, 100, np.random.default_rng(0)) == (49, 0, 50, 1)


# ---- Batches: uint8 to the devices, normalised in the step.


def test_uint8_batches_normalise_to_the_float_batches(jpeg_source):
    (as_uint8,) = _batches(jpeg_source, num_steps=1, normalize=False)
    (as_float,) = _batches(jpeg_source, num_steps=1)
    assert as_uint8["image"].dtype == np.uint8 and as_float["image"].dtype == np.float32
    assert as_uint8["image"].nbytes * 4 == as_float["image"].nbytes
    np.testing.assert_array_equal(data.normalize_images(as_uint8["image"], SPEC), as_float["image"])
    np.testing.assert_array_equal(as_uint8["label"], as_float["label"])


def test_normalize_images_in_jit_matches_host():
    import jax

    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    on_device = jax.jit(lambda x: data.normalize_images(x, SPEC))(images)
    np.testing.assert_allclose(on_device, data.normalize_images(images, SPEC), rtol=1e-6, atol=1e-6)
    assert data.normalize_images(images.astype(np.float32), SPEC).dtype == np.float32
    bf16 = jax.jit(lambda x: data.normalize_images(x, SPEC, jax.numpy.bfloat16))(images)
    assert bf16.dtype == jax.numpy.bfloat16


# ---- Parallel workers: the same batches as none, and after a mid-epoch resume.

_WORKERS_SCRIPT = """
import sys
import numpy as np
from absl import flags
from recipe import data

def batches(source, spec, **overrides):
    kwargs = dict(seed=3, global_batch=32, process_index=0, process_count=1,
                  local_device_count=2, image_size=32, normalize=False, num_steps=12)
    return list(data.train_batches(source, spec, **(kwargs | overrides)))

if __name__ == "__main__":
    flags.FLAGS(sys.argv[:1])
    spec = data.get_dataset_spec("synthetic_imagenet_small")
    source = data.load_source(spec.name, spec.train_split, sys.argv[1])
    # 10 steps per epoch: steps 6..11 cross into the second epoch.
    serial = batches(source, spec)
    with_workers = batches(source, spec, worker_count=2)
    resumed = batches(source, spec, worker_count=2, start_step=6, num_steps=6)
    for got, expected in ((with_workers, serial), (resumed, serial[6:])):
        assert len(got) == len(expected)
        for batch, other in zip(got, expected):
            for key in batch:
                np.testing.assert_array_equal(batch[key], other[key])
    print("same batches")
"""


def test_workers_give_the_same_batches_and_resume_exactly(jpeg_source, data_dir, tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(_WORKERS_SCRIPT)
    command = ["timeout", "-s", "KILL", "300", sys.executable, str(script), data_dir]
    result = subprocess.run(command, capture_output=True, text=True, timeout=320)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same batches" in result.stdout


def test_grayscale_jpegs_decode_to_rgb():
    # ImageNet holds some greyscale JPEGs; the pipeline's output always has 3 channels.
    grey = np.random.default_rng(0).integers(0, 256, (300, 400), dtype=np.uint8)
    image = synthetic_imagenet.encode_jpeg(grey)  # a one-channel JPEG
    assert jpeg.decode(image).shape == (300, 400, 3)
    crop = data.augment_image(image, SPEC, (64, 64), np.random.default_rng(0))
    assert crop.shape == (64, 64, 3)
    np.testing.assert_array_equal(crop[..., 0], crop[..., 1])


# ---- The ImageNet config's whole path, from the command line.

_CONFIG_OVERRIDES = {
    "dataset": "synthetic_imagenet_small",
    "model": "resnet8",  # tiny, in one stage: compiling the step is most of this test's time
    "stage_sizes": (1,),
    "num_filters": 4,
    "image_size": 32,
    "batch_size": 32,
    "eval_batch_size": 40,
    "bn.ghost_batch_size": 8,  # the config's ghost BN, within 8 examples per device
    "num_epochs": 1,
    "optimizer.warmup_epochs": 0.25,
    "optimizer.decay_epochs": (0.5,),
    "data_workers": 1,
    "log_every_steps": 5,
    "sync_every_steps": 5,
    "progress_bar": False,
}


def test_imagenet_config_end_to_end(jpeg_source, data_dir, tmp_path):
    """configs/imagenet_resnet50_goyal.py on the JPEG dataset with a tiny model: prepare
    (the fixture), read, decode in a worker process, augment, collate uint8, transfer, the
    bfloat16 train step normalising its input, evaluation and the final checkpoint."""
    from configs import imagenet_resnet50_goyal
    from train import describe, resolve

    config = imagenet_resnet50_goyal.get_config()
    config.update_from_flattened_dict({**_CONFIG_OVERRIDES, "data_dir": data_dir})
    text = describe.describe(config)
    assert "1 worker process; JPEG decoded by libjpeg-turbo" in text
    assert "0.1 MiB per step (3,072 bytes per image" in text  # 32 × 32 × 3 uint8
    assert resolve.resolve(config, 4).data_workers == 1

    flags = [
        f"--config.{k}={resolve.cli_value(v)}".replace("'", "")
        for k, v in _CONFIG_OVERRIDES.items()
    ]
    workdir = tmp_path / "run"
    command = [
        "timeout", "-s", "KILL", "600", sys.executable, "-m", "train",
        "--config=configs/imagenet_resnet50_goyal.py", f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        *flags,
    ]  # fmt: skip
    # `python -m train` runs from a checkout: the repository root.
    result = subprocess.run(command, capture_output=True, text=True, timeout=620, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final test accuracy" in result.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 2 and all(math.isfinite(r["loss"]) and r["finite"] == 1 for r in train)
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10]
    assert (workdir / "checkpoints" / "10").exists()
