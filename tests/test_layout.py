"""Import directions between the packages: the core depends on no part, the parts not on each other.

Every module is parsed with `ast` (nothing is imported), so a forbidden import anywhere, even in
a branch that never runs, fails with the file, the line and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lifeline", "edge_agent", "gateway", "console", "simulators", "firmware_stubs", "benchmarks",
            "tests")

#: Packages each package must never import (first-party packages not listed are allowed).
FORBIDDEN: dict[str, frozenset[str]] = {
    "lifeline": frozenset({"edge_agent", "gateway", "console", "simulators", "firmware_stubs", "benchmarks",
                           "tests"}),
    "edge_agent": frozenset({"gateway", "console", "simulators", "benchmarks", "tests"}),
    "gateway": frozenset({"edge_agent", "console", "simulators", "benchmarks", "tests"}),
    "console": frozenset({"edge_agent", "gateway", "simulators", "benchmarks", "tests"}),
    "simulators": frozenset({"gateway", "benchmarks", "tests"}),
    "firmware_stubs": frozenset({"lifeline", "edge_agent", "gateway", "simulators", "benchmarks", "tests"}),
}
#: The command line is the one module of the core that knows every part, inside its commands only.
LAZY_ONLY = {"lifeline/cli.py": frozenset({"edge_agent", "gateway", "console", "simulators", "benchmarks"})}
#: Simulators drive agents through the agent's public entry (`edge_agent/__init__.py`) only.
TOP_LEVEL_ONLY = {"simulators": frozenset({"edge_agent"})}


@dataclass(frozen=True)
class Import:
    """One imported module name, where it is, and whether it sits inside a function."""

    path: str
    line: int
    module: str
    statement: str
    in_function: bool

    @property
    def package(self) -> str:
        return self.module.split(".", 1)[0]

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.statement}"


def _resolve(node: ast.ImportFrom, rel: str) -> str:
    """The absolute module a `from ... import` names (relative ones resolved against the file)."""
    if not node.level:
        return node.module or ""
    parts = rel.removesuffix(".py").split("/")
    base = parts[: len(parts) - node.level]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_in(source: str, rel: str) -> Iterator[Import]:
    """Every import in the module `rel` (path from the repository root) with `source` as text."""
    tree = ast.parse(source, filename=rel)

    def visit(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                statement = " ".join((ast.get_source_segment(source, child) or "").split())
                if isinstance(child, ast.Import):
                    names = [alias.name for alias in child.names]
                else:
                    base = _resolve(child, rel)
                    # `from pkg import sub` may import a submodule: name both the package and it
                    names = [base, *(f"{base}.{alias.name}" for alias in child.names if alias.name != "*")]
                for module in names:
                    yield Import(rel, child.lineno, module, statement, in_function)
            yield from visit(child, inside)

    yield from visit(tree, False)


def imports_of(path: Path) -> Iterator[Import]:
    """Every import in the module at `path`."""
    yield from imports_in(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def violations(package: str, imports: Iterable[Import]) -> list[str]:
    """Every import of `package`'s modules that breaks the layout, as `file:line: import (why)`."""
    found: list[str] = []
    seen: set[tuple[str, int, str]] = set()
    for imp in imports:
        if imp.package == package or imp.package not in PACKAGES:
            continue
        if imp.package in LAZY_ONLY.get(imp.path, frozenset()):
            why = None if imp.in_function else f"{imp.package} only inside a command's function"
        elif imp.package in FORBIDDEN.get(package, frozenset()):
            why = f"{package} must not import {imp.package}"
        elif imp.package in TOP_LEVEL_ONLY.get(package, frozenset()) and imp.module != imp.package:
            public = {f"{imp.package}.{name}" for name in _public_names(imp.package)}
            why = None if imp.module in public else (
                f"{package} may use only {imp.package}'s public entry "
                f"(`from {imp.package} import ...`), not {imp.module}")
        else:
            why = None
        key = (imp.path, imp.line, imp.package)
        if why is not None and key not in seen:
            seen.add(key)
            found.append(f"{imp} ({why})")
    return found


