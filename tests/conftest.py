"""Test session setup: four forced CPU devices, so data-parallel code runs for real.

XLA reads the flag when jax initialises its backend, so it is set here, before any test module
imports jax. Single-device tests pick `jax.devices()[:1]`.
"""

import os
import pathlib

import pytest
import tiny_config

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
