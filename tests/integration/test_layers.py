"""The library layers (bootwatch.cache, bootwatch.entries) import nothing but the standard library
and bootwatch itself, however deep the imports go.

import-linter's contract in pyproject.toml names the third-party packages it forbids (watchdog,
APScheduler, sdnotify): any other package would pass it. This walks the real import graph from the
two packages (every ``import`` statement of every module reached, lazy ones in functions included;
not what only the type checker reads) and allows the standard library, bootwatch, and one
exception: ``tomli``, the Python < 3.11 fallback of ``tomllib`` that bootwatch.config needs.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest

import bootwatch

pytestmark = pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is Python 3.10+")

PACKAGE_DIR = Path(bootwatch.__file__).parent
LIBRARY_PACKAGES = ("bootwatch.cache", "bootwatch.entries")
# The one third-party module the library may import: tomllib's backport, on Python < 3.11 only.
ALLOWED_THIRD_PARTY = {"tomli"}


def module_file(name: str, root: Path = PACKAGE_DIR) -> Path | None:
    """The source file of the bootwatch module ``name``, if it is one."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def modules_of(package: str, root: Path = PACKAGE_DIR) -> list[str]:
    directory = root.joinpath(*package.split(".")[1:])
    return sorted(".".join((package, *p.relative_to(directory).with_suffix("").parts)).removesuffix(".__init__")
                  for p in directory.rglob("*.py"))


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """The nodes of ``tree`` that can run: not the body of ``if TYPE_CHECKING:`` (only mypy reads
    it, so what it imports, such as typing_extensions, is no dependency of the installed package)."""
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if _is_type_checking(node):
            assert isinstance(node, ast.If)
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return nodes


def imports_of(name: str, path: Path) -> set[str]:
    """Every module ``name``'s source imports when it runs (absolute names; ``from X import y``
    gives X and X.y)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def third_party_imports(packages: tuple[str, ...], root: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """{module reached from ``packages``: the modules outside bootwatch and the standard library it imports}."""
    pending = [m for package in packages for m in modules_of(package, root)]
    seen: set[str] = set()
    found: dict[str, set[str]] = {}
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        assert path is not None, name
        for imported in imports_of(name, path):
            top = imported.partition(".")[0]
            if top == "bootwatch":
                if module_file(imported, root) is not None:
                    pending.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__" and top not in ALLOWED_THIRD_PARTY:
                found.setdefault(name, set()).add(top)
    return found


def test_the_library_imports_only_the_standard_library_and_bootwatch() -> None:
    assert third_party_imports(LIBRARY_PACKAGES) == {}


def test_the_walk_reaches_config_and_its_tomli_fallback() -> None:
    """The walk follows bootwatch's own imports out of the two packages (config, safety, ...)."""
    reached = imports_of("bootwatch.config", PACKAGE_DIR / "config.py")
    assert "tomli" in reached and "tomllib" in reached


@pytest.mark.slow  # a copy of the package each
@pytest.mark.parametrize("where, statement, package", [
    ("cache/store.py", "import yaml", "yaml"),
    ("entries/bls.py", "from requests import get", "requests"),
    ("safety.py", "import attr.validators", "attr"),  # reached through the library, not in it
    ("cache/index.py", "def f():\n    import numpy", "numpy"),  # lazy, in a function
    ("entries/bls.py", "if TYPE_CHECKING:\n    pass\nelse:\n    import six", "six"),
])
def test_a_third_party_import_is_found(tmp_path: Path, where: str, statement: str, package: str) -> None:
    """The same walk over a copy of the package with one third-party import added finds it."""
    copy = tmp_path / "bootwatch"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / where
    target.write_text(target.read_text() + "\n" + statement + "\n")
    assert list(third_party_imports(LIBRARY_PACKAGES, copy).values()) == [{package}]
