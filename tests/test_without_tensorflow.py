"""Without TensorFlow (a Colab TPU runtime, googlecolab/colabtools#5164): what works, what says why.

TFDS prepares cifar10 with TensorFlow (it encodes the images as PNG) but reads the prepared
array_record files without it (PIL or OpenCV decode the images). Here the real cifar10 builder
prepares a few made-up images (its download replaced by files in CIFAR-10's binary format), and a
subprocess that sees this environment's packages but TensorFlow's (so `import tensorflow` fails
as where it is not installed) reads them back, images included, and prepares the embedded
mnist5k from scratch.
"""

import json
import os
import site
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import xla_flags

from recipe.data import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds per subprocess
TRAIN_PER_FILE, NUM_TEST = 2, 4
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
LABEL_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()
TENSORFLOW_PREFIXES = ("tensorflow-", "tensorflow_cpu", "tensorflow_io")  # dist-info, plugins


def _write_cifar10_binary(root: Path, rng: np.random.Generator) -> dict[str, list]:
    """CIFAR-10's binary layout: per image 1 label byte, then 1024 R, 1024 G, 1024 B bytes."""
    batches = root / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    (batches / "batches.meta.txt").write_text("\n".join(LABEL_NAMES) + "\n")
    images: dict[str, list] = {"train": [], "test": []}
    for split, files, count in (
        ("train", TRAIN_FILES, TRAIN_PER_FILE),
        ("test", ["test_batch.bin"], NUM_TEST),
    ):
        for name in files:
            records = []
            for _ in range(count):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                label = int(rng.integers(0, 10))
                images[split].append((image.tolist(), label))
                records.append(bytes([label]) + image.transpose(2, 0, 1).tobytes())
            (batches / name).write_bytes(b"".join(records))
    return images


@pytest.fixture(scope="module")
def prepared_cifar10(tmp_path_factory) -> tuple[str, dict[str, list]]:
    """A data dir with cifar10 prepared (TensorFlow encodes here), and the images written."""
    root = tmp_path_factory.mktemp("cifar10_download")
    images = _write_cifar10_binary(root, np.random.default_rng(0))
    data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", return_value=str(root)
    ):
        prepare_dataset("cifar10", data_dir)
    return data_dir, images


def _run_without_tensorflow(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Runs `code` with this environment's packages, less TensorFlow's, and this checkout."""
    packages = tmp_path / "site-packages-without-tensorflow"
    packages.mkdir()
    for site_dir in map(Path, site.getsitepackages()):
        for entry in site_dir.iterdir():
            if entry.name != "tensorflow" and not entry.name.startswith(TENSORFLOW_PREFIXES):
                (packages / entry.name).symlink_to(entry)
    script = tmp_path / "without_tensorflow.py"
    script.write_text("import sys\n" + code)
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "PYTHONPATH": f"{packages}{os.pathsep}{REPO}"}
    return subprocess.run(
        [sys.executable, "-S", str(script)],  # -S: no site-packages but those on PYTHONPATH
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_prepared_images_and_the_embedded_dataset_read_without_tensorflow(
    prepared_cifar10, tmp_path
):
    data_dir, written = prepared_cifar10
    mnist_dir = tmp_path / "fresh_data_dir"
    result = _run_without_tensorflow(
        f"""
import json
from recipe.data import get_dataset_spec, load_source, eval_batches

out = {{}}
for split in ("train", "test"):
    source = load_source("cifar10", split, {data_dir!r})
    examples = [source[i] for i in range(len(source))]
    out[split] = sorted(
        (int(e["id"].decode().split("_")[1]), e["image"].tolist(), int(e["label"]))
        for e in examples
    )
    batch = next(eval_batches(source, get_dataset_spec("cifar10"), global_batch=len(source),
                              process_index=0, process_count=1, local_device_count=1))
    assert batch["image"].shape == (1, len(source), 32, 32, 3), batch["image"].shape
    assert batch["label"][0].tolist() == [int(e["label"]) for e in examples]
mnist = load_source("mnist5k", "test", {str(mnist_dir)!r})
out["mnist5k"] = [len(mnist), mnist[0]["image"].shape]
try:
    import tensorflow
    out["tensorflow"] = True
except ModuleNotFoundError:
    out["tensorflow"] = False
print("RESULT", json.dumps(out))
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT ", 1)[1])
    for split in ("train", "test"):
        assert [[image, label] for _, image, label in out[split]] == [
            list(pair) for pair in written[split]
        ]
    assert out["mnist5k"] == [1000, [28, 28, 1]]
    assert out["tensorflow"] is False
    # The first-run message of the embedded dataset, instead of TFDS's download banner.
    assert f"preparing the embedded dataset mnist5k (no download) in {mnist_dir}" in result.stdout
    assert "Downloading" not in result.stdout


def test_preparing_cifar10_without_tensorflow_says_how_to_get_it(tmp_path):
    result = _run_without_tensorflow(
        f"""
from recipe.data import prepare_dataset
try:
    prepare_dataset("cifar10", {str(tmp_path / "data")!r})
except ImportError as error:
    print("REFUSED", error)
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout.split("REFUSED ", 1)[1]
    assert message.startswith("preparing cifar10 needs TensorFlow")
    assert "pip install 'large-batch-recipe[prepare]'" in message
    assert not (tmp_path / "data" / "downloads").exists()  # refused before downloading
