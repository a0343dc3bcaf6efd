"""Test session setup: four forced CPU devices, so data-parallel code runs for real.

XLA reads the flag when jax initialises its backend, so it is set here, before any test module
imports jax. Single-device tests pick `jax.devices()[:1]`.
"""

import os
import pathlib

import fsspec
import pytest
import tiny_config
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

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
    from recipe.train import trainer  # after XLA_FLAGS is set

    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = trainer.train_and_evaluate(tiny_config.make_config(data_dir), str(workdir))
    return workdir, result


def checkpoint_state(workdir: pathlib.Path, step: int) -> dict:
    """The params and optimizer state a run saved at `step`."""
    import orbax.checkpoint as ocp

    path = (workdir / "checkpoints" / str(step) / "state").absolute()
    state = ocp.StandardCheckpointer().restore(path)
    return {"params": state["params"], "opt_state": state["opt_state"]}


class FakeGCS(MemoryFileSystem):
    """fsspec's in-memory filesystem answering for `gs://`, and like GCS unable to append."""

    protocol = ("gs", "gcs")
    root_marker = ""
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.strip("/")

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError("GCS objects cannot be appended to")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def fake_gcs(monkeypatch) -> FakeGCS:
    """`gs://` paths of etils.epath go to an empty in-memory store (no network, no TensorFlow).

    epath reaches gs:// through fsspec where TensorFlow is not installed (a Colab TPU runtime, a
    TPU VM with jax[tpu] only) or EPATH_USE_TF is false; it decides once per process (a cached
    function), so the test makes that function answer as on such a machine.
    """
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)
    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    return FakeGCS()
