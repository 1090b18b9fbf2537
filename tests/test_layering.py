"""The package's layers: every import between its parts goes down, never up or sideways.

Imports inside functions count (they are edges all the same); imports under `TYPE_CHECKING` are
type-only and do not. A new part of the package needs a row in `LAYERS`.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "zegot_jax"

# Top to bottom; a part may import only parts on lower rows (and itself).
LAYERS = (
    ("cli",),
    ("demo",),
    ("experiments",),
    ("inference",),
    ("train",),
    ("evaluation",),
    ("runs",),
    ("configs",),
    ("models", "data", "viz"),
    ("synthetic",),
    ("clip", "ot"),
    ("storage",),
    ("distributed",),
    ("errors", "sharding", "strict_json", "tables"),
)
LEVEL = {part: len(LAYERS) - row for row, parts in enumerate(LAYERS) for part in parts}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The package modules `tree` imports, outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("zegot_jax"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zegot_jax"):
            for alias in node.names:  # `from zegot_jax import ot` imports the module zegot_jax.ot
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "<package>"


def _edges() -> dict[tuple[str, str], list[str]]:
    """(importing part, imported part) -> the module pairs that make that edge."""
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in paths.items():
        for target in _imports(ast.parse(path.read_text()), set(paths)):
            a, b = _part(module), _part(target)
            if a != b:
                edges.setdefault((a, b), []).append(f"{module} -> {target}")
    return edges


def test_every_part_has_a_layer():
    parts = {_part(_module(p)) for p in PACKAGE.rglob("*.py")} - {"<package>"}
    assert parts <= set(LEVEL), f"parts without a layer: {sorted(parts - set(LEVEL))}"


def test_imports_only_go_down():
    upward = [
        f"{' ; '.join(modules)}"
        for (a, b), modules in sorted(_edges().items())
        if b == "<package>" or LEVEL.get(b, 99) >= LEVEL.get(a, -1)
    ]
    assert not upward, "imports that do not go down:\n" + "\n".join(upward)


def test_the_checker_sees_upward_and_type_only_imports():
    source = (
        "from zegot_jax.train import loop\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from zegot_jax.cli import main\n"
        "def f():\n    from zegot_jax import inference\n"
    )
    modules = {"zegot_jax.train.loop", "zegot_jax.inference", "zegot_jax.cli"}
    assert _imports(ast.parse(source), modules) == {"zegot_jax.train.loop", "zegot_jax.inference"}
