"""Test session setup: four forced CPU devices, so data-parallel code runs for real.

XLA reads the flag when jax initialises its backend, so it is set here, before any test module
imports jax. Single-device tests pick `jax.devices()[:1]`.
"""

import os

NUM_TEST_DEVICES = 4
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_TEST_DEVICES}"
)
