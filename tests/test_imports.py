"""The project's import graph, read from the source with `ast`: no module imports itself
through others (module-level and function-level imports alike), and no module reaches into
another's private names (`from x import _y`, or `x._y` where x is another project module)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("recipe", "train", "configs", "bench")


def module_files(root: pathlib.Path, packages: tuple[str, ...]) -> dict[str, pathlib.Path]:
    """Dotted module name → source file, for every .py file under `packages`."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The module an `ImportFrom` names, with relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


class _ModuleImports(ast.NodeVisitor):
    """The project modules one module imports, the private names it imports, and the private
    attributes it reads off project modules it imported under a name."""

    def __init__(self, module: str, is_package: bool, modules: set[str]):
        self.module, self.is_package, self.modules = module, is_package, modules
        self.edges: set[str] = set()
        self.aliases: dict[str, str] = {}  # local name → project module it is bound to
        self.private: list[str] = []

    def _project(self, name: str) -> str | None:
        """The longest project module that `name` is or lies in."""
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in self.modules:
                return candidate
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = self._project(alias.name)
            if target is None:
                continue
            self.edges.add(target)
            if alias.asname:
                self.aliases[alias.asname] = target
            else:  # `import a.b.c` binds `a`
                top = alias.name.split(".")[0]
                if top in self.modules:
                    self.aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = _absolute(self.module, node, self.is_package)
        if self._project(source) is None:
            return
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.modules:
                self.edges.add(submodule)
                self.aliases[alias.asname or alias.name] = submodule
            else:
                self.edges.add(self._project(source))
            if _is_private(alias.name):
                self.private.append(f"line {node.lineno}: from {source} import {alias.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted is not None:
            head, *attributes = dotted.split(".")
            module = self.aliases.get(head)
            for attribute in attributes:
                if module is None:
                    break
                if _is_private(attribute):
                    if module != self.module:
                        self.private.append(f"line {node.lineno}: {module}.{attribute}")
                    break
                nested = f"{module}.{attribute}"
                module = nested if nested in self.modules else None
            return  # the whole chain is read: its inner attributes are not visited again
        self.generic_visit(node)


def _dotted(node: ast.expr) -> str | None:
    """'a.b.c' for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def read_imports(
    root: pathlib.Path, packages: tuple[str, ...]
) -> tuple[dict[str, set[str]], list[str]]:
    """(module → the project modules it imports, anywhere in its source; the private-name
    uses across modules, one line each)."""
    files = module_files(root, packages)
    graph, private = {}, []
    for module, path in files.items():
        visitor = _ModuleImports(module, path.name == "__init__.py", set(files))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[module] = visitor.edges - {module}
        private += [f"{path.relative_to(root)} {use}" for use in visitor.private]
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → … → a) per strongly connected component of more than one module
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(_cycle_through(sorted(component), graph))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A path from the component's first module back to itself inside the component."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for successor in sorted(graph[node] & members):
            if successor == start:
                return paths[node] + [start]
            if successor not in paths:
                paths[successor] = paths[node] + [successor]
                frontier.append(successor)
    raise AssertionError(f"no cycle through {start}")


def test_no_import_cycles_in_the_project():
    graph, _ = read_imports(ROOT, PACKAGES)
    assert len(graph) > 50, "the scan found too few modules: wrong root?"
    assert cycles(graph) == []


def test_no_private_names_across_modules():
    _, private = read_imports(ROOT, PACKAGES)
    assert private == []


# The checks themselves, on a made-up package.


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def made_up(tmp_path: pathlib.Path) -> pathlib.Path:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import public\n",
            "pkg/a.py": "def public(): ...\ndef _hidden(): ...\n",
            "pkg/b.py": "def f():\n    from pkg import c\n    return c.g()\n",  # in a function
            "pkg/c.py": "from . import b\ndef g(): return b\n",  # relative
            "pkg/d.py": "from pkg.a import _hidden\n",
            "pkg/e.py": "import pkg.a as a\nx = a._hidden\n",
            "pkg/f.py": "import pkg.a\nx = pkg.a._hidden\nself_ok = _own = 1\n",
            "pkg/g.py": "from pkg import a\nx = a.public, a.__name__\n",
        },
    )
    return tmp_path


def test_cycle_check_finds_a_cycle_through_a_function_level_import(made_up):
    graph, _ = read_imports(made_up, ("pkg",))
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.b"}
    assert cycles(graph) == [["pkg.b", "pkg.c", "pkg.b"]]


def test_private_check_finds_imports_and_attributes(made_up):
    _, private = read_imports(made_up, ("pkg",))
    assert private == [
        "pkg/d.py line 1: from pkg.a import _hidden",
        "pkg/e.py line 2: pkg.a._hidden",
        "pkg/f.py line 2: pkg.a._hidden",
    ]
