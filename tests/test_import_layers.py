"""The package layers of docs/architecture.md: no module imports from a layer above its own.

Every ``import`` and ``from ... import`` in ``jaxslim/`` is read from the source (at module level,
inside functions and under ``TYPE_CHECKING`` alike), so an upward dependency cannot hide in a
function-level import. Packages of one layer may not import each other either: a layer's packages
are independent.
"""

import ast
import pathlib
import sys

import jaxslim

ROOT = pathlib.Path(jaxslim.__file__).parent

# bottom to top; a module may import its own package and anything in a lower layer
LAYERS = (
    ("config", "paths"),
    ("tree", "method"),
    ("sharding",),
    ("nn",),
    ("moe",),
    ("models",),
    ("engine",),
    ("data", "checkpoint", "optim"),
    ("convert",),
    ("grow", "prune"),
    ("training",),
    ("aot",),
    ("cli",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
TOP = len(LAYERS)  # jaxslim/__init__.py: the flat public API over everything


def _unit(module: str) -> str:
    """``jaxslim.prune.masks`` -> ``prune``; ``jaxslim`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path):
    """(line, imported module) of every import of a ``jaxslim`` module in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                targets = [".".join(base + ([node.module] if node.module else []))]
            else:
                targets = [node.module or ""]
        else:
            continue
        for t in targets:
            if t == "jaxslim" or t.startswith("jaxslim."):
                yield node.lineno, t


def _violations() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        unit = _unit(name)
        rank = RANK[unit] if unit else TOP
        for line, target in _imports(path):
            other = _unit(target)
            if other == unit:
                continue
            other_rank = RANK.get(other, TOP) if other else TOP
            if other_rank >= rank:
                where = "the same layer" if other_rank == rank else "a higher layer"
                found.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target} ({where})")
    return found


def test_every_module_is_in_a_layer():
    units = {_unit(_module_name(p)) for p in ROOT.rglob("*.py")} - {""}
    assert units <= set(RANK), f"modules outside every layer: {sorted(units - set(RANK))}"


def test_no_import_points_up_or_sideways():
    bad = _violations()
    assert not bad, "imports against the layers of docs/architecture.md:\n  " + "\n  ".join(bad)


def test_the_check_sees_function_level_imports(tmp_path, monkeypatch):
    """The checker itself: an upward import hidden inside a function is reported."""
    pkg = tmp_path / "jaxslim"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("def f():\n    from jaxslim.training import train\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    assert _violations() == ["jaxslim/models/__init__.py:2 imports jaxslim.training (a higher layer)"]
