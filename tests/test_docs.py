"""The documentation: an API page for every public name, and guide examples that run.

Both read the sources in docs/ (and README.md), not a built site: `make docs` builds it, and that
takes a minute. A Python block in a guide runs here, in order with the page's other blocks, and
what its comments say a `print` shows is compared with what it printed. A block that cannot run
in the tests opens with a `# not run: <why>` line. A block that opens with `AFTER_MAKE_TRAIN`
runs as written from a working directory whose `runs/default` is a finished run (a copy of the
tests' tiny run), with its data where the library looks by default (`$TFDS_DATA_DIR`).
"""

import importlib.util
import pathlib
import pkgutil
import re
import shutil

import jax
import pytest
from doc_examples import NOT_RUN, documented_output, python_blocks, run_examples

import recipe
import recipe.data
import recipe.nnx

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_INDEX = DOCS / "api" / "index.rst"
AFTER_MAKE_TRAIN = "# after make train: runs/default holds a finished run"


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
def test_guide_examples_run_and_print_what_they_say(path, request, tmp_path, monkeypatch):
    def before_each(code: str) -> None:
        if code.startswith(AFTER_MAKE_TRAIN) and not (tmp_path / "runs").exists():
            workdir, _ = request.getfixturevalue("finished_run")
            shutil.copytree(workdir, tmp_path / "runs" / "default")
            monkeypatch.chdir(tmp_path)
            monkeypatch.setenv("TFDS_DATA_DIR", request.getfixturevalue("data_dir"))

    assert run_examples(path, before_each) > 0


def test_the_describe_example_prints_what_the_trainer_guide_shows(tmp_path, monkeypatch):
    """docs/trainer.md's `--describe` command, run as written on one device (its output is a
    one-device machine's) from a checkout's root (here: a working directory of its own), prints
    the recipe the guide shows, the schedule plot's path included."""
    from train import describe

    guide = (DOCS / "trainer.md").read_text()
    (command,) = [line for line in guide.splitlines() if line.endswith(" --describe")]
    shown = guide.split("For `configs/default.py`:\n\n```text\n", 1)[1].split("```", 1)[0]
    # python -m train --config <file> --workdir <dir> --describe
    program, arguments = command.split()[:3], command.split()[3:]
    assert program == ["python", "-m", "train"], command
    assert arguments[0::2] == ["--config", "--workdir", "--describe"], command
    config_file, workdir = arguments[1::2]
    spec = importlib.util.spec_from_file_location("guide_config", ROOT / config_file)
    config_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_module)
    monkeypatch.chdir(tmp_path)
    one = jax.devices()[:1]
    for name in ("devices", "local_devices"):
        monkeypatch.setattr(jax, name, lambda *args, **kwargs: one)
    for name in ("device_count", "local_device_count"):
        monkeypatch.setattr(jax, name, lambda *args, **kwargs: 1)
    printed = describe.describe(config_module.get_config(), workdir)
    assert printed.splitlines() == shown.splitlines()
    assert (tmp_path / workdir / "lr_schedule.png").is_file()


# MyST's roles ({doc}`x`, {func}`x`) and directives (```{include}): GitHub, where the README
# links the guides, shows them as raw text. The site's structure (toctree) is the exception.
MYST_ROLE = re.compile(r"\{[a-z:-]+\}`")
MYST_DIRECTIVE = re.compile(r"^(```|:::)\{(?!toctree\})", re.MULTILINE)


# BENCHMARKS.md's page of the site, which docs/conf.py writes at build time (git-ignored).
GENERATED = {"benchmarks_results.md"}


def test_the_guides_are_plain_markdown_that_github_shows_as_the_site_does():
    for path in sorted(p for p in DOCS.glob("*.md") if p.name not in GENERATED):
        text = path.read_text()
        assert not MYST_ROLE.search(text), f"{path.name}: {MYST_ROLE.search(text)[0]}"
        assert not MYST_DIRECTIVE.search(text), f"{path.name}: {MYST_DIRECTIVE.search(text)[0]}"


def _marked_sections(text: str) -> dict[str, str]:
    """{name: text} of the `<!-- BEGIN name -->` … `<!-- END name -->` sections."""
    return dict(re.findall(r"<!-- BEGIN ([\w-]+) -->\n(.*?)<!-- END \1 -->", text, re.DOTALL))


def test_getting_started_holds_the_readmes_install_table_and_commands_as_they_are():
    readme = _marked_sections((ROOT / "README.md").read_text())
    guide = _marked_sections((DOCS / "getting_started.md").read_text())
    assert set(guide) == {"install", "commands"}
    assert {name: readme[name] for name in guide} == guide
