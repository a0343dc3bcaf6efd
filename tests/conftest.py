"""Test session setup: four forced CPU devices, so data-parallel code runs for real.

XLA reads the flag when jax initialises its backend, so it is set here, before any test module
imports jax. Single-device tests pick `jax.devices()[:1]`.
"""

import os
import pathlib
import socket

import numpy as np
import pytest
import tiny_config
from etils.epath import gpath

NUM_TEST_DEVICES = 4
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_TEST_DEVICES}"
)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data dir for the session; mnist5k is prepared into it on first use."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture(scope="session")
def finished_run(data_dir, tmp_path_factory):
    """One uninterrupted run of tests/tiny_config.py: (workdir, final eval metrics)."""
    from train import loop  # after XLA_FLAGS is set

    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = loop.train_and_evaluate(tiny_config.make_config(data_dir), str(workdir))
    return workdir, result


def checkpoint_state(workdir: pathlib.Path, step: int) -> dict:
    """The params and optimizer state a run saved at `step`."""
    import orbax.checkpoint as ocp

    path = (workdir / "checkpoints" / str(step) / "state").absolute()
    state = ocp.StandardCheckpointer().restore(path)
    return {"params": state["params"], "opt_state": state["opt_state"]}


GCS_BUCKET = "recipe-test"


@pytest.fixture(scope="session")
def gcs_emulator() -> dict[str, str]:
    """A Cloud Storage emulator on the loopback, in memory, with one bucket: the environment
    that points gcsfs (epath's way to gs:// without TensorFlow), orbax's google-cloud-storage
    client and tensorstore's GCS driver at it. Nothing leaves 127.0.0.1."""
    from gcp_storage_emulator.server import create_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=GCS_BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    yield {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: no credential lookup
        "GOOGLE_CLOUD_PROJECT": "emulator",
        "EPATH_USE_TF": "false",  # TensorFlow's gfile knows no emulator: epath takes gcsfs
    }
    server.stop()


@pytest.fixture
def gcs_workdir(gcs_emulator, tmp_path, monkeypatch) -> str:
    """An empty `gs://` directory on the emulator, reachable through etils.epath in this process.

    epath decides once per process (a cached function) whether TensorFlow's gfile serves gs://;
    here it answers as where TensorFlow is not installed (a Colab TPU runtime, a TPU VM).
    """
    for name, value in gcs_emulator.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    return f"gs://{GCS_BUCKET}/{tmp_path.name}"


def tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard finds in `directory`, read with EventAccumulator.Scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def expected_scalars(records) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard should show for these metrics.jsonl records (float32, as it stores)."""
    from train.metrics import NOT_IN_TENSORBOARD

    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for name, value in record.items():
            if name not in ("step", "kind", *NOT_IN_TENSORBOARD):
                tag = f"{record['kind']}/{name}"
                expected.setdefault(tag, []).append((record["step"], float(np.float32(value))))
    return expected
