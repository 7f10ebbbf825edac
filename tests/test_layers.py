"""The package is a pipeline whose floors import only downward: the ground floor (errors, files,
cli, quiet, allocator), then data and models, quantization, training, export, and the entry
points (train, predict, demo, sweep, config and each package's command line)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vidaccel_train"
FLOORS = {
    "errors": 0, "files": 0, "cli": 0, "quiet": 0, "allocator": 0,
    "data": 1, "models": 1,
    "quantization": 2,
    "training": 3,
    "export": 4,
}  # fmt: skip
ENTRY = 5  # train, predict, demo, sweep, config, __main__ modules, the dataset tools' command lines


def _floor(module: str) -> int:
    parts = module.split(".")
    if parts[-1] == "__main__":
        return ENTRY
    return FLOORS.get(parts[1], ENTRY) if len(parts) > 1 else ENTRY


def _imports(path: Path) -> list[tuple[str, int, str | None]]:
    """(imported module, line, outermost enclosing function) for every import of the project in
    ``path``; each import counted once."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and function is None:
            function = node.name
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found.extend((n, node.lineno, function) for n in names if n.startswith("vidaccel_train."))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text()), None)
    return found


def test_no_module_imports_a_higher_floor():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = _floor(module)
        for imported, line, function in _imports(path):
            # The dataset tools' command lines (data/check.py, data/prepare.py `main`) are entry points.
            if function == "main" and module.startswith("vidaccel_train.data."):
                continue
            if _floor(imported) > own:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({module}, floor {own}) imports {imported}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_export_library_knows_no_training_config_or_hydra():
    for path in sorted((PACKAGE / "export").glob("*.py")):
        if path.name == "__main__.py":
            continue
        source = path.read_text()
        for forbidden in ("vidaccel_train.training", "vidaccel_train.config", "import hydra", "from hydra"):
            assert forbidden not in source, f"{path.name} uses {forbidden}"


def test_errors_are_imported_from_errors_only():
    """Every error class a user can cause lives in ``vidaccel_train/errors.py`` and is imported from
    there, in the package, its tests and scripts: no other module passes one on."""
    from vidaccel_train.errors import USER_ERRORS

    names = {error.__name__ for error in USER_ERRORS}
    wrong = []
    for path in sorted(
        [*PACKAGE.rglob("*.py"), *PACKAGE.parent.glob("tests/**/*.py"), *PACKAGE.parent.glob("scripts/*.py")]
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "vidaccel_train.errors":
                wrong += [
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {a.name} from {node.module}"
                    for a in node.names
                    if a.name in names
                ]
    assert not wrong, "\n".join(wrong)
