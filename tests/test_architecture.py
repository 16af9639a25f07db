"""The floors of docs/ARCHITECTURE.md: every import inside pmoe points to a lower floor (or stays in its package)."""
from __future__ import annotations

import ast
from pathlib import Path

import pmoe

FLOORS = {
    **dict.fromkeys(("errors", "io", "fields", "options", "outputs", "reports"), 0),
    "data": 1, "layers": 1, "metrics": 2, "models": 2, "prune": 3, "analysis": 3, "checkpoints": 4, "hf": 4,
    "train": 5, "runs": 6, "experiments": 7, "cli": 8, "__main__": 9,
}
ROOT = Path(pmoe.__file__).parent


def imports(path: Path) -> set[str]:
    """The pmoe packages (first name after `pmoe.`) that the module at `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {n.split(".")[1] for n in names if n.startswith("pmoe.")}
    return found


def test_every_package_has_a_floor():
    packages = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.glob("*") if p.name != "__init__.py"
                and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert packages == set(FLOORS)


def test_no_module_imports_from_a_floor_above_it():
    upward = []
    for path in ROOT.rglob("*.py"):
        package = path.relative_to(ROOT).parts[0].removesuffix(".py")
        if package == "__init__":
            continue
        for target in imports(path) - {package}:
            if FLOORS[target] >= FLOORS[package] and not FLOORS[target] == FLOORS[package] == 0:
                upward.append(f"{path.relative_to(ROOT)} imports pmoe.{target}")
    assert upward == []
