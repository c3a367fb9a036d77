"""The package layout: each part imports only from the parts below it (no circles, no reaching up).

Models live in two rooms and are fitted in a third: ``methods`` learn without labels, ``learners``
with them (classifier, distiller, continual, multi-task and semi-supervised learners), and
``recipes`` holds the functions that fit either, with their settings, and no ``nn.Module``.
The command line (``cli/``) only parses, calls one recipe and prints: one small module per family of
commands, each command's parser beside its handler, built without importing torch.
"""
import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

SOURCE = Path(__file__).resolve().parents[1] / "src" / "selfsup"

#: Lowest first. A module may import from its own part and from parts listed before it.
LAYERS = [
    {"errors"},
    {"arguments"},
    {"tables", "figures", "defaults", "files"},
    {"engine"},
    {"data"},
    {"models"},
    {"losses"},
    {"blocks"},
    {"views"},
    {"methods"},
    {"eval"},
    {"learners"},
    {"config"},
    {"report"},
    {"recipes"},
    {"explore"},
    {"export", "demo"},
    {"reproduce"},
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
                # A name of the package itself (``from . import __version__``) is not a part.
                if parts and parts[0] and ((SOURCE / parts[0]).is_dir() or (SOURCE / f"{parts[0]}.py").is_file()):
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


@pytest.mark.parametrize("path", sorted((SOURCE / "recipes").glob("*.py")), ids=lambda p: p.name)
def test_recipes_define_no_model(path):
    module = importlib.import_module(f"selfsup.recipes.{path.stem}" if path.stem != "__init__" else "selfsup.recipes")
    models = [name for name, value in vars(module).items()
              if inspect.isclass(value) and value.__module__ == module.__name__ and issubclass(value, nn.Module)]
    assert not models, f"{path.name} defines models {models}: they belong in selfsup.learners (or methods)"


def test_learners_do_not_reach_the_recipes_that_fit_them():
    for path in (SOURCE / "learners").rglob("*.py"):
        assert not imported_parts(path) & {"recipes", "config", "report"}, path.relative_to(SOURCE)


def test_matplotlib_is_set_up_in_one_place():
    """Every figure is drawn by ``selfsup.figures``: no other module imports matplotlib."""
    drawing = sorted(str(p.relative_to(SOURCE)) for p in MODULES if "matplotlib" in p.read_text())
    assert drawing == ["figures.py"], drawing


@pytest.mark.parametrize("path", sorted((SOURCE / "cli").glob("*.py")), ids=lambda p: p.name)
def test_cli_files_stay_small(path):
    assert len(path.read_text().splitlines()) <= 250, f"cli/{path.name}: split it by family of commands"


def test_the_parser_is_built_without_torch():
    """``selfsup --help`` answers at once: defaults come from torch-free ``selfsup.defaults``."""
    code = ("import sys; from selfsup.cli import build_parser; build_parser().format_help(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_readme_states_the_import_order_the_test_enforces():
    """The README's layout section is the same order as LAYERS, and every part of the tree is in it."""
    readme = (SOURCE.parents[1] / "README.md").read_text()
    block = readme.split("Layout of `src/selfsup/`", 1)[1].split("```", 2)[1]
    stated = [set(group.replace(",", " ").split()) for group in block.replace("\n", " ").split("<")]
    assert stated == [parts for parts in LAYERS if parts != {"__main__"}]
