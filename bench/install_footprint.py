"""BENCHMARKS.md section 11: what installing and importing the library costs a Flax project.

Packages: `pip install --dry-run --report` of each install into an empty venv of this Python
(pip upgraded first), counting the packages pip would install besides the project itself: jax,
flax, optax, chex and numpy alone (the reference a Flax project already pays), the core install
(`pip install large-batch-recipe`), and the `data` and `train` extras. The core install's target:
the reference and at most two packages more. Python 3.11's requirements carry the project's
ml_dtypes cap (pyproject.toml), given to the reference too.

Import time: the core install, installed into that venv (nothing else), then `python -X
importtime -c "import recipe"` run `--runs` times from outside the checkout, interleaved with
`import jax` alone; the cumulative times (median and quartiles), and the extras' modules it
imported (none expected).

    python -m bench.install_footprint [--runs 9] [--no-write]   # make footprint
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

REFERENCE = ["jax>=0.10.2", "flax>=0.12.8", "optax>=0.2.8", "chex>=0.1.92", "numpy>=2.4.6"]
INSTALLS = {
    # name: pip requirements ('.' is this checkout)
    "jax, flax, optax, chex, numpy": REFERENCE,
    "core (`pip install large-batch-recipe`)": ["."],
    "`data` extra": [".[data]"],
    "`train` extra": [".[train]"],
}
EXTRA_PACKAGES_ALLOWED = 2
PROJECT = "large-batch-recipe"


def _pip(python: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=common.ROOT,
        check=True,
    )


def packages(python: Path, requirements: list[str], report: Path) -> list[str]:
    """The packages `pip install requirements` would install into the venv, the project
    excluded."""
    _pip(python, "install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report),
         *requirements)  # fmt: skip
    installed = json.loads(report.read_text())["install"]
    return sorted(
        item["metadata"]["name"] for item in installed if item["metadata"]["name"] != PROJECT
    )


def _cumulative(python: Path, module: str, cwd: Path) -> float:
    """Seconds of `import module` in a fresh interpreter: importtime's cumulative time."""
    result = subprocess.run(
        [str(python), "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    line = result.stderr.strip().splitlines()[-1]  # "import time: self | cumulative | module"
    assert line.rstrip().endswith(f"| {module}"), line
    return int(line.split("|")[1]) / 1e6


def import_times(python: Path, runs: int, cwd: Path) -> tuple[dict[str, list[float]], list[str]]:
    """Seconds of `import recipe` and, interleaved with it, of `import jax` alone, per run;
    and the modules of the extras (recipe.extras.TRAIN), TensorFlow and flax.nnx that
    `import recipe` imported."""
    times: dict[str, list[float]] = {"recipe": [], "jax": []}
    for _ in range(runs):
        for module in times:
            times[module].append(_cumulative(python, module, cwd))
    probe = (
        "import json, sys, recipe; from recipe import extras; print(json.dumps("
        "[m for m in (*extras.TRAIN, 'tensorflow', 'flax.nnx') if m in sys.modules]))"
    )
    loaded = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, cwd=cwd, check=True
    ).stdout
    return times, json.loads(loaded)


def measure(runs: int) -> dict:
    info = common.machine()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        _pip(python, "install", "--quiet", "--upgrade", "pip")
        pip_version = _pip(python, "--version").stdout.split()[1]
        requirements = {
            name: [*spec, *(["ml_dtypes<0.7"] if sys.version_info < (3, 12) else [])]
            if spec is REFERENCE
            else spec
            for name, spec in INSTALLS.items()
        }
        counted = {
            name: packages(python, spec, Path(tmp) / "report.json")
            for name, spec in requirements.items()
        }
        _pip(python, "install", "--quiet", ".")  # the core install, for the import
        times, heavy = import_times(python, runs, Path(tmp))
    return {
        "machine": info,
        "pip": pip_version,
        "requirements": requirements,
        "packages": counted,
        "import_s": times,
        "heavy_imported": heavy,
        "elapsed_s": time.perf_counter() - start,
    }


def section(result: dict) -> str:
    m, counted = result["machine"], result["packages"]
    names = list(counted)
    reference, core = len(counted[names[0]]), len(counted[names[1]])
    target = reference + EXTRA_PACKAGES_ALLOWED
    core_only = sorted(set(counted[names[1]]) - set(counted[names[0]]))
    not_brought = sorted(set(counted[names[0]]) - set(counted[names[1]]))
    times, jax_times = result["import_s"]["recipe"], result["import_s"]["jax"]
    low, high = common.quartiles(times)
    rows = [[name, len(counted[name]), ", ".join(result["requirements"][name])] for name in names]
    return "\n".join(
        [
            "## 11. Install footprint: what the library costs a Flax project",
            "",
            "Re-run: `make footprint` (or `.venv/bin/python -m bench.install_footprint`); "
            f"{m['cpu']} ({m['cores']} cores), Python {m['python']}, pip {result['pip']}, "
            f"{m['date']}, load average {m['load_before']} at the start; "
            f"{result['elapsed_s'] / 60:.1f} min.",
            "",
            "**Packages**: `pip install --dry-run --report` into an empty venv, the packages pip "
            "would install besides the project itself (the index's newest releases the floors "
            "allow).",
            "",
            common.md_table(["install", "packages", "requirements"], rows),
            "",
            f"The core install: {core} packages against the reference's {reference} (target: "
            f"at most {target}, the reference and {EXTRA_PACKAGES_ALLOWED} more): "
            f"{', '.join(core_only) or 'nothing'} more"
            + (f", and not {', '.join(not_brought)} (the library does not use "
               "them; optax no longer requires chex)" if not_brought else "")
            + f". {'Met' if core <= target else 'Missed'}. The packages: "
            f"{', '.join(counted[names[1]])}.",
            "",
            f"**`import recipe`** with the core install alone, `python -X importtime -c "
            f"\"import recipe\"` from outside the checkout, {len(times)} runs: "
            f"**{common.median(times):.2f} s** cumulative (quartiles {low:.2f}–{high:.2f} s), "
            f"of which `import jax` alone, interleaved with it, takes "
            f"{common.median(jax_times):.2f} s. The extras' modules, TensorFlow and flax.nnx "
            f"imported: {', '.join(result['heavy_imported']) or 'none'}. "
            "(`make test-core` checks that on every CI run, with docs/flax_project.md's "
            "examples.)",
        ]
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    args = parser.parse_args()
    result = measure(args.runs)
    text = section(result)
    print(text)
    if not args.no_write:
        common.publish("install_footprint", result, text)


if __name__ == "__main__":
    main()
