"""The documentation: an API page for every public name, and guide examples that run.

Both read the sources in docs/ (and README.md), not a built site: `make docs` builds it, and that
takes a minute. A Python block in a guide runs here, in order with the page's other blocks, and
what its comments say a `print` shows is compared with what it printed. A block that cannot run
in the tests opens with a `# not run: <why>` line.
"""

import pathlib
import pkgutil

import pytest
from doc_examples import NOT_RUN, documented_output, python_blocks, run_examples

import recipe
import recipe.data
import recipe.nnx

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_INDEX = DOCS / "api" / "index.rst"


def autosummary_entries(text: str) -> list[str]:
    """The names listed under `.. autosummary::` directives that have a `:toctree:` (a page
    each), in order."""
    entries, in_block, has_toctree = [], False, False
    for line in text.splitlines():
        if line.startswith(".. autosummary::"):
            in_block, has_toctree = True, False
        elif in_block and line.strip().startswith(":toctree:"):
            has_toctree = True
        elif in_block and line.startswith("   ") and not line.strip().startswith(":"):
            if has_toctree:
                entries.append(line.strip())
        elif in_block and line.strip():
            in_block = False
    return entries


def test_autosummary_entries_reads_only_lists_with_pages():
    text = (
        ".. autosummary::\n   :toctree: p\n\n   a.b\n   a.c\n\ntext\n\n.. autosummary::\n\n   a.d\n"
    )
    assert autosummary_entries(text) == ["a.b", "a.c"]


def test_every_public_name_and_data_module_has_an_api_page():
    documented = set(autosummary_entries(API_INDEX.read_text()))
    public = {f"recipe.{name}" for name in recipe.__all__}
    public |= {f"recipe.nnx.{name}" for name in recipe.nnx.__all__}
    data_modules = {
        f"recipe.data.{module.name}"
        for module in pkgutil.iter_modules(recipe.data.__path__)
        if not module.name.startswith("_")
    }
    assert public - documented == set(), "add them to docs/api/index.rst"
    assert data_modules - documented == set(), "add them to docs/api/index.rst"


GUIDES = sorted(p for p in DOCS.glob("*.md") if python_blocks(p)) + [ROOT / "README.md"]


def test_documented_output_reads_inline_and_following_comments():
    code = "x = 1\nprint(x)  # 1\nprint(x, x)\n# 1\n#   1\ny = 2\n"
    assert documented_output(code) == "1 1   1"
    assert documented_output("print(1)\nprint(2)  # 2\n") is None


def test_every_guide_example_runs_or_says_why_not():
    assert len(GUIDES) >= 6
    for path in GUIDES:
        for number, code in python_blocks(path):
            first = code.splitlines()[0]
            if first.startswith(NOT_RUN):
                assert len(first) > len(NOT_RUN) + 5, f"{path}:{number}: say why it cannot run"


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_guide_examples_run_and_print_what_they_say(path):
    run_examples(path)
