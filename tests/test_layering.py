"""Who may import whom. Imports run one way, from the operators down to the services:

    cli (the `llmmesh` command)   mesh (runs everything on this machine)
            │                        │        │
            │                        │     gateway (the edge: spec, Envoy config, rate limit)
            ▼                        ▼        ▼
                 services (auth, chat, document, embedding, runtime)

services/ imports none of gateway, mesh or cli; gateway/ imports neither mesh nor cli.
Every import statement counts, function-level and relative ones included, and so does
importlib.import_module("...") with a literal name. No module is imported to check this.

The editable install puts the repository root on sys.path, so a package missing from
pyproject's `packages.find` would still import here and only break in a built wheel
(services/Dockerfile): the installed packages must import nothing else of ours.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the first-party top-level packages it must never import
FORBIDDEN = {
    "services": {"gateway", "mesh", "cli"},
    "gateway": {"mesh", "cli"},
}
# Top-level packages of the repository (directories with an __init__.py).
FIRST_PARTY = {path.parent.name for path in ROOT.glob("*/__init__.py")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_names(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SystemError:
        # CPython 3.11.7 (gh-106905): once an earlier AST conversion in this process went
        # wrong, parse() can fail with "AST constructor recursion depth mismatch". A fresh
        # interpreter reads the file instead.
        yield from _imported_names_elsewhere(path)
        return
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and _is_dynamic_import(node.func)):
            yield node.lineno, node.args[0].value


def _imported_names_elsewhere(path: Path) -> Iterator[tuple[int, str]]:
    code = ("import json, sys; from pathlib import Path; "
            "from tests.test_layering import imported_names; "
            "print(json.dumps(list(imported_names(Path(sys.argv[1])))))")
    result = subprocess.run([sys.executable, "-c", code, str(path.resolve())], cwd=ROOT,
                            capture_output=True, text=True, check=True, timeout=60)
    for line, target in json.loads(result.stdout):
        yield int(line), str(target)


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"import_module", "__import__"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def violations(package: str, forbidden: set[str]) -> list[str]:
    found = []
    for path in modules(package):
        for line, target in imported_names(path):
            if target.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    assert modules(package), f"{package}/ has no modules"
    found = violations(package, FORBIDDEN[package])
    assert not found, (f"{package}/ must not import {sorted(FORBIDDEN[package])}:\n"
                       + "\n".join(found))


def test_the_check_sees_every_kind_of_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    package = tmp_path / "services" / "sub"
    package.mkdir(parents=True)
    (tmp_path / "services" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text(
        "import gateway.config\n"
        "from mesh import launcher\n"
        "def later():\n"
        "    from cli.session import Session\n"
        "    import importlib\n"
        "    importlib.import_module('gateway.spec')\n"
        "from . import sibling\n"
        "from ..runtime import config\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = violations("services", FORBIDDEN["services"])
    assert [entry.split(" imports ")[1] for entry in found] == [
        "gateway.config", "mesh", "cli.session", "gateway.spec"]
    targets = {target for _, target in imported_names(package / "bad.py")}
    assert {"services.sub", "services.runtime"} <= targets


def test_the_layers_are_the_packages_we_ship() -> None:
    """Every first-party package is in pyproject's packages.find, the entry point's module
    is shipped, and shipped code imports no first-party package that is not (tests/)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = {name for name in FIRST_PARTY if any(fnmatchcase(name, p) for p in include)}
    assert {"services", "gateway", "mesh", "cli"} <= shipped
    assert set(FORBIDDEN) <= shipped
    for script, target in pyproject["project"]["scripts"].items():
        module = target.partition(":")[0]
        assert module.split(".")[0] in shipped, f"{script} runs {module}, which is not shipped"
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file(), target
    found = []
    for package in sorted(shipped):
        for path in modules(package):
            for line, target in imported_names(path):
                top = target.split(".")[0]
                if top in FIRST_PARTY - shipped:
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not found, "shipped code imports packages the wheel leaves out:\n" + "\n".join(found)
