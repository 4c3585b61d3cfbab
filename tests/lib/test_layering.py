"""The layering the README promises, held by tests: the library (``lmdbio/``) never imports the
study (``lmdbio/study/``), no module takes part in an import cycle, and ``import lmdbio`` and
the torch-free commands load neither torch nor the study."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lmdbio"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` (or ``source`` as if it were at ``path``) imports anywhere (top
    level, inside functions, under TYPE_CHECKING) and every module named in a string passed
    to ``import_module`` or ``find_spec``, resolved to absolute names."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(
        ".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)  # submodules
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                  "import_module", "find_spec", "__import__")):
            found.add(node.args[0].value)
    return found


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_library_never_imports_the_study() -> None:
    offenders = {}
    for name, path in package_modules().items():
        if name == "lmdbio.study" or name.startswith("lmdbio.study."):
            continue
        bad = sorted(m for m in imported_modules(path)
                     if m == "lmdbio.study" or m.startswith("lmdbio.study."))
        if bad:
            offenders[name] = bad
    assert offenders == {}


def test_the_scan_sees_lazy_and_string_imports() -> None:
    found = imported_modules(PACKAGE / "probe.py", "def f():\n    from .study import runner\n"
                             "def g():\n    import importlib\n"
                             "    importlib.import_module('lmdbio.study.cli')\n")
    assert {"lmdbio.study", "lmdbio.study.runner", "lmdbio.study.cli"} <= found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports at all (lazy imports count too: a cycle
    through a function-level import is still a cycle in the design)."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path):
            while imported and imported not in modules:  # "lmdbio.x.name" -> "lmdbio.x"
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a list of modules (first == last), or [] if there is none. Importing a
    package's ``__init__`` from its own submodule is left out: Python runs the package first,
    so that edge never re-enters a half-initialised module."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):
                continue  # a submodule importing its parent package
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if state.get(start) is None:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def test_no_import_cycles() -> None:
    assert find_cycle(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": set(), "p.x": {"p"}}) == []  # a submodule importing its package


def loaded_modules(code: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                           "print('\\n'.join(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=120, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("code", [
    "import lmdbio",
    "import lmdbio.cli",
    "from lmdbio.cli import build_parser; build_parser().format_help()",
])
def test_import_lmdbio_loads_neither_torch_nor_the_study(code: str) -> None:
    loaded = loaded_modules(code)
    assert [m for m in loaded if m.split(".")[0] in ("torch", "torchvision")] == []
    assert [m for m in loaded if m.startswith("lmdbio.study")] == []


def test_the_study_alias_is_registered_but_not_loaded() -> None:
    proc = subprocess.run([sys.executable, "-m", "lmdbio.cli", "--help"], capture_output=True,
                          text=True, timeout=120, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
    assert "study" in proc.stdout and "generate" in proc.stdout
