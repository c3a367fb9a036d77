"""The package layout: each part imports only from the parts below it (no circles, no reaching up)."""
import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "selfsup"

#: Lowest first. A module may import from its own part and from parts listed before it.
LAYERS = [
    {"errors"},
    {"arguments"},
    {"engine"},
    {"data"},
    {"models"},
    {"losses"},
    {"blocks"},
    {"views"},
    {"methods"},
    {"eval"},
    {"config"},
    {"report"},
    {"recipes"},
    {"semisup"},
    {"explore"},
    {"export", "demo"},
    {"cli"},
    {"__main__"},
]
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def part_of(path: Path) -> str:
    relative = path.relative_to(SOURCE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_parts(path: Path) -> set[str]:
    """The selfsup parts a module imports (at the top or inside functions)."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(SOURCE).parent.parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            else:
                base = list(package[:len(package) - (node.level - 1)])
                names = [".".join(base + ([node.module] if node.module else [alias.name]))
                         for alias in node.names]
            for name in names:
                if node.level == 0 and not name.startswith("selfsup"):
                    continue
                parts = name.split(".")
                parts = parts[1:] if parts[0] == "selfsup" else parts
                if parts and parts[0]:
                    found.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("selfsup."):
                    found.add(alias.name.split(".")[1])
    return found


MODULES = sorted(p for p in SOURCE.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {part_of(p) for p in MODULES} - {"__init__"}
    assert parts <= set(LEVEL), f"place these in LAYERS: {parts - set(LEVEL)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SOURCE)))
def test_imports_only_go_down(path):
    if path == SOURCE / "__init__.py":
        return
    mine = part_of(path)
    for other in imported_parts(path) - {mine}:
        assert LEVEL[other] < LEVEL[mine], f"{path.relative_to(SOURCE)} ({mine}) imports {other}, which is not below it"


def test_eval_does_not_import_report_or_config():
    for path in (SOURCE / "eval").glob("*.py"):
        assert not imported_parts(path) & {"report", "config", "recipes"}, path.name
