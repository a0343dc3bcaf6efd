"""The Colab notebooks: saved clean, and run to the end on CPU with the small-run switch on.

Each notebook is executed with nbclient in a fresh IPython kernel of *this* interpreter (a
kernelspec written to a temporary JUPYTER_PATH, so no system-wide `python3` kernel can take
over), from the repository root, with `RECIPE_SMALL_RUN=1`: MNIST-5k embedded in the package
instead of CIFAR-10, tiny models, a few dozen updates, no network. A cell that raises fails the
test with the cell's traceback.

The kernels get the test session's four forced CPU devices (conftest.xla_flags, set explicitly
here), so notebook 1 runs the trainer under pmap over 4 devices, as on a TPU with 4 cores;
notebooks 2 and 3 use one device. TFDS writes the embedded dataset to a temporary directory, where
notebook 1 finds no CIFAR-10 and takes its labelled fallback. A `sitecustomize` refuses every
host name but the loopback's to Python's resolver, so a notebook that reaches for the network
fails.
"""

import json
import os
import pathlib
import sys
import time

import nbformat
import pytest
from conftest import xla_flags
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = (
    "01_train_on_tpu.ipynb",
    "02_recipe_in_your_flax_project.ipynb",
    "03_warmup_explained.ipynb",
)
BADGE_URL = "https://colab.research.google.com/github/recipe-jax/recipe/blob/main/colab/{}"
# What each notebook's install cell installs: the extra it uses (notebook 1 runs the trainer).
INSTALL_SPEC = "large-batch-recipe[{}] @ git+https://github.com/recipe-jax/recipe"
EXTRAS = {NOTEBOOKS[0]: "train", NOTEBOOKS[1]: "data", NOTEBOOKS[2]: "data"}
CELL_TIMEOUT_S = 300
KERNEL_NAME = "python3"
NO_NETWORK = """
import socket

_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
    if host not in (None, "", "localhost", "::1") and not str(host).startswith("127."):
        raise OSError(f"a test notebook tried to reach {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_only
"""


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(COLAB / name, as_version=4)


def test_the_colab_folder_holds_exactly_the_three_notebooks():
    assert sorted(p.name for p in COLAB.glob("*.ipynb")) == list(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_saved_clean_with_badge_install_and_parameters(name):
    nb = _read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell was saved with outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"

    badge, install = nb.cells[0], nb.cells[1]
    assert badge.cell_type == "markdown"
    assert badge.source.startswith("[![Open In Colab](")
    assert f"]({BADGE_URL.format(name)})" in badge.source

    # The install cell is plain Python (it runs under nbclient too), installs the extra the
    # notebook uses, and skips pip when `recipe` and that extra's packages are importable.
    assert install.cell_type == "code"
    assert "if any(importlib.util.find_spec(module) is None for module in MODULES):" in (
        install.source
    )
    assert '"recipe", "grain"' in install.source
    assert INSTALL_SPEC.format(EXTRAS[name]) in install.source

    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1
    assert 'SMALL_RUN = os.environ.get("RECIPE_SMALL_RUN") == "1"' in parameters[0].source


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment of the kernels, and a `python3` kernelspec that runs sys.executable."""
    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 ({sys.executable})",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    no_network = tmp_path_factory.mktemp("no_network")
    (no_network / "sitecustomize.py").write_text(NO_NETWORK)
    env = dict(os.environ)
    env.update(
        RECIPE_SMALL_RUN="1",
        JUPYTER_PATH=str(jupyter_path),
        TFDS_DATA_DIR=str(tmp_path_factory.mktemp("tensorflow_datasets")),
        XLA_FLAGS=xla_flags(4),
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(no_network), str(ROOT), os.environ.get("PYTHONPATH")])
        ),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def test_the_kernel_runs_this_interpreter(kernel_env, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", kernel_env["JUPYTER_PATH"])
    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert spec.argv[0] == sys.executable


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_to_the_end_with_the_small_run_switch(name, kernel_env, monkeypatch):
    # The kernelspec manager reads JUPYTER_PATH from this process when the client starts.
    monkeypatch.setenv("JUPYTER_PATH", kernel_env["JUPYTER_PATH"])
    nb = _read(name)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(ROOT)}},
    )
    start = time.perf_counter()
    client.execute(env=kernel_env)  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.1f} s")

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{name} shows no plot"
    if name == "01_train_on_tpu.ipynb":  # offline, without CIFAR-10: the fallback, labelled
        text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
        assert "FALLBACK to the default recipe on the MNIST-5k digits" in text
        assert "FALLBACK: MNIST-5k, not CIFAR-10 (small run: a tiny model" in text
        assert "final test accuracy" in text.split("FALLBACK: MNIST-5k, not CIFAR-10")[-1]
