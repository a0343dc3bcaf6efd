"""The project as a user gets it: the wheel installs the library alone, which loads a trained
work dir by itself; the trainer runs from the checkout.

The wheel is built from a copy of the checkout (trainer and configs included, to show they stay
out) without build isolation (offline; nothing lands in the checkout) and installed without its
dependencies into a fresh venv that borrows this environment's packages through a `.pth` line.
The library is then used from a directory outside the checkout, so it can only import the
installed wheel.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import core_install
import jax
import numpy as np
import pytest
import tiny_config as tiny
from conftest import xla_flags

from recipe import extras
from train import checkpoints, resolve

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds per subprocess; a tiny run takes ~20 s on an idle 2-core machine


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for name in ("recipe", "train", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheels")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--quiet", "--wheel-dir", str(out), str(source)]
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("large_batch_recipe-*.whl")
    return path


def test_the_wheel_holds_only_the_library(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"recipe"}
    assert "recipe/saved_run.py" in names
    assert not [n for n in names if n.endswith(".dist-info/entry_points.txt")]  # no commands
    # The embedded digits and their license ship with it; their license is named.
    assert {"recipe/data/mnist5k.npz", "recipe/data/mnist5k_LICENSE.txt"} <= set(names)
    assert b"License-Expression: Apache-2.0 AND CC-BY-SA-3.0" in metadata


def test_import_recipe_imports_none_of_the_extras():
    """`import recipe` with the core install alone: none of the extras' packages (measured in
    a fresh venv by `make test-core`; here, where they are installed, none is imported)."""
    result = _run([sys.executable, "-c", core_install.IMPORT_RECIPE])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[1] == "[]"


@pytest.mark.parametrize(
    "code, extra",
    [
        ("sys.modules['grain'] = None\nimport recipe.data", "data"),
        ("sys.modules['tensorboard'] = None\nimport train", "train"),
    ],
    ids=["recipe.data", "train"],
)
def test_a_part_without_its_extra_fails_in_one_line_naming_it(code, extra):
    result = _run([sys.executable, "-c", f"import sys\n{code}"], cwd=REPO)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    package = "grain" if extra == "data" else "tensorboard"
    assert last == (
        f"ImportError: {'recipe.data' if extra == 'data' else 'the trainer (train/)'} needs the "
        f"{extra!r} extra: {package} is not installed; pip install 'large-batch-recipe[{extra}]'"
    )


def test_each_extra_in_pyproject_holds_the_packages_its_part_checks_for():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=;\[ ]", requirement)[0] for requirement in requirements}

    assert set(extras.DATA.values()) <= names(optional["data"])
    assert "large-batch-recipe[data]" in optional["train"]
    assert set(extras.TRAIN.values()) - set(extras.DATA.values()) <= names(optional["train"])
    # The core install: the library's own imports, and none of an extra's packages.
    assert not names(project["dependencies"]) & set(extras.TRAIN.values())


# Run by the venv's Python outside the checkout: the library alone, on one device.
_LOAD_RUN = """
import sys
import numpy as np
import recipe

run = recipe.load_run(sys.argv[1])
images = np.random.default_rng(0).normal(size=(8, *run.image_shape)).astype(np.float32)
logits = run.model.apply(run.variables, images, train=False)
np.save(sys.argv[2], np.asarray(logits))
print(recipe.__file__, run.step)
"""


def test_the_installed_library_loads_a_trained_work_dir(wheel, finished_run, data_dir, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    env_site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    (env_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index"]
        # The borrowed site-packages hold the checkout's editable install of the same version.
        + ["--ignore-installed"]
        + ["--quiet", str(wheel)]
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert sorted(p.name for p in env_site.iterdir() if not p.name.endswith(".pth")) == [
        "large_batch_recipe-" + wheel.name.split("-")[1] + ".dist-info",
        "recipe",
    ]

    run_dir = tmp_path / "elsewhere"  # not the checkout: `python` puts the cwd on sys.path
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    no_trainer = _run([python, "-c", "import train"], cwd=run_dir, env=env)
    assert "No module named 'train'" in no_trainer.stderr
    workdir, _ = finished_run
    logits_path = tmp_path / "logits.npy"
    loaded = _run([python, "-c", _LOAD_RUN, str(workdir), str(logits_path)], cwd=run_dir, env=env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    library, step = loaded.stdout.split()
    assert (library, int(step)) == (str(env_site / "recipe" / "__init__.py"), tiny.TOTAL_STEPS)

    # The trainer's own restore of the same checkpoint gives the same logits.
    setup = resolve.resolve(tiny.make_config(data_dir), jax.device_count())
    _, state = checkpoints.restore_checkpoint(setup, str(workdir))
    images = np.random.default_rng(0).normal(size=(8, *setup.image_shape)).astype(np.float32)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    expected = setup.model.apply(variables, images, train=False)
    np.testing.assert_allclose(np.load(logits_path), expected, rtol=1e-5, atol=1e-6)


def test_python_m_train_runs_the_tiny_config_from_the_checkout(data_dir, tmp_path):
    env = {**os.environ, "XLA_FLAGS": xla_flags(4)}
    trained = _run(
        [sys.executable, "-m", "train", "--config", "tests/tiny_config.py"]
        + [f"--config.data_dir={data_dir}", f"--workdir={tmp_path / 'run'}"],
        cwd=REPO,
        env=env,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "final test accuracy" in trained.stdout, trained.stdout[-3000:]
    assert (tmp_path / "run" / "checkpoints" / str(tiny.TOTAL_STEPS)).is_dir()
