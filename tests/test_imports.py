"""The import structure: no cycles between files, nothing imports "upwards" between packages.

Everything is read from the files on disk with `ast` (nothing is imported), so modules that
move keep being checked without editing this file; only the layer table below is fixed.

What counts as an import
- Every `import` / `from ... import` statement anywhere in a file: at module level, inside
  functions (lazy imports of heavy dependencies still create a dependency) and inside
  `if TYPE_CHECKING:` blocks.
- `if TYPE_CHECKING:` imports never run, so they cannot create a runtime cycle: they are left
  out of the file-cycle check. They still state a dependency of one package on another, so an
  upward type import is reported like any other upward import.
- `import a.b.c` depends on the module `a.b.c`; `from a.b import c` depends on the module
  `a.b.c` when that is a file (or a package), otherwise on `a.b` itself (a name defined in the
  package's `__init__.py`: importing from a package depends on its `__init__`). Relative
  imports are resolved against the importing file's package. The parent packages that Python
  initialises on the way (`a`, `a.b`) are not counted: the `__init__.py` files of a package
  import their own submodules, and counting them would make every package a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Which of our top-level packages each one may import (besides itself). Layers:
# geometry <- reconstruction <- pose; geometry <- perception; viewer sits on all four;
# sparseview (the CLIs) may import everything.
ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    "geometry": frozenset(),
    "reconstruction": frozenset({"geometry"}),
    "perception": frozenset({"geometry"}),
    "pose": frozenset({"geometry", "reconstruction"}),
    "viewer": frozenset({"geometry", "reconstruction", "perception", "pose"}),
    "sparseview": frozenset({"geometry", "reconstruction", "perception", "pose", "viewer"}),
}

# Known upward imports, as (importing module, imported top-level package). Each entry is a
# debt, not a permission: the test fails once an entry no longer occurs, so it gets deleted.
KNOWN_UPWARD_IMPORTS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    """One import statement of ours, resolved to a module name."""

    importer: str  # dotted name of the importing module, e.g. "perception.cli"
    target: str  # dotted name of the imported module (or package), e.g. "geometry.se3"
    lineno: int
    type_checking: bool  # inside an `if TYPE_CHECKING:` block (never runs)
    resolved: bool  # False when no file or folder on disk matches `target`


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every `.py` file of `packages` under `root`, by dotted module name.

    A package's `__init__.py` is named after the package (`geometry.io`); folders without one
    (namespace packages) contribute their files all the same. Missing packages are skipped.
    """
    modules: dict[str, Path] = {}
    for package in packages:
        package_dir = root / package
        if not package_dir.is_dir():
            continue
        for path in sorted(package_dir.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking_test(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `<anything>.TYPE_CHECKING` (e.g. `typing.TYPE_CHECKING`)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """All import statements of a tree, each with whether it sits under `if TYPE_CHECKING:`."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, type_checking = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_checking
            continue
        if isinstance(node, ast.If) and _is_type_checking_test(node.test):
            stack.extend((child, True) for child in node.body)
            stack.extend((child, type_checking) for child in node.orelse)
            continue
        stack.extend((child, type_checking) for child in ast.iter_child_nodes(node))


def parse_imports(
    modules: dict[str, Path], packages: Iterable[str], root: Path
) -> list[Import]:
    """The imports of our `packages` made by `modules`, resolved to module names."""
    ours = set(packages)
    known = set(modules)

    def exists(name: str) -> bool:
        # A module file, a package, or a namespace package (a folder on disk).
        return name in known or (root / Path(*name.split("."))).is_dir()

    imports: list[Import] = []
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, type_checking in _import_nodes(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    # `from . import x` in a/b/c.py is relative to the package a.b; in
                    # a/b/__init__.py it is relative to a.b itself.
                    base_parts = importer.split(".")
                    drop = node.level - 1 if is_package else node.level
                    base_parts = base_parts[: len(base_parts) - drop]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if exists(submodule) else base)
            for target in dict.fromkeys(targets):  # `from a import b, c`: one per module
                if target.split(".")[0] not in ours:
                    continue
                imports.append(
                    Import(importer, target, node.lineno, type_checking, exists(target))
                )
    return imports


def find_cycles(imports: Iterable[Import], modules: Iterable[str]) -> list[list[str]]:
    """One import cycle (a path `a -> b -> ... -> a`) per strongly connected group of files.

    `if TYPE_CHECKING:` imports are left out: they never run.
    """
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in imports:
        if not imp.type_checking and imp.target in graph and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)

    # Tarjan's strongly connected components, iterative (the import graph can be deep).
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[node])
            if lowlink[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    cycles = []
    for component in sorted(components):
        members = set(component)
        # Shortest path from the first member back to itself, inside the component (BFS).
        first = component[0]
        previous: dict[str, str] = {}
        frontier = [first]
        while frontier and first not in previous:
            next_frontier = []
            for node in frontier:
                for child in sorted(graph[node] & members):
                    if child not in previous:
                        previous[child] = node
                        next_frontier.append(child)
            frontier = next_frontier
        path = [first]
        node = previous[first]
        while node != first:
            path.append(node)
            node = previous[node]
        path.append(first)
        cycles.append(path[::-1])
    return cycles


def find_upward_imports(
    imports: Iterable[Import], allowed: dict[str, frozenset[str]]
) -> list[Import]:
    """The imports from one top-level package into another that the layer table forbids."""
    upward = []
    for imp in imports:
        source, target = imp.importer.split(".")[0], imp.target.split(".")[0]
        if source != target and target not in allowed[source]:
            upward.append(imp)
    return upward


def _describe(imp: Import, modules: dict[str, Path], root: Path) -> str:
    where = modules[imp.importer].relative_to(root)
    kind = " (under TYPE_CHECKING)" if imp.type_checking else ""
    return f"{where}:{imp.lineno}: {imp.importer} imports {imp.target}{kind}"


@pytest.fixture(scope="module")
def repo_imports() -> tuple[dict[str, Path], list[Import]]:
    modules = find_modules(REPO_ROOT, ALLOWED_IMPORTS)
    assert modules, f"no package of {sorted(ALLOWED_IMPORTS)} found under {REPO_ROOT}"
    return modules, parse_imports(modules, ALLOWED_IMPORTS, REPO_ROOT)


def _without_known_upward(imports: list[Import]) -> list[Import]:
    return [
        imp
        for imp in imports
        if (imp.importer, imp.target.split(".")[0]) not in KNOWN_UPWARD_IMPORTS
    ]


def _describe_cycle(cycle: list[str], imports: list[Import], modules: dict[str, Path],
                    root: Path) -> str:
    """``a -> b -> a`` and, below it, where each of those imports is written."""
    lines = [" -> ".join(cycle)]
    for importer, target in zip(cycle[:-1], cycle[1:], strict=True):
        imp = next(i for i in imports
                   if (i.importer, i.target) == (importer, target) and not i.type_checking)
        lines.append("    " + _describe(imp, modules, root))
    return "\n".join(lines)


def test_no_import_cycles_between_files(repo_imports):
    modules, imports = repo_imports
    imports = _without_known_upward(imports)
    cycles = find_cycles(imports, modules)
    assert not cycles, "import cycles between files (break each by moving the shared piece " \
        "into a module both can import):\n" + "\n".join(
            _describe_cycle(c, imports, modules, REPO_ROOT) for c in cycles)


def test_no_upward_imports_between_packages(repo_imports):
    modules, imports = repo_imports
    upward = find_upward_imports(_without_known_upward(imports), ALLOWED_IMPORTS)
    table = "; ".join(
        f"{pkg} -> {', '.join(sorted(ok)) or 'nothing of ours'}"
        for pkg, ok in ALLOWED_IMPORTS.items()
    )
    assert not upward, f"upward imports (allowed: {table}):\n" + "\n".join(
        _describe(imp, modules, REPO_ROOT) for imp in upward
    )


def test_known_upward_imports_still_exist(repo_imports):
    """An allow-list entry that no longer occurs is deleted, so it cannot hide a new one."""
    _, imports = repo_imports
    occurring = {(imp.importer, imp.target.split(".")[0]) for imp in imports}
    stale = sorted(KNOWN_UPWARD_IMPORTS - occurring)
    assert not stale, f"delete these from KNOWN_UPWARD_IMPORTS, they no longer occur: {stale}"


def test_every_import_of_ours_resolves(repo_imports):
    """An import of a module that is not on disk is left over from a move."""
    modules, imports = repo_imports
    unresolved = [imp for imp in imports if not imp.resolved]
    assert not unresolved, "imports of modules that do not exist:\n" + "\n".join(
        _describe(imp, modules, REPO_ROOT) for imp in unresolved
    )


# --- the checker on a synthetic tree ---------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_checker_reports_cycles_and_upward_imports(tmp_path):
    _write(
        tmp_path,
        {
            "low/__init__.py": "",
            # A three-file cycle, closed by a relative import inside a function.
            "low/a.py": "from low import b\n",
            "low/b.py": "import low.c as c\n",
            "low/c.py": "def f():\n    from . import a\n    return a\n",
            # Imports from a package's __init__ depend on the __init__: a two-file cycle.
            "low/pkg/__init__.py": "from .d import D\n",
            "low/pkg/d.py": "from low.pkg import helper\nD = 1\n",
            # TYPE_CHECKING imports form no cycle, but an upward one is still reported.
            "low/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from low.f import F\n    import high.g\n",
            "low/f.py": "from low.e import E\nF = 1\n",
            "high/__init__.py": "",
            "high/g.py": "from low.a import x\nfrom low import missing_module\n",
            "high/h.py": "import low.nowhere\n",
        },
    )
    packages = ("low", "high", "absent")
    allowed = {"low": frozenset(), "high": frozenset({"low"}), "absent": frozenset()}
    modules = find_modules(tmp_path, packages)
    assert set(modules) == {
        "low", "low.a", "low.b", "low.c", "low.e", "low.f", "low.pkg", "low.pkg.d",
        "high", "high.g", "high.h",
    }  # fmt: skip
    imports = parse_imports(modules, packages, tmp_path)

    cycles = find_cycles(imports, modules)
    assert cycles == [["low.a", "low.b", "low.c", "low.a"], ["low.pkg", "low.pkg.d", "low.pkg"]]
    assert _describe_cycle(cycles[0], imports, modules, tmp_path).splitlines()[1:] == [
        "    low/a.py:1: low.a imports low.b",
        "    low/b.py:1: low.b imports low.c",
        "    low/c.py:2: low.c imports low.a",
    ]

    upward = find_upward_imports(imports, allowed)
    assert [(imp.importer, imp.target, imp.type_checking) for imp in upward] == [
        ("low.e", "high.g", True)
    ]

    # `from low import missing_module` falls back to the package `low` (a name in its
    # __init__); `import low.nowhere` names a module that is not on disk.
    unresolved = [(imp.importer, imp.target) for imp in imports if not imp.resolved]
    assert unresolved == [("high.h", "low.nowhere")]