def package_imports(package: str) -> Iterator[Import]:
    for path in modules(package):
        yield from imports_of(path)


def _public_names(package: str) -> set[str]:
    """The names in a package's `__all__` (read from its `__init__.py` without importing it)."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return {elt.value for elt in ast.walk(node.value) if isinstance(elt, ast.Constant)}
    return set()


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_follow_the_layout(package: str) -> None:
    """The core imports no part; agent and gateway stay apart; simulators use the agent's entry."""
    assert modules(package), f"no modules found under {package}/"
    bad = violations(package, package_imports(package))
    assert not bad, "imports against the layout (see tests/test_layout.py):\n" + "\n".join(bad)


def test_cli_loads_the_parts_lazily() -> None:
    """`lifeline/cli.py` knows every part but imports each inside its command only."""
    parts = {imp.package for imp in imports_of(ROOT / "lifeline" / "cli.py") if imp.in_function}
    assert {"edge_agent", "gateway", "simulators"} <= parts


@pytest.mark.parametrize("package", ["lifeline", "edge_agent", "gateway", "console", "simulators", "firmware_stubs",
                                     "benchmarks"])
def test_every_package_says_what_it_is(package: str) -> None:
    """Each package opens with a docstring: a paragraph of purpose and its public names."""
    init = ROOT / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and len(doc.split()) >= 30, f"{package}/__init__.py: needs a docstring of its purpose"
    assert "public" in doc.lower(), f"{package}/__init__.py: the docstring should name its public names"


@pytest.mark.parametrize(("rel", "source", "expected"), [
    ("gateway/x.py", "import os\nfrom edge_agent.uplink import Uplink\n",
     "gateway/x.py:2: from edge_agent.uplink import Uplink (gateway must not import edge_agent)"),
    ("edge_agent/x.py", "def f():\n    import gateway.service\n",
     "edge_agent/x.py:2: import gateway.service (edge_agent must not import gateway)"),
    ("lifeline/x.py", "if True:\n    from simulators import demo\n",
     "lifeline/x.py:2: from simulators import demo (lifeline must not import simulators)"),
    ("lifeline/cli.py", "from gateway.service import run_gateway\n",
     "lifeline/cli.py:1: from gateway.service import run_gateway (gateway only inside a command's function)"),
    ("simulators/x.py", "from edge_agent.runtime import precompile\n",
     ("simulators/x.py:1: from edge_agent.runtime import precompile (simulators may use only edge_agent's "
      "public entry (`from edge_agent import ...`), not edge_agent.runtime)")),
    ("simulators/a/x.py", "from ...edge_agent import frames\n",
     ("simulators/a/x.py:1: from ...edge_agent import frames (simulators may use only edge_agent's public "
      "entry (`from edge_agent import ...`), not edge_agent.frames)")),
])
def test_the_check_names_file_line_and_import(rel: str, source: str, expected: str) -> None:
    """A forbidden import is reported with its file, line and statement, and why it is forbidden."""
    package = rel.split("/", 1)[0]
    assert violations(package, imports_in(source, rel)) == [expected]


@pytest.mark.parametrize(("rel", "source"), [
    ("lifeline/cli.py", "def agent():\n    from edge_agent import run_agent\n"),
    ("simulators/x.py", "from edge_agent import AgentConfig, precompile\nimport edge_agent\n"),
    ("simulators/x.py", "from lifeline.contract import Alert\nfrom firmware_stubs import SensorNode\n"),
    ("benchmarks/x.py", "from edge_agent.outbox import Outbox\nfrom gateway.pipeline import Pipeline\n"),
])
def test_the_check_allows_what_the_layout_allows(rel: str, source: str) -> None:
    package = rel.split("/", 1)[0]
    assert violations(package, imports_in(source, rel)) == []
