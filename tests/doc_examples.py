"""The documentation's Python examples, read from the Markdown sources: each ```python block,
and what its comments say its prints show. Imports nothing but the standard library, so that
tests/core_install.py runs the examples where only the core install is (no pytest)."""

import contextlib
import io
import pathlib
import re
from collections.abc import Callable

NOT_RUN = "# not run:"


def python_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block of a Markdown file."""
    blocks, lines = [], path.read_text().splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines[start : number - 1]) + "\n"))
            start = None
    assert start is None, f"{path}:{start}: a ```python block is not closed"
    return blocks


def documented_output(code: str) -> str | None:
    """What the block's comments say its prints show: the comment after each `print(` (on its
    line, or the `# ` lines right below it); None if a print has none."""
    shown, lines = [], code.splitlines()
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("print("):
            continue
        _, inline, comment = line.partition("  # ")
        below = []
        for following in lines[i + 1 :]:
            if not following.startswith("# "):
                break
            below.append(following[2:])
        if not (inline or below):
            return None
        shown.append(comment if inline else " ".join(below))
    return " ".join(shown)


def run_examples(path: pathlib.Path, before_each: Callable[[str], None] | None = None) -> int:
    """Runs the page's blocks in order in one namespace (all but those opening with
    `# not run: <why>`), each checked against `documented_output`; returns how many ran.
    `before_each(code)`, if given, runs before each block (to set up what a block says it needs).

    Raises:
        AssertionError: A block printed other than its comments say.
    """
    namespace = {"__name__": f"docs_{path.stem}"}
    ran = 0
    for number, code in python_blocks(path):
        if code.startswith(NOT_RUN):
            continue
        if before_each is not None:
            before_each(code)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{path.name}:{number}", "exec"), namespace)
        expected = documented_output(code)
        if expected is not None:
            assert _words(printed.getvalue()) == _words(expected), f"{path.name}:{number}"
        ran += 1
    return ran


def _words(text: str) -> list[str]:
    return re.sub(r"\s+", " ", text).strip().split(" ")
