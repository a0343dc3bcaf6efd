"""The core install, checked where it is all there is (`make test-core`, CI's .ci/run).

Run with the Python of a fresh venv holding `pip install .` and nothing else, from outside the
checkout (so that `import recipe` is the installed one). It checks that `import recipe` works
and imports none of the extras' packages, that `recipe.data` and the trainer each refuse in one
line naming their extra, and runs every Python example of docs/flax_project.md (what the
documentation promises a Flax project with the library alone). Exits non-zero on the first
failure. Standard library only, besides the core install (no pytest).
"""

import pathlib
import subprocess
import sys

from doc_examples import run_examples

from recipe import extras

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What `import recipe` must never import: the extras' packages, TensorFlow, and flax.nnx (loaded
# by `import recipe.nnx` only).
HEAVY = (*extras.TRAIN, "tensorflow", "flax.nnx")


def _run(code: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300
    )


# Prints where `recipe` was imported from, then the modules of HEAVY it imported.
IMPORT_RECIPE = (
    "import sys, recipe; print(recipe.__file__); "
    f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
)


def main() -> None:
    light = _run(IMPORT_RECIPE)
    assert light.returncode == 0, light.stderr
    location, loaded = light.stdout.splitlines()
    assert "site-packages" in location, f"not the installed library: {location}"
    assert loaded == "[]", f"import recipe imported {loaded}"
    print(f"import recipe: {location}, none of the extras' packages imported")

    for code, extra, cwd in (("import recipe.data", "data", None), ("import train", "train", ROOT)):
        refused = _run(code, cwd)
        last = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode != 0 and f"pip install 'large-batch-recipe[{extra}]'" in last, (
            refused.stderr
        )
        print(f"{code}: {last}")

    ran = run_examples(ROOT / "docs" / "flax_project.md")
    print(f"docs/flax_project.md: {ran} examples ran and printed what they say")


if __name__ == "__main__":
    main()
