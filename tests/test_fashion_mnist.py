"""Tests of the fashion_mnist dataset: TFDS's own builder prepared from local IDX files.

The IDX files are written by the tests (a few hundred random images in the original format,
gzipped), never read from Debian's package; the package's directory is pointed elsewhere.
"""

import gzip
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from recipe import data
from recipe.data import datasets, fashion_mnist

NUM_TRAIN, NUM_TEST = 300, 100


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, type 0x08, ndim, big-endian int32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_idx_dir(directory: pathlib.Path, arrays: dict, compress: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for split, (images_name, labels_name) in fashion_mnist.IDX_FILES.items():
        for name, array in ((images_name, arrays[split][0]), (labels_name, arrays[split][1])):
            if compress:
                (directory / name).write_bytes(gzip.compress(_idx_bytes(array)))
            else:
                (directory / name.removesuffix(".gz")).write_bytes(_idx_bytes(array))


@pytest.fixture(scope="module")
def arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random images (distinct, so each identifies its example) and labels, per split."""
    rng = np.random.default_rng(0)
    return {
        split: (
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.uint8),
        )
        for split, n in (("train", NUM_TRAIN), ("test", NUM_TEST))
    }


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory, arrays) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("idx")
    _write_idx_dir(directory, arrays)
    return directory


@pytest.fixture(autouse=True)
def no_debian_files(tmp_path_factory, monkeypatch):
    """Debian's directory, as far as the code can tell, is empty."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_IDX_DIR", tmp_path_factory.mktemp("no_package"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, idx_dir) -> str:
    """A data dir prepared from the test's IDX files named as the manual dir."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.prepare_dataset("fashion_mnist", data_dir, manual_dir=str(idx_dir))
    return data_dir


def _stored(source) -> dict[bytes, int]:
    """Image bytes → label of every example of a source."""
    examples = [source[i] for i in range(len(source))]
    assert all(e["image"].shape == (28, 28, 1) and e["image"].dtype == np.uint8 for e in examples)
    return {e["image"].tobytes(): int(e["label"]) for e in examples}


def _expected(arrays, split: str) -> dict[bytes, int]:
    images, labels = arrays[split]
    return {image.tobytes(): int(label) for image, label in zip(images, labels, strict=True)}


@pytest.mark.parametrize("split", ["train", "test"])
def test_prepared_splits_hold_the_idx_files_examples(prepared, arrays, split):
    source = data.load_source("fashion_mnist", split, prepared)
    assert len(source) == len(arrays[split][1])
    assert _stored(source) == _expected(arrays, split)
    assert _stored(data.InMemorySource(source, chunk_size=64)) == _expected(arrays, split)


def test_layout_is_tfds_own_fashion_mnist(prepared, tmp_path):
    version_dir = pathlib.Path(prepared) / "fashion_mnist" / "3.0.1"
    assert sorted(p.name for p in version_dir.glob("*.array_record-*")) == [
        "fashion_mnist-test.array_record-00000-of-00001",
        "fashion_mnist-train.array_record-00000-of-00001",
    ]
    # TFDS's own registered builder reads it, with its own features and splits.
    builder = tfds.builder("fashion_mnist", data_dir=prepared)
    assert type(builder) is tfds.image_classification.FashionMNIST
    assert {name: s.num_examples for name, s in builder.info.splits.items()} == {
        "train": NUM_TRAIN,
        "test": NUM_TEST,
    }
    assert builder.info.features["label"].names[:2] == ["T-shirt/top", "Trouser"]
    tfds_own = tfds.image_classification.FashionMNIST(data_dir=str(tmp_path))
    stored = json.loads((version_dir / "features.json").read_text())
    stored_features = tfds.features.FeatureConnector.from_json(stored)
    assert stored_features.to_json() == tfds_own.info.features.to_json()


def test_examples_keyed_by_file_index_as_tfds_does(idx_dir, arrays, tmp_path):
    builder = fashion_mnist.FashionMnist(data_dir=str(tmp_path), idx_dir=idx_dir)
    images_name, labels_name = fashion_mnist.IDX_FILES["test"]
    examples = list(
        builder._generate_examples(NUM_TEST, idx_dir / images_name, idx_dir / labels_name)
    )
    assert [key for key, _ in examples] == list(range(NUM_TEST))
    np.testing.assert_array_equal(np.asarray(examples[7][1]["image"]), arrays["test"][0][7])
    assert examples[7][1]["label"] == arrays["test"][1][7]


def test_debian_dir_or_default_manual_dir_prepare_on_first_use(arrays, tmp_path, monkeypatch):
    monkeypatch.setattr(tfds, "builder", lambda *a, **k: pytest.fail("TFDS download path"))
    debian = tmp_path / "debian"
    _write_idx_dir(debian, arrays)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_IDX_DIR", debian)
    assert _stored(data.load_source("fashion_mnist", "test", str(tmp_path / "a"))) == _expected(
        arrays, "test"
    )
    # TFDS's default manual dir comes first, and may hold the files uncompressed.
    manual = tmp_path / "b" / "downloads" / "manual"
    swapped = {"train": arrays["train"], "test": (arrays["test"][0][::-1], arrays["test"][1][::-1])}
    _write_idx_dir(manual, swapped, compress=False)
    source = data.load_source("fashion_mnist", "test", str(tmp_path / "b"))
    assert _stored(source) == _expected(swapped, "test")


def test_without_files_raises_naming_both_ways(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("TFDS was called")

    monkeypatch.setattr(tfds, "data_source", fail)
    monkeypatch.setattr(tfds, "builder", fail)
    monkeypatch.setattr(fashion_mnist.FashionMnist, "download_and_prepare", fail)
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.load_source("fashion_mnist", "train", str(tmp_path))
    first, *commands = str(error.value).splitlines()
    assert first.startswith(f"fashion_mnist is not prepared as array_record in {tmp_path}")
    assert "Its IDX files are in neither" in commands[0]
    assert "  apt-get install dataset-fashion-mnist" in commands
    assert f"prepare_dataset('fashion_mnist', '{tmp_path}')" in commands[-1]
    assert list(tmp_path.iterdir()) == []


def test_named_manual_dir_must_hold_the_files(idx_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in fashion_mnist.IDX_FILES["train"]:
        (partial / name).write_bytes((idx_dir / name).read_bytes())
    with pytest.raises(data.DatasetNotPreparedError, match="lacks t10k-images-idx3-ubyte.gz"):
        data.prepare_dataset("fashion_mnist", str(tmp_path / "tfds"), manual_dir=str(partial))


def test_without_local_files_prepare_is_tfds_own_download(arrays, tmp_path, monkeypatch):
    # TFDS's registered checksums verify the download.
    assert fashion_mnist.FashionMnist.url_infos == tfds.image_classification.FashionMNIST.url_infos
    raw = tmp_path / "extracted"
    _write_idx_dir(raw, arrays, compress=False)
    requested = []

    def download_and_extract(self, urls):
        requested.extend(urls.values())
        return {key: raw / url.rpartition("/")[2].removesuffix(".gz") for key, url in urls.items()}

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
    # The download is made up, so is the network it needs (offline, its host would not resolve).
    monkeypatch.setattr(datasets, "_check_download_hosts", lambda *args: None)
    mnist_module = sys.modules[tfds.image_classification.FashionMNIST.__module__]
    monkeypatch.setattr(mnist_module, "_TRAIN_EXAMPLES", NUM_TRAIN)
    monkeypatch.setattr(mnist_module, "_TEST_EXAMPLES", NUM_TEST)
    data_dir = str(tmp_path / "tfds")
    data.prepare_dataset("fashion_mnist", data_dir)
    url = tfds.image_classification.FashionMNIST.URL
    assert sorted(requested) == sorted(
        url + name for pair in fashion_mnist.IDX_FILES.values() for name in pair
    )
    assert _stored(data.load_source("fashion_mnist", "train", data_dir)) == _expected(
        arrays, "train"
    )


def test_read_idx_gzipped_or_not_and_rejects_bad_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    (tmp_path / "a").write_bytes(_idx_bytes(array))
    for name in ("a.gz", "a"):
        np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / name), array)
    (tmp_path / "float").write_bytes(bytes([0, 0, 0x0D, 1]) + np.array([1], ">i4").tobytes())
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        fashion_mnist.read_idx(tmp_path / "float")
    (tmp_path / "short").write_bytes(_idx_bytes(array)[:-1])
    with pytest.raises(ValueError, match=r"holds 23 bytes of data, its header says \(2, 3, 4\)"):
        fashion_mnist.read_idx(tmp_path / "short")


def test_bad_labels_are_refused(arrays, tmp_path):
    bad = {"train": (arrays["train"][0], np.full(NUM_TRAIN, 10, np.uint8)), "test": arrays["test"]}
    _write_idx_dir(tmp_path / "idx", bad)
    with pytest.raises(ValueError, match=r"expected \(300,\) in \[0, 10\)"):
        data.prepare_dataset("fashion_mnist", str(tmp_path / "tfds"), str(tmp_path / "idx"))


def test_spec():
    spec = data.get_dataset_spec("fashion_mnist")
    assert "fashion_mnist" in data.DATASET_NAMES
    assert (spec.num_train, spec.num_test, spec.num_classes) == (60_000, 10_000, 10)
    assert spec.image_shape == (28, 28, 1) and spec.horizontal_flip
    assert spec.tfds_name == tfds.image_classification.FashionMNIST.name


def test_prepare_and_train_batches_without_tensorflow(idx_dir, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from recipe import data
        spec = data.get_dataset_spec("fashion_mnist")
        data.prepare_dataset("fashion_mnist", {str(tmp_path)!r}, manual_dir={str(idx_dir)!r})
        source = data.load_source("fashion_mnist", "train", {str(tmp_path)!r})
        batch = next(data.train_batches(source, spec, seed=0, global_batch=32, process_index=0,
                                        process_count=1, local_device_count=1, image_size=14))
        assert batch["image"].shape == (1, 32, 14, 14, 1), batch["image"].shape
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
