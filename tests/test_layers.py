"""The package's layers, read from the import statements of every module (no import is executed).

Layers, lowest first; a module may import its own layer and those below it, never above:

    core          SDEs, chains, parameterisations, mixtures, the score protocol
    solvers       samplers (imports only core)
    models, data  networks; data sets
    training, evaluation, interop    losses/EMA/checkpoints; likelihood/ELBO/metrics/benchmark; wrappers
    conditioning  guidance, classifiers, imputation
    app           config, command line, workdir, demo (nothing imports it)

Only ``app`` reads an ml_collections config (or parses flags with absl).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RANK = {
    "core": 0,
    "solvers": 1,
    "models": 2,
    "data": 2,
    "training": 3,
    "evaluation": 3,
    "interop": 3,
    "conditioning": 4,
    "app": 5,
}
CONFIG_LIBRARIES = ("ml_collections", "absl")


def layer_of(module: str) -> str | None:
    """``solvers.x`` -> solvers; ``sde_diffusion.<layer>.x`` -> layer; the package root -> None."""
    parts = module.split(".")
    if module == "sde_diffusion.__main__":
        return None
    if parts[0] == "solvers":
        return "solvers"
    if parts[0] == "sde_diffusion" and len(parts) > 1:
        if parts[1] not in RANK:
            raise AssertionError(f"{module}: sde_diffusion.{parts[1]} is not a layer; add it to RANK in this test")
        return parts[1]
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (module ``name``), relative ones resolved."""
    package = name.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out += [(node.lineno, f"{module}.{alias.name}" if not node.module or layer_of(module) is None else module)
                    for alias in node.names]
    return out


MODULES = sorted(p for top in ("sde_diffusion", "solvers") for p in (REPO / top).rglob("*.py"))


def test_every_module_is_in_a_layer():
    assert MODULES
    for path in MODULES:
        name = module_name(path)
        assert name in ("sde_diffusion", "sde_diffusion.__main__") or layer_of(name) is not None, name


def check_imports(path: Path, name: str) -> None:
    here = layer_of(name)
    for line, module in imports(path, name):
        there = layer_of(module)
        where = f"{name}:{line} imports {module}"
        if module.split(".")[0] in CONFIG_LIBRARIES:
            assert here == "app", f"{where}: only app reads an ml_collections config"
        if there is None:
            continue
        if here is None:  # the package root and ``python -m sde_diffusion``
            assert there != "app" or name == "sde_diffusion.__main__", where
            continue
        assert RANK[there] <= RANK[here], f"{where}: layer {here!r} may not import layer {there!r}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_down(path: Path):
    check_imports(path, module_name(path))


def test_the_rule_catches_an_upward_import(tmp_path: Path):
    """The checker itself: upward imports, relative ones included, and config reads are reported."""
    probe = tmp_path / "probe.py"
    cases = {
        "from sde_diffusion.app import config\n": "may not import layer 'app'",
        "from ..evaluation import metrics\n": "may not import layer 'evaluation'",
        "import ml_collections\n": "only app reads",
    }
    for source, message in cases.items():
        probe.write_text(source, encoding="utf-8")
        with pytest.raises(AssertionError, match=message):
            check_imports(probe, "sde_diffusion.core.probe")
    probe.write_text("from sde_diffusion.models import unet\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="layer 'solvers' may not import layer 'models'"):
        check_imports(probe, "solvers.probe")
