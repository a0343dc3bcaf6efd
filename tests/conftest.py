"""Test session setup: four forced CPU devices, so data-parallel code runs for real.

XLA reads the flag when jax initialises its backend, at the first computation, so it is set
here, at import, before any test runs (importing jax alone starts no backend). Single-device
tests pick `jax.devices()[:1]`.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import sys
import types
from importlib import metadata

import jax
import numpy as np
import pytest
import tiny_config
from etils.epath import gpath
from packaging import version

NUM_TEST_DEVICES = 4
# XLA's CPU backend hands its programs to LLVM, and on the suite's tiny models that is most of
# the compile time, which is most of the suite's time. The tests and the processes they start
# compile at -O1: the same HLO, optimised by XLA as always, only the machine code less tuned.
# Measured, cold cache: one trainer run of tests/tiny_config.py compiled in 13.5 s without the
# flag and 6.1 s with it, with the same metrics to the last printed digit; tests/test_steps.py
# under -n 2 took 173 CPU-s without it and 116 with it. (-O0 compiles faster still but runs the
# Hessian-vector products of the sharpness tests about 2.5 times slower.) Every comparison a test
# makes is between programs compiled alike; benchmarks never use this.
FAST_COMPILE = "--xla_backend_optimization_level=1"
# jaxlib 0.10 (Python 3.11's generation) also emits its fusions through its new MLIR emitters,
# which take a third of its compile time; its older emitters compile the same fused HLO faster.
# Measured on an AMD EPYC 2-core machine, cold cache: the tiny trainer run's programs compiled
# in 14.9 s with them and 10.1 s without; the suite's pytest run took 16 min 48 s and 13 min 52 s.
# jaxlib 0.12 has no such flag (it aborts on unknown XLA flags) and compiled that run in 8.9 s.
# Not with -O0 as well: that pair broke the observers' bitwise equality (tests/test_observers.py).
if version.parse(metadata.version("jaxlib")) < version.parse("0.11"):
    FAST_COMPILE += " --xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int = NUM_TEST_DEVICES) -> str:
    """XLA_FLAGS for the tests and the processes they start: `devices` forced CPU devices,
    compiled fast."""
    return f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"


os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags()}".strip()

# Scripts the tests run by path (tests/train_with_*.py) import the trainer from the checkout, as
# pytest's `pythonpath = ["."]` lets this process: their own sys.path starts at tests/.
REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

# JAX's persistent compilation cache, shared by both pytest-xdist workers and by every trainer,
# notebook and script subprocess the tests start (they inherit this environment): most of the
# suite's time is XLA compiling the same small programs in each of those processes. It lives in
# the checkout's git-ignored .cache/, so a fresh clone (CI) starts cold and measures the cold
# cost. Every program is cached however quickly it compiled (the default skips those under 1 s)
# and however small. A cached executable is the one XLA compiled for the same program, devices
# and flags, so nothing a test asserts changes. jax reads these variables when it is imported.
COMPILATION_CACHE = REPO / ".cache" / "jax"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(COMPILATION_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# This process imported jax before the lines above (tiny_config imports the trainer's schema,
# which imports recipe), so it read none of them: the same settings, given to jax directly.
# Until they were, the two pytest workers compiled every program themselves, sharing nothing.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes",
    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)

# How the suite shares the 2 cores. `make test` runs pytest-xdist's work-stealing scheduler
# (`--dist worksteal`): each of the 2 workers is handed half of the collected tests, in order,
# and one that runs out takes the back half of what the other still has queued. The modules
# whose tests each run for long on 2 cores (`--durations`) lead the halves, longest first. The
# first half starts with those that keep other processes busy (two trainers, a trainer and its
# data workers, a benchmark and its step servers, a notebook kernel, CLI runs, a wheel build);
# the second with those that train and compile in the worker, or in one subprocess at a time:
# run side by side, two of the first kind oversubscribed the cores (longest-first over all
# modules took 2 min longer), while one of each keeps both busy. The short tests fill the
# halves' ends, so what is stolen at the end is short and both workers finish together.
# (xdist's default `--dist load` hands each worker a first chunk of an eighth of the suite and
# never takes it back: the chunk that began in test_models ran last, 23 s after the other worker
# had finished.) test_robustness comes first: it trains `finished_run`, which later ones read.
FIRST_HALF = (
    "test_robustness.py",
    "test_workdir_lock.py",
    "test_bench_device.py",
    "test_imagenet_input.py",
    "test_notebooks.py",
    "test_bad_input.py",
    "test_packaging.py",
    "test_user_data.py",
)
SECOND_HALF = (
    "test_observers.py",
    "test_field_boundaries.py",
    "test_sharpness.py",
    "test_steps.py",
    "test_models.py",
    "test_trainer_modern.py",
    "test_inits.py",
    "test_skipped_updates.py",
    "test_large_batch_run.py",
    "test_metrics.py",
    "test_trainer.py",
    "test_without_tensorflow.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Orders the tests as [FIRST_HALF's modules, other tests | SECOND_HALF's modules, the
    other tests left], each tuple's modules in its order and the other tests in collection
    order, with the bar at the middle: where `--dist worksteal` splits the suite for 2 workers."""

    def ranked(modules: tuple[str, ...]) -> list[pytest.Item]:
        rank = {name: position for position, name in enumerate(modules)}
        chosen = [item for item in items if item.path.name in rank]
        return sorted(chosen, key=lambda item: rank[item.path.name])  # stable: collection order

    first, second = ranked(FIRST_HALF), ranked(SECOND_HALF)
    rest = [item for item in items if item.path.name not in FIRST_HALF + SECOND_HALF]
    fill = max(0, len(items) // 2 - len(first))
    items[:] = first + rest[:fill] + second + rest[fill:]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data dir for the session; mnist5k is prepared into it on first use."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def _finished(flax_api: str, data_dir: str, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """One uninterrupted run of tests/tiny_config.py with its model in `flax_api`: (workdir,
    final eval metrics).

    Run once per session, not once per pytest-xdist worker: the first worker to ask trains it
    in the workers' common temporary directory, under a lock the others wait on. Tests only read
    it or copy it. Its config.json names that worker's data_dir, a field a run may resume with
    another value of.
    """
    from train import loop  # after XLA_FLAGS is set

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    name = "uninterrupted" if flax_api == "linen" else f"uninterrupted_{flax_api}"
    workdir, result_file = shared / name, shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not result_file.exists():
            # plot_curves: test_trainer's plot.
            config = tiny_config.make_config(data_dir, plot_curves=True, flax_api=flax_api)
            result = loop.train_and_evaluate(config, str(workdir))
            result_file.write_text(json.dumps({k: float(v) for k, v in result.items()}))
    return workdir, json.loads(result_file.read_text())


@pytest.fixture(scope="session")
def finished_run(data_dir, tmp_path_factory):
    """The uninterrupted linen run of tests/tiny_config.py: (workdir, final eval metrics)."""
    return _finished("linen", data_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def finished_nnx_run(data_dir, tmp_path_factory):
    """The same with `flax_api='nnx'` (the NNX model's own initial weights)."""
    return _finished("nnx", data_dir, tmp_path_factory)


@contextlib.contextmanager
def visible_devices(count: int):
    """Within the block, jax shows the first `count` of the test's devices (the trainer maps
    over all it sees)."""
    if count == NUM_TEST_DEVICES:
        yield
        return
    devices = jax.devices()[:count]
    with pytest.MonkeyPatch.context() as patch:
        for name in ("devices", "local_devices"):
            patch.setattr(jax, name, lambda *args, **kwargs: devices)
        for name in ("device_count", "local_device_count"):
            patch.setattr(jax, name, lambda *args, **kwargs: count)
        yield


def checkpoint_state(workdir: pathlib.Path, step: int) -> dict:
    """The params and optimizer state a run saved at `step`."""
    import orbax.checkpoint as ocp

    path = (workdir / "checkpoints" / str(step) / "state").absolute()
    state = ocp.StandardCheckpointer().restore(path)
    return {"params": state["params"], "opt_state": state["opt_state"]}


GCS_BUCKET = "recipe-test"


@pytest.fixture(scope="session")
def gcs_emulator() -> dict[str, str]:
    """A Cloud Storage emulator on the loopback, in memory, with one bucket (and the object
    generations tensorstore needs: tests/gcs_emulator.py): the environment that points gcsfs
    (epath's way to gs:// without TensorFlow), orbax's google-cloud-storage client and
    tensorstore's GCS driver at it. Nothing leaves 127.0.0.1."""
    from gcs_emulator import create_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, default_bucket=GCS_BUCKET)
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
    """Every scalar TensorBoard finds in `directory`, read with EventAccumulator.Scalars.

    Read as TensorBoard reads without TensorFlow (`pip install tensorboard` alone): through its
    own file reader, forced by the `tensorboard.compat.notf` module it looks for. Where
    TensorFlow is installed TensorBoard reads through TensorFlow's gfile instead, and importing
    TensorFlow cost the test process 10-14 s (measured: 23.2 -> 8.7 s for the sharpness run's
    test, alone). The trainer writes without TensorFlow either way (train/metrics.py).
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
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
