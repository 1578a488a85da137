"""logic/ decides and never touches AWS itself: it imports no boto3/botocore and no AWS adapter, at any depth.

The adapters (``deps`` wires them) are handed to the logic as a ``ControlDeps`` / ``CapacityDeps``; logic may
name those types for annotations only (under ``if TYPE_CHECKING:``), never import them when it runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "layers" / "spotkeeper" / "spotkeeper"
LOGIC = sorted((PACKAGE / "logic").glob("*.py"))
AWS_SDK = {"boto3", "botocore"}
# Modules that hold AWS clients: the DynamoDB, Auto Scaling, EC2 and SNS adapters, and the wiring of them.
ADAPTERS = {
    "spotkeeper.aws",
    "spotkeeper.fleet",
    "spotkeeper.capacity_policy",
    "spotkeeper.spot_market",
    "spotkeeper.state",
    "spotkeeper.capacity_journal",
    "spotkeeper.idempotency",
    "spotkeeper.deps",
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST) -> set[str]:
    """Every module a file imports when it runs: anywhere in it, except under ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from spotkeeper import state`` imports the module spotkeeper.state
            found.update(
                f"{node.module}.{alias.name}" for alias in node.names if _module_path(f"{node.module}.{alias.name}")
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _module_path(module: str) -> Path | None:
    if not module.startswith("spotkeeper"):
        return None
    relative = Path(*module.split(".")[1:])
    for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_at_runtime(path: Path) -> dict[str, str]:
    """Every module ``path`` brings in when it runs, following spotkeeper's own modules: module -> importer."""
    seen: dict[str, str] = {}
    pending = [(path, str(path.relative_to(PACKAGE.parent)))]
    visited: set[Path] = set()
    while pending:
        current, name = pending.pop()
        if current in visited:
            continue
        visited.add(current)
        for module in runtime_imports(ast.parse(current.read_text(), filename=str(current))):
            seen.setdefault(module, name)
            if (found := _module_path(module)) is not None:
                pending.append((found, module))
    return seen


def forbidden(imported: dict[str, str]) -> dict[str, str]:
    return {
        module: importer
        for module, importer in imported.items()
        if module in ADAPTERS or module.split(".")[0] in AWS_SDK
    }


def test_logic_imports_no_aws_sdk_and_no_adapter_at_any_depth() -> None:
    assert LOGIC, "no logic modules found"
    for path in LOGIC:
        bad = forbidden(imported_at_runtime(path))
        assert not bad, f"{path.name} imports AWS at run time (module: imported by): {bad}"


def test_logic_names_its_deps_for_annotations_only() -> None:
    # The deps types are the logic's interface: every module that takes deps names them, for type checking.
    for path in LOGIC:
        tree = ast.parse(path.read_text())
        annotated = {
            node.module
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and _is_type_checking(block)
            for node in ast.walk(block)
            if isinstance(node, ast.ImportFrom)
        }
        if "deps" in path.read_text() and path.name != "__init__.py":
            assert "spotkeeper.deps" in annotated, f"{path.name} takes deps without naming their type"


def test_the_check_sees_adapters_it_must_refuse() -> None:
    # The same reading on the wiring module finds the SDK and the adapters, so the check above can fail.
    bad = forbidden(imported_at_runtime(PACKAGE / "deps.py"))
    assert {"botocore.config", "boto3", "spotkeeper.fleet", "spotkeeper.state"} <= set(bad)
    # ... and an import hidden in a function body counts as much as one at the top.
    late = ast.parse("def f():\n    from botocore.exceptions import ClientError\n")
    assert forbidden(dict.fromkeys(runtime_imports(late), "f")) == {"botocore.exceptions": "f"}
    # ... while one under TYPE_CHECKING does not.
    typed = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from spotkeeper.deps import ControlDeps\n"
    )
    assert forbidden(dict.fromkeys(runtime_imports(typed), "typed")) == {}
