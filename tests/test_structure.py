"""The shape of the product code (everything but tests/ and bench/): modules of at most 400 lines,
functions of at most 80, no sys.path edits, no private attributes of other libraries, and the
status words and study file names defined in one place each (mitoseg/core/status.py, mitoseg/core/paths.py)."""
import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
STATUS_WORDS = ("ok", "diverged", "failed", "interrupted", "missing", "unreadable", "started", "running",
                "stalled", "finished", "running elsewhere")
OWNED_NAMES = re.compile(r"grid_config\.json|confirm_config\.json|hyperparameter_summary\.csv|"
                         r"hyperparameter_report\.md|analysis_summary\.json|_results\.json|_history\.csv|"
                         r"run_analysis\.sh|analysis_job|\.mitoseg_jobs|local_logs|training_log\.txt|exp_\*|\.cell\.lock|"
                         r"overlay_|train_state\.json")


def product_files() -> list[Path]:
    skip = {"tests", "bench", ".git", "examples"}
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part in skip or part.startswith(".venv") for part in p.relative_to(ROOT).parts))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def trees():
    return {path: ast.parse(path.read_text()) for path in product_files()}


def test_there_is_product_code_to_check(trees):
    names = {rel(p) for p in trees}
    assert {"train_one.py", "models.py", "mitoseg/core/paths.py", "mitoseg/core/status.py"} <= names


def test_no_module_over_400_lines(trees):
    long = {rel(p): n for p in trees if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_over_80_lines(trees):
    long = [f"{rel(p)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p, tree in trees.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_no_sys_path_edits(trees):
    edits = [f"{rel(p)}:{node.lineno}" for p, tree in trees.items() for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "path"
             and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert edits == []


def test_no_private_attributes_of_other_objects(trees):
    """obj._name is allowed on self/cls only; a module's own private names are reached without a dot."""
    found = [f"{rel(p)}:{node.lineno} .{node.attr}" for p, tree in trees.items() for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
             and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    assert found == []


def _parents(tree) -> dict:
    return {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _is_key(node, parent) -> bool:
    """A dict key or a subscript/.get() key: a field name, not a value of that field."""
    return (isinstance(parent, ast.Dict) and any(k is node for k in parent.keys)
            or isinstance(parent, ast.Subscript) and parent.slice is node
            or isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute)
            and parent.func.attr == "get" and parent.args[:1] == [node])


def _docstrings(tree) -> set:
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def test_status_words_are_defined_only_in_mitoseg_status(trees):
    """No other module spells a status value as a string literal: it asks mitoseg.core.status."""
    found = []
    for p, tree in trees.items():
        if rel(p) == "mitoseg/core/status.py":
            continue
        parents, docs = _parents(tree), _docstrings(tree)
        found += [f"{rel(p)}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in STATUS_WORDS and id(node) not in docs
                  and not _is_key(node, parents.get(id(node)))]
    assert found == []


PATH_CALLS = {"glob", "rglob", "with_name", "joinpath", "join", "Path"}


def _builds_a_path(node, parent) -> bool:
    """The literal is joined into a path: `folder / "name"`, Path("name"), .glob("*name"), os.path.join."""
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div):
        return True
    if isinstance(parent, ast.Call):
        func = parent.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in PATH_CALLS and any(a is node for a in parent.args)
    return False


def test_study_file_names_are_spelled_only_in_mitoseg_paths(trees):
    """Messages and help texts may name files; code that builds a path asks mitoseg.core.paths."""
    found = []
    for p, tree in trees.items():
        if rel(p) == "mitoseg/core/paths.py":
            continue
        parents = _parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            else:
                continue
            if OWNED_NAMES.search(text) and _builds_a_path(node, parents.get(id(node))):
                found.append(f"{rel(p)}:{node.lineno} {text[:60]!r}")
    assert found == []


BLOCK = '''
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"numpy", "pandas", "scipy", "tensorflow", "keras", "matplotlib", "statsmodels"}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
for module in sys.argv[1:]:
    importlib.import_module(module)
'''


# The layers are the folders of mitoseg/ (mitoseg/__init__.py LAYERS, bottom to top): a module imports
# only its own layer and the layers below it, wherever the import is written (a lazy import inside a
# function included); the layers whose __init__ says so import with the standard library alone.
def _package_modules(layer: str) -> list[str]:
    folder = ROOT / "mitoseg" / layer
    return sorted(f"mitoseg.{layer}." + p.stem for p in folder.glob("*.py") if p.stem != "__init__")


def _imported_modules(path: Path, tree) -> list[tuple[int, str]]:
    """(line, dotted module) of every mitoseg import in a file; `from mitoseg.x import y` names
    mitoseg.x.y when y is a module."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mitoseg"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] != "mitoseg":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (ROOT / Path(*sub.split("."))).is_dir()
                found.append((node.lineno, sub if is_module else base))
    return found


def test_every_module_lives_in_a_layer_folder():
    import mitoseg
    top = sorted(p.name for p in (ROOT / "mitoseg").glob("*.py"))
    folders = sorted(p.name for p in (ROOT / "mitoseg").iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert top == ["__init__.py"]
    assert sorted(mitoseg.LAYERS) == folders
    for layer in mitoseg.LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / "mitoseg" / layer / "__init__.py").read_text()))
        assert doc and "May import:" in doc, f"mitoseg/{layer}/__init__.py: say what the layer owns and may import"


def test_a_layer_imports_only_itself_and_the_layers_below(trees):
    from mitoseg import LAYERS
    wrong = []
    for path, tree in trees.items():
        parts = path.relative_to(ROOT).parts
        if parts[0] != "mitoseg" or len(parts) < 3:
            continue
        mine = LAYERS.index(parts[1])
        for line, module in _imported_modules(path, tree):
            layer = module.split(".")[1] if module.count(".") else None
            if layer is not None and layer in LAYERS and LAYERS.index(layer) > mine:
                wrong.append(f"{rel(path)}:{line} imports {module} (layer {layer} is above {parts[1]})")
    assert wrong == []


def test_the_standard_library_layers_import_without_numpy():
    """run_study.py, the job scripts' element and the pre-flight run with a host Python that may lack numpy."""
    import subprocess
    import sys

    from mitoseg import LAYERS, STANDARD_LIBRARY_LAYERS
    assert set(STANDARD_LIBRARY_LAYERS) <= set(LAYERS)
    modules = [m for layer in STANDARD_LIBRARY_LAYERS for m in _package_modules(layer)] + ["run_study", "train_one"]
    proc = subprocess.run([sys.executable, "-c", BLOCK, *modules], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_finished_cells_data_fingerprint_needs_no_numpy(tmp_path):
    """`run_study.py submit` and every element fingerprint the data of finished cells on the host Python."""
    import subprocess
    import sys
    (tmp_path / "training.tif").write_bytes(b"not read")
    (tmp_path / "training_groundtruth.tif").write_bytes(b"not read either")
    call = BLOCK + "import os; print(importlib.import_module('mitoseg.core.identity').data_fingerprint(os.environ['DATA']))\n"
    proc = subprocess.run([sys.executable, "-c", call, "mitoseg.core.identity"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DATA": str(tmp_path)})
    assert proc.returncode == 0 and "'files': 2" in proc.stdout, proc.stderr[-2000:]
