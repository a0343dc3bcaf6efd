"""bench/device.py: the GPU benchmark's code path, at tiny sizes on the CPU (`--smoke`), so that it
cannot rot between the times a GPU machine is at hand; and its import check.

The smoke run covers every JAX part. Its PyTorch half runs where torch is installed (`make
bench`'s venv); the suite's venv has no torch, and there that test is skipped, saying so."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import xla_flags

from bench import common, device

ROOT = pathlib.Path(__file__).resolve().parent.parent


TORCH_INSTALLED = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir) -> tuple[pathlib.Path, str]:
    """(its --out directory, BENCHMARKS.md before it): one smoke run, which the tests read."""
    benchmarks_before = common.BENCHMARKS_MD.read_text()
    # One CPU device, as the GPU machine has one GPU; a smoke run, so compiled fast like the suite.
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = tmp_path_factory.mktemp("bench_device") / "out"
    command = [sys.executable, "-m", "bench.device", "--smoke", "--out", str(out),
               "--data-dir", data_dir]  # fmt: skip
    proc = subprocess.run(
        ["timeout", "-s", "KILL", "850", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, benchmarks_before


@pytest.mark.timeout(900)  # about 140 CPU-seconds: minutes on a loaded 2-core machine
def test_smoke_run_measures_every_jax_part_and_writes_only_its_output(smoke_run):
    """Every part, the default config's pair of steps included; the PyTorch half is the next
    test's."""
    out, benchmarks_before = smoke_run
    result = json.loads((out / "device.json").read_text())
    steps = result["steps"]
    assert steps["failed"] == {}
    assert steps["rounds"] == device.SMOKE.rounds
    assert steps["batch"] == device.SMOKE.max_batch
    jax_steps = {name for name in steps["steps"] if name.startswith("jax ")}
    assert jax_steps == {
        "jax full/float32",
        "jax bare/float32",
        "jax full/bfloat16",
        "jax jit/float32",
        "jax default full",
        "jax default bare",
    }
    assert all(len(t) == device.SMOKE.rounds and min(t) > 0 for t in steps["steps"].values())
    assert ("torch_skipped" in result) == (not TORCH_INSTALLED)

    runs = result["input"]["runs"]
    assert [run["workers"] for run in runs] == list(device.SMOKE.workers)
    assert all(run["images_per_s"] > 0 for run in runs)

    train = result["train"]
    assert train["returncode"] == 0, train["stderr_tail"]
    assert 0.0 <= train["final_eval"]["accuracy"] <= 1.0
    assert train["train_steps"] == 8  # two epochs of 4,000 examples in batches of 1,000

    section = (out / "BENCHMARKS.md").read_text()
    assert "<!-- BEGIN device -->" in section and "**Smoke run**" in section
    for part in ("### 1. Train step", "### 2. The recipe's overhead", "### 3. JPEG input",
                 "### 4. configs/default.py end to end"):  # fmt: skip
        assert part in section
    # The default pair's rows, and its overhead measured (a ratio, not "–").
    assert "configs/default.py's full step" in section
    assert re.search(r"configs/default\.py's model \(resnet8, width 4, 8 a batch\) \*\*\d", section)
    assert common.BENCHMARKS_MD.read_text() == benchmarks_before


@pytest.mark.skipif(
    not TORCH_INSTALLED,
    reason="torch is not installed: the bench extra brings it (make bench); the suite's venv "
    "has none, so the smoke run's PyTorch half runs only where it is",
)
def test_smoke_run_times_the_pytorch_half(smoke_run):
    out, _ = smoke_run
    result = json.loads((out / "device.json").read_text())
    assert "torch_skipped" not in result
    times = result["steps"]["steps"]
    assert {name for name in times if name.startswith("torch ")} == {
        "torch full/float32",
        "torch full/bfloat16",
    }
    assert all(len(times[name]) == device.SMOKE.rounds for name in times)


def test_missing_imports_are_named_in_one_line_with_how_to_bring_them(monkeypatch):
    real_find_spec = device.importlib.util.find_spec

    def find_spec(name):  # grain, promise and torchvision absent, torch present
        if name in ("grain", "promise", "torchvision"):
            return None
        return object() if name == "torch" else real_find_spec(name)

    monkeypatch.setattr(device.importlib.util, "find_spec", find_spec)
    assert device.missing_imports(smoke=True) == {
        "grain": "grain==0.2.18",
        "promise": "promise==2.3",
    }
    missing = device.missing_imports(smoke=False)
    assert missing["torchvision"] == "torchvision"
    line = device.missing_line(missing)
    assert "\n" not in line
    assert "grain==0.2.18, promise==2.3, torchvision" in line
    assert "make device-wheels" in line and "pip install torchvision" in line


def test_wheels_are_pinned_for_the_gpu_machine():
    assert all("==" in requirement for requirement in device.WHEELS.values())
    assert set(device.BUILT_HERE) <= set(device.WHEELS)
