"""The supported range (pyproject.toml) is true: the environment running this test lies inside it
(run_tests.sh runs it in .venv/ and in .venv-oldest/, the two ends), requirements-oldest.txt pins
its lower bounds, and the README and docs/development.md state the same range."""
from __future__ import annotations

import importlib.metadata as md
import platform
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)

REPO = Path(__file__).resolve().parents[1]


def _project() -> tuple[SpecifierSet, list[Requirement]]:
    """The training Python range ([tool.mitoseg] training-requires-python) and the requirements of
    the [train] and [analysis] extras of pyproject.toml (tomllib is 3.11+: read the keys)."""
    text = (REPO / "pyproject.toml").read_text()
    python = re.search(r'^training-requires-python\s*=\s*"([^"]+)"', text, re.M).group(1)
    reqs = {}
    for extra in ("train", "analysis"):
        block = re.search(rf"^{extra}\s*=\s*\[(.*?)^\]", text, re.M | re.S).group(1)
        reqs.update({r.name: r for r in (Requirement(t) for t in re.findall(r'"([^"]+)"', block))})
    return SpecifierSet(python), list(reqs.values())


def _login_python() -> SpecifierSet:
    text = (REPO / "pyproject.toml").read_text()
    return SpecifierSet(re.search(r'^requires-python\s*=\s*"([^"]+)"', text, re.M).group(1))


def _pins(name: str) -> dict[str, Version]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            pins[m.group(1).lower()] = Version(m.group(2))
    return pins


def _lower(spec: SpecifierSet) -> Version:
    return min(Version(s.version) for s in spec if s.operator == ">=")


def _upper_minor(spec: SpecifierSet) -> str:
    """'<2.22' -> '2.21': the newest minor release the range admits."""
    bound = Version(next(s.version for s in spec if s.operator == "<"))
    return f"{bound.major}.{bound.minor - 1}"


def test_this_environment_is_inside_the_declared_range():
    python, deps = _project()
    assert platform.python_version() in python, f"Python {platform.python_version()} outside {python}"
    for req in deps:
        installed = md.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} outside {req.specifier}"


def test_oldest_requirements_pin_the_lower_bounds():
    _, deps = _project()
    pins = _pins("requirements-oldest.txt")
    for req in deps:
        assert pins[req.name.lower()] == _lower(req.specifier), (req.name, pins[req.name.lower()], req.specifier)


def test_pinned_requirements_are_inside_the_range():
    _, deps = _project()
    pins = _pins("requirements.txt")
    for req in deps:
        assert req.specifier.contains(pins[req.name.lower()]), (req.name, pins[req.name.lower()], req.specifier)


@pytest.mark.parametrize("page", ["README.md", "docs/development.md"])
def test_the_docs_state_the_range(page):
    python, deps = _project()
    by_name = {r.name: r.specifier for r in deps}
    text = (REPO / page).read_text()
    for label, spec in (("Python", python), ("TensorFlow", by_name["tensorflow"]), ("Keras", by_name["keras"])):
        low = _lower(spec)
        stated = f"{label} {low.major}.{low.minor}-{_upper_minor(spec)}"
        assert stated in text, f"{page} does not state '{stated}'"


def test_the_base_install_needs_the_standard_library_alone_and_the_checked_python():
    """A login node installs the package without extras: no dependencies, and the Python it
    refuses (mitoseg/__init__.py) is the one pyproject.toml excludes."""
    import mitoseg
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r"^dependencies\s*=\s*\[\]", text, re.M)
    low = _lower(_login_python())
    assert (low.major, low.minor) == mitoseg.MIN_PYTHON


def test_every_declared_package_is_imported_by_the_product_and_every_import_declared():
    """What the product code imports outside the standard library is declared, and nothing more
    (seaborn and scikit-image were named but never imported: dropped)."""
    import ast
    import sys
    from mitoseg.cell.environment import PACKAGES
    _, deps = _project()
    # h5py: Keras' HDF5 writer, imported by Keras; imagecodecs: tifffile's codecs, imported by tifffile
    declared = {r.name.lower() for r in deps} - {"h5py", "imagecodecs"}
    files = [*REPO.glob("*.py"), *REPO.glob("mitoseg/**/*.py")]
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("mitoseg", "setuptools")}
    by_import = {mod: dist for mod, dist in PACKAGES.items()}
    assert third_party <= set(by_import), third_party - set(by_import)
    assert {by_import[m].lower() for m in third_party} == declared
