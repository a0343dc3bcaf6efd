"""The trainer on the user's own data: a TFDS image-classification dataset it has no entry for
(tiny builders registered here and prepared locally, nothing downloaded), and an image folder
(written here, one of its files corrupt); and a training subset that sees every class, on every
family of dataset."""

import io
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
import tiny_config as tiny
from conftest import xla_flags
from PIL import Image

import recipe
from recipe import data
from recipe.data import datasets, jpeg
from train import describe, inputs, resolve

REPO = pathlib.Path(__file__).resolve().parents[1]
# Six classes: a subset of 4 (the smallest batch on the tests' 4 devices) can leave one out.
CLASSES = ("red", "green", "blue", "cyan", "magenta", "yellow")
COLORS = np.array([(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0)], np.uint8)
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 2


def _picture(label: int, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A noisy RGB image whose class is its colour."""
    return rng.integers(0, 90, (*shape, 3), dtype=np.uint8) + 150 * COLORS[label]


def _encoded(image: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=kind)
    return buffer.getvalue()


def _sizes(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(24, 48)), int(rng.integers(24, 48))


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """Registered as `tiny_shapes`: JPEGs of varying sizes ('imagenet' family), under feature
    names of its own."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "picture": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "kind": tfds.features.ClassLabel(names=CLASSES),
                }
            ),
            supervised_keys=("picture", "kind"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated: nothing is downloaded
        return {
            "train": self._generate_examples(TRAIN_PER_CLASS, 0),
            "test": self._generate_examples(TEST_PER_CLASS, 1),
        }

    def _generate_examples(self, per_class: int, seed: int):
        rng = np.random.default_rng(seed)
        for index in range(per_class * len(CLASSES)):
            label = index % len(CLASSES)
            image = _encoded(_picture(label, rng, _sizes(rng)), "JPEG")
            yield index, {"picture": image, "kind": label}


class TinySwatches(tfds.core.GeneratorBasedBuilder):
    """Registered as `tiny_swatches`: 12×12 PNGs ('small' family), its classes unnamed."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(12, 12, 3)),
                    "label": tfds.features.ClassLabel(num_classes=len(CLASSES)),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(TRAIN_PER_CLASS, 0),
            "validation": self._generate_examples(TEST_PER_CLASS, 1),
        }

    def _generate_examples(self, per_class: int, seed: int):
        rng = np.random.default_rng(seed)
        for index in range(per_class * len(CLASSES)):
            label = index // per_class  # sorted by class, as mnist5k
            yield index, {"image": _encoded(_picture(label, rng, (12, 12)), "PNG"), "label": label}


@pytest.fixture(scope="module")
def user_data_dir(tmp_path_factory) -> str:
    """A data dir holding the two tiny builders, prepared here by `prepare_dataset` (which
    computes their statistics), and the embedded mnist5k."""
    directory = str(tmp_path_factory.mktemp("user_tfds"))
    for name in ("tiny_shapes", "tiny_swatches"):
        data.prepare_dataset(name, directory)
    return directory


CORRUPT = "train/green/07_corrupt.jpg"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> pathlib.Path:
    """PATH/train/<class>/ and PATH/val/<class>/: JPEGs and PNGs of varying sizes, one of the
    training JPEGs truncated (`CORRUPT`), and a file that is no image (ignored)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(2)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", TEST_PER_CLASS)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                kind = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
                image = _encoded(_picture(label, rng, _sizes(rng)), kind[0])
                path = root / split / name / f"{i:02d}.{kind[1]}"
                if str(path.relative_to(root)) == CORRUPT.replace("_corrupt", ""):
                    path, image = root / CORRUPT, image[: len(image) // 2]  # truncated
                path.write_bytes(image)
    (root / "train" / "red" / "notes.txt").write_text("not an image")
    return root


# ---- A TFDS dataset the library has no entry for, by its metadata.


def test_tfds_dataset_by_name_from_its_metadata(user_data_dir):
    shapes = data.get_dataset_spec("tiny_shapes", user_data_dir)
    assert (shapes.num_classes, shapes.class_names) == (6, CLASSES)
    assert (shapes.num_train, shapes.num_test, shapes.test_split) == (48, 12, "test")
    # JPEGs of varying size: the 'imagenet' family, cropped to 224 unless the config says.
    assert (shapes.family, shapes.stored_as, shapes.image_shape) == (
        "imagenet",
        "jpeg",
        (224,) * 2 + (3,),
    )
    # The statistics, computed once from the training images by `prepare_dataset`, stored.
    stored = json.loads(
        (pathlib.Path(user_data_dir) / "tiny_shapes/1.0.0" / datasets.STATISTICS_FILE).read_text()
    )
    source = data.load_source("tiny_shapes", "train", user_data_dir, family="small")
    expected = data.pixel_statistics(source[i]["image"] for i in range(len(source)))
    assert (stored["images"], stored["of"]) == (48, 48)
    np.testing.assert_allclose(shapes.mean, expected[0])
    np.testing.assert_allclose(shapes.std, expected[1])
    assert shapes.mean == tuple(stored["mean"]) and shapes.std == tuple(stored["std"])
    # One size, at most 64 px a side: the 'small' family; 'validation' is its test split.
    swatches = data.get_dataset_spec("tiny_swatches", user_data_dir)
    assert (swatches.family, swatches.image_shape, swatches.crop_padding) == (
        "small",
        (12, 12, 3),
        2,
    )
    assert (swatches.test_split, swatches.class_names) == ("validation", tuple("012345"))
    # The family as the config sets it.
    as_imagenet = data.get_dataset_spec("tiny_swatches", user_data_dir, family="imagenet")
    assert (as_imagenet.family, as_imagenet.image_shape) == ("imagenet", (12, 12, 3))
    with pytest.raises(ValueError, match="tiny_shapes's vary in size"):
        data.get_dataset_spec("tiny_shapes", user_data_dir, family="small")
    batch = next(
        data.train_batches(
            data.load_source("tiny_shapes", "train", user_data_dir),
            shapes,
            seed=0,
            global_batch=8,
            process_index=0,
            process_count=1,
            local_device_count=1,
            image_size=16,
        )
    )
    assert batch["image"].shape == (1, 8, 16, 16, 3)


def test_a_tfds_dataset_not_prepared_says_how_and_downloads_nothing(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError, match=r"prepare_dataset\('cifar100'"):
        data.get_dataset_spec("cifar100", str(tmp_path))
    with pytest.raises(ValueError, match=r"glue is not an image-classification dataset"):
        data.get_dataset_spec("glue", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def _user_data_flags(dataset: str, data_dir: str) -> list[str]:
    """tests/tiny_config.py on a 6-class dataset of 48 training images at 16×16: 3 steps of 16
    per epoch, 3 epochs (the same programs for every dataset here: compiled once)."""
    overrides = {
        "dataset": dataset,
        "data_dir": data_dir,
        "image_size": 16,
        "batch_size": 16,
        "eval_batch_size": 12,
        "data_in_memory": False,
        "data_workers": 0,
        "log_every_steps": 3,
    }
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def _train(flags: list[str], workdir: pathlib.Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "train", "--config=tests/tiny_config.py"]
    env = {**os.environ, "XLA_FLAGS": xla_flags(4)}
    return subprocess.run(
        [*command, f"--workdir={workdir}", *flags],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )


def test_the_trainer_trains_on_a_tfds_dataset_it_has_no_entry_for(user_data_dir, tmp_path):
    """In a process where the builder is not even registered: read by its files alone."""
    result = _train(_user_data_flags("tiny_shapes", user_data_dir), tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final test accuracy" in result.stdout
    run = recipe.load_run(str(tmp_path / "run"))  # the spec from the work dir, not the data
    assert run.spec.class_names == CLASSES and run.image_shape == (16, 16, 3)


def test_the_trainer_trains_on_an_image_folder_skipping_its_corrupt_file(image_folder, tmp_path):
    flags = [
        *_user_data_flags(f"folder:{image_folder}", "/unused"),
        "--config.unreadable_images=skip",
    ]
    result = _train(flags, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    corrupt = str(image_folder / CORRUPT)
    named = [line for line in result.stdout.splitlines() if line.startswith("skipped an image")]
    assert named == [f"skipped an image that cannot be read or decoded (train split): {corrupt}"]
    final = result.stdout.split("final test accuracy", 1)[1].splitlines()[0]
    assert final.endswith("; 1 unreadable image skipped (named in the log)"), final
    records = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["unreadable_images"] for r in records if r["kind"] == "train"][-1] == 1
    run = recipe.load_run(str(tmp_path / "run"))
    assert run.spec.class_names == tuple(sorted(CLASSES))  # the folders' names, sorted


def test_a_corrupt_image_stops_the_run_naming_it(image_folder, tmp_path):
    from train import __main__ as cli

    result = _train(_user_data_flags(f"folder:{image_folder}", "/unused"), tmp_path / "run")
    assert result.returncode == cli.EXIT_UNREADABLE_DATA, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(
        rf"error: {re.escape(str(image_folder / CORRUPT))} is unreadable \(.*\); the run stopped"
        r".*; fix: replace or remove the file, or --config\.unreadable_images=skip",
        last,
    ), last


# ---- The pipeline's side: unreadable images stop or are skipped, never silently.


def _folder_batches(image_folder, split: str, unreadable: str, evaluation: bool = False):
    name = f"folder:{image_folder}"
    spec = data.get_dataset_spec(name)
    source = data.load_source(name, split)
    options = dict(process_index=0, process_count=1, local_device_count=1, image_size=8)
    if evaluation:
        return source, list(
            data.eval_batches(source, spec, global_batch=64, unreadable=unreadable, **options)
        )
    batches = data.train_batches(
        source, spec, seed=0, global_batch=48, num_steps=1, unreadable=unreadable, **options
    )
    return source, list(batches)


def test_an_unreadable_image_stops_the_batch_naming_its_file(image_folder):
    with pytest.raises(data.UnreadableImageError, match=re.escape(str(image_folder / CORRUPT))):
        _folder_batches(image_folder, "train", "stop")


def test_an_unreadable_image_is_skipped_and_marked(image_folder):
    source, (batch,) = _folder_batches(image_folder, "train", "skip")
    bad = batch["unreadable"][0]
    assert bad.sum() == 1
    (index,) = batch["index"][0][bad]
    assert source[int(index)]["file_name"] == str(image_folder / CORRUPT)
    # Its place holds another example of the batch, image and label.
    images, labels = batch["image"][0], batch["label"][0]
    (position,) = np.flatnonzero(bad)
    copies = [i for i in range(48) if i != position and np.array_equal(images[i], images[position])]
    assert copies and all(labels[i] == labels[position] for i in copies)
    # In evaluation, an unreadable image is masked out (the val split has none: all count).
    _, (val_batch,) = _folder_batches(image_folder, "val", "skip", evaluation=True)
    assert val_batch["mask"].sum() == 12 and not val_batch["unreadable"].any()


def test_images_decode_whatever_their_format_or_say_they_do_not():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    png, _ = jpeg.decode_image(_encoded(rgb, "PNG"))
    np.testing.assert_array_equal(png, rgb)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")  # libjpeg-turbo refuses
    assert jpeg.decode_image(cmyk.getvalue())[0].shape == (30, 40, 3)
    whole = _encoded(rgb, "JPEG")
    for broken in (whole[: len(whole) // 2], b"not an image", b""):
        with pytest.raises(jpeg.UndecodableImageError):
            jpeg.decode_crop_resize(broken, (0, 0, 20, 20), (8, 8))


# ---- A training subset that sees every class, on every family of dataset.

FAMILIES = {
    # id: (dataset, the fixture of its data dir, a train_examples that leaves out classes, the
    # smallest that sees them all in their shares)
    "embedded": ("mnist5k", "data_dir", 8, 20),
    "jpeg": ("synthetic_imagenet_small", "data_dir", 8, 20),
    "tfds-imagenet-family": ("tiny_shapes", "user_data_dir", 4, 12),
    "tfds-small-family-sorted": ("tiny_swatches", "user_data_dir", 4, 12),
    "folder": ("folder", "image_folder", 4, 12),
}


@pytest.mark.parametrize(
    "dataset, data_dir_fixture, too_few, enough", FAMILIES.values(), ids=FAMILIES
)
def test_a_training_subset_sees_every_class(dataset, data_dir_fixture, too_few, enough, request):
    location = request.getfixturevalue(data_dir_fixture)
    if dataset == "folder":
        dataset, location = f"folder:{location}", "/unused"
    overrides = dict(dataset=dataset, batch_size=4, eval_batch_size=4, data_in_memory=False)
    config = tiny.make_config(str(location), train_examples=too_few, **overrides)
    setup = resolve.resolve(config, jax.device_count())
    with pytest.raises(
        resolve.ConfigError, match=rf"^train_examples={too_few} leaves out "
    ) as error:
        inputs.open_data(setup)
    assert str(error.value).endswith(f"; fix: --config.train_examples={enough}")
    with pytest.raises(resolve.ConfigError) as from_describe:
        describe.describe(config)
    assert str(from_describe.value) == str(error.value)
    # Allowed, it trains on those examples as they are.
    config.allow_unbalanced_subset = True
    train, _ = inputs.open_data(resolve.resolve(config, jax.device_count()))
    assert len(train) == too_few
    # Enough of them: every class in its share of the split.
    config = tiny.make_config(str(location), train_examples=enough, **overrides)
    setup = resolve.resolve(config, jax.device_count())
    train, _ = inputs.open_data(setup)
    counts = np.bincount(
        [train[i]["label"] for i in range(len(train))], minlength=setup.spec.num_classes
    )
    labels = datasets.split_labels(setup.spec.name, setup.spec.train_split, setup.data.data_dir)
    share = enough * np.bincount(labels) / len(labels)
    assert len(train) == enough and np.all(np.abs(counts - share) < 1), (counts, share)
    assert (
        f"training subset    {enough} of the {len(labels)} training examples"
        in describe.describe(config)
    )
