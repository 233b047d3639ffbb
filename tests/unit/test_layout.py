"""The layout keeps its promises: the data flow in folders, a thin shared Kafka layer, pure code
that stays pure, and a README whose layout names folders that exist."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
ROLES = ("processors.normalizer", "processors.reconcile", "processors.operate", "processors.cli", "gateway")
PURE = (
    "processors/model.py",
    "processors/pipeline.py",
    "processors/dedup.py",
    "processors/diskstore.py",
    "processors/state.py",
    "processors/prose.py",
    "processors/signing.py",
    "processors/providers",
    "processors/avro",
)


def _imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _modules(*folders: str) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        path = ROOT / folder
        found += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return found


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("path", _modules("processors"), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_in_processors_below_the_cli_imports_the_gateway(path: Path) -> None:
    if path.is_relative_to(ROOT / "processors" / "cli"):
        return  # the composition root starts every role, the gateway's too
    assert not [m for m in _imports(path) if _under(m, ("gateway",))]


@pytest.mark.parametrize("path", _modules("processors/kafka"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_kafka_layer_holds_no_role_logic(path: Path) -> None:
    assert not [m for m in _imports(path) if _under(m, ROLES)], "processors/kafka is shared by every role"


@pytest.mark.parametrize("path", _modules(*PURE), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_code_does_no_io(path: Path) -> None:
    io = ("confluent_kafka", "starlette", "httpx", "processors.kafka", *ROLES)
    assert not [m for m in _imports(path) if _under(m, io)]


def test_the_readme_layout_names_folders_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("Layout = data flow") : readme.index("## Try it")]
    named = re.findall(r"^([a-z_/]+/)\s", layout, flags=re.M)
    assert len(named) >= 10, layout
    assert [folder for folder in named if not (ROOT / folder).is_dir()] == []
    concerns = {p.name for p in (ROOT / "processors").iterdir() if (p / "__init__.py").is_file()}
    assert {f"processors/{name}/" for name in concerns} <= set(named), "every processors package is named"
