"""The auth package stands alone: an ast scan of its modules for imports that would tie it to the
rest of the service or to a web framework."""

import ast
from pathlib import Path

import pytest

AUTH_DIR = Path(__file__).resolve().parents[2] / "src" / "timesheets" / "auth"
MODULES = sorted(AUTH_DIR.rglob("*.py"))
FRAMEWORKS = ("starlette", "fastapi")


def imported_modules(path: Path) -> list[tuple[int, int, str]]:
    """(line, relative level, module) for every import statement in the file."""
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, 0, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.level, node.module or ""))
    return found


def test_auth_package_has_modules_to_scan():
    names = {path.name for path in MODULES}
    assert {"__init__.py", "verifier.py", "jwks.py", "errors.py", "bearer.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.relative_to(AUTH_DIR).as_posix())
def test_auth_module_imports_nothing_of_timesheets_outside_auth(path: Path):
    depth = len(path.relative_to(AUTH_DIR).parts) - 1  # 0 for auth/x.py, 1 for auth/sub/x.py
    offending = [
        (line, "." * level + module)
        for line, level, module in imported_modules(path)
        # Inside the package only relative imports, and none that climbs out of auth/.
        if (level == 0 and (module == "timesheets" or module.startswith("timesheets.")))
        or level > depth + 1
    ]
    assert offending == []


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.relative_to(AUTH_DIR).as_posix())
def test_auth_module_imports_no_web_framework(path: Path):
    offending = [
        (line, module)
        for line, level, module in imported_modules(path)
        if level == 0 and module.split(".")[0] in FRAMEWORKS
    ]
    assert offending == []


def test_import_scan_finds_forbidden_imports(tmp_path: Path):
    # The scan itself must see every form of import.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import starlette.requests\n"
        "from timesheets.db import connect\n"
        "from .. import config\n"
        "from .errors import InvalidToken\n"
        "def late():\n"
        "    import timesheets\n"
    )
    assert imported_modules(sample) == [
        (1, 0, "starlette.requests"),
        (2, 0, "timesheets.db"),
        (3, 2, ""),
        (4, 1, "errors"),
        (6, 0, "timesheets"),
    ]
