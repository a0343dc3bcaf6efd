"""Sphinx configuration of the documentation site (`make docs`).

The guides are MyST Markdown, the three notebooks in colab/ are executed at their small size and
rendered with their outputs, and the API reference is generated from the
docstrings (autodoc, autosummary; napoleon reads their Google-style sections). Nothing is
fetched at build time: the site builds offline.

The guides are written to read on GitHub too, where the README links them: plain Markdown links
(`[The trainer](trainer.md)`, `` [`recipe.goyal_sgd`](#recipe.goyal_sgd) ``, which MyST resolves
to the API page) and no directives. Where they link a file of the repository that the site
holds under another name (BENCHMARKS.md, the notebooks in colab/), `_site_links` rewrites the
link for the site; the site's copy of BENCHMARKS.md is a page generated at build time.
"""

import atexit
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the library of this checkout, not another installed copy

project = "recipe"
author = "the recipe authors"
copyright = "the recipe authors"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# .rst first: autosummary writes its generated pages with the first suffix, and writes reST.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_templates", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# The notebooks are executed at build time, at their small size (RECIPE_SMALL_RUN=1: the MNIST-5k
# digits embedded in the package, a few dozen updates, no network), so that their pages show the
# figures and printed results of this checkout's code, as the Flax and optax sites do. Their
# kernel is a `python3` of this interpreter that starts in the repository's root, where the
# notebooks find the trainer as in a Colab checkout (myst-nb starts it in docs/notebooks/); it
# inherits the environment set here: notebook 1 runs its trainer over 4 forced CPU devices, as
# on a TPU with 4 cores, and TFDS writes the embedded dataset into a temporary directory. A cell
# that raises fails the build. The tests run them too (tests/test_notebooks.py), offline.
_KERNELS = pathlib.Path(tempfile.mkdtemp(prefix="recipe-docs-jupyter-"))
atexit.register(shutil.rmtree, _KERNELS, ignore_errors=True)
(_KERNELS / "kernels" / "python3").mkdir(parents=True)
(_KERNELS / "kernels" / "python3" / "kernel.json").write_text(
    json.dumps(
        {
            "argv": [
                sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                f"--IPKernelApp.exec_lines=import os; os.chdir({str(ROOT)!r})",
            ],
            "display_name": "Python 3",
            "language": "python",
        }
    )
)  # fmt: skip
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    filter(None, [str(_KERNELS), os.environ.get("JUPYTER_PATH")])
)
os.environ["RECIPE_SMALL_RUN"] = "1"
if "TFDS_DATA_DIR" not in os.environ:
    os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="recipe-docs-tfds-")
    atexit.register(shutil.rmtree, os.environ["TFDS_DATA_DIR"], ignore_errors=True)
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=4"]
).strip()
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
nb_execution_mode = "force"
nb_execution_timeout = 600  # seconds per cell
nb_execution_raise_on_error = True
nb_output_stderr = "remove"  # progress bars and library logs, not results

myst_heading_anchors = 3  # links such as ../BENCHMARKS.md#5-goyal-et-al-table-1-...

autosummary_generate = True
autodoc_default_options = {"members": True}
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attributes sections as fields: autodoc documents the attributes themselves.
napoleon_use_ivar = True
# The docstrings write names in single backquotes: link them where Sphinx knows the name.
default_role = "py:obj"

html_theme = "sphinx_book_theme"
html_title = "recipe"
html_theme_options = {
    "repository_url": "https://github.com/recipe-jax/recipe",
    "use_repository_button": True,
    "path_to_docs": "docs",
}  # no launch buttons: docs/notebooks/ holds links; each notebook has its own Colab badge

# A reference to a name of this library that does not resolve fails the build; names of other
# libraries (jax, optax, flax) are left as code, since the build reads no other site (offline).
# Text in backquotes that is code rather than a name (`recipe.f(x)`) is left alone too.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?s)(?!recipe(\.\w+)*$).*")]


def _public_name(app, env, node, contnode):
    """`goyal_schedule` in a docstring of recipe.schedules is recipe.schedules.goyal_schedule:
    the API reference documents it where users import it, as recipe.goyal_schedule."""
    import recipe

    target = node.get("reftarget", "")
    module, _, name = target.rpartition(".")
    if (
        node.get("refdomain") != "py"
        or not module.startswith("recipe.")
        or name not in recipe.__all__
    ):
        return None
    node["reftarget"] = f"recipe.{name}"
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], node["reftarget"], node, contnode
    )


# Links to repository files outside docs/ (for GitHub), and the site's pages of those files: a
# link to BENCHMARKS.md (section anchors included), and one to a notebook in colab/ (the site's
# docs/notebooks/ are links to them, which a link by path would follow out of the site).
SITE_LINKS = (
    (re.compile(r"\]\(\.\./BENCHMARKS\.md"), "](benchmarks_results.md"),
    (re.compile(r"\[([^\]]+)\]\(\.\./colab/([\w-]+)\.ipynb\)"), r"{doc}`\1 <notebooks/\2>`"),
)
# BENCHMARKS.md as a page of the site (git-ignored; GitHub shows BENCHMARKS.md itself).
BENCHMARKS_PAGE = pathlib.Path(__file__).parent / "benchmarks_results.md"
BENCHMARKS_INCLUDE = """```{include} ../BENCHMARKS.md
:relative-images:
:relative-docs: ../
```
"""


def _site_links(app, docname, source):
    """A guide's links to BENCHMARKS.md and colab/ become links to the site's pages of them."""
    for link, site_link in SITE_LINKS:
        source[0] = link.sub(site_link, source[0])


def _write_benchmarks_page(app):
    if not BENCHMARKS_PAGE.exists() or BENCHMARKS_PAGE.read_text() != BENCHMARKS_INCLUDE:
        BENCHMARKS_PAGE.write_text(BENCHMARKS_INCLUDE)


def setup(app):
    app.connect("builder-inited", _write_benchmarks_page)
    app.connect("source-read", _site_links)
    app.connect("missing-reference", _public_name)
