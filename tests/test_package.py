"""The project as a package and as commands: the wheel (console commands, job scripts, no top-level
modules), the installed package used from another folder with a Python 3.8 that has nothing but the
standard library, the one-line refusal of older Pythons, --help without TensorFlow, --version with
the git commit, and the hidden old flag spellings."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mitoseg.core.version import version_info, version_line
from tests.test_structure import BLOCK

REPO = Path(__file__).resolve().parents[1]
PYENV = Path("/root/.pyenv/versions")
FRONT_ENDS = ("run_study.py", "train_one.py", "analyze_hyperparameter_results.py", "predict.py", "models.py")
COMMANDS = {"mitoseg-study", "mitoseg-train", "mitoseg-analyze", "mitoseg-predict", "mitoseg-models"}
JOB_SCRIPTS = ("pbs_hyperparameter_optimization.sh", "slurm_hyperparameter_optimization.sh",
               "pbs_setup_verification.sh", "slurm_setup_verification.sh")


def _pyenv(version: str) -> Path:
    python = next(iter(sorted(PYENV.glob(f"{version}.*/bin/python"))), None)
    if python is None:
        pytest.skip(f"no Python {version} in {PYENV}")
    return python


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tracked files (the build writes build/ into its source)."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split()
    src = tmp / "src"
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next((tmp / "dist").glob("mitoseg_hpo-*.whl"))


def test_the_wheel_holds_the_package_its_job_scripts_and_commands_and_no_top_level_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"mitoseg", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, top
    assert {f"mitoseg/jobs/{name}" for name in JOB_SCRIPTS} <= set(names)
    assert {"mitoseg/cli/study.py", "mitoseg/cli/train.py", "mitoseg/build_info.json"} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert set(re.findall(r"^(mitoseg-\w+) = ", entry_points, re.M)) == COMMANDS
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    base = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert base == [] and "Requires-Python: >=3.8" in metadata   # a login node needs the standard library alone


@pytest.fixture(scope="module")
def venv38(wheel, tmp_path_factory) -> Path:
    """The wheel installed --no-deps into a Python 3.8 virtualenv (no numpy, no TensorFlow)."""
    venv = tmp_path_factory.mktemp("venv38") / "venv"
    subprocess.run([str(_pyenv("3.8")), "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)
    return venv / "bin"


def _demo_study(path: Path) -> Path:
    from mitoseg.core import grid as G
    G.init_study(path, G.demo_grid())
    return path


def _run(cmd, cwd, **kw):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300, **kw)


def test_installed_commands_work_from_another_folder_on_python_38_without_numpy(venv38, tmp_path):
    assert _run([venv38 / "python", "-c", "import numpy"], tmp_path).returncode != 0
    assert _run([venv38 / "python", "-c", "import models"], tmp_path).returncode != 0   # no top-level module
    r = _run([venv38 / "mitoseg-study", "--help"], tmp_path)
    assert r.returncode == 0 and "submit" in r.stdout, r.stderr
    r = _run([venv38 / "mitoseg-study", "list", "--demo"], tmp_path)
    assert r.returncode == 0 and "exp_05_" in r.stdout, r.stderr
    for scheduler, script in (("slurm", "slurm_hyperparameter_optimization.sh"),
                              ("pbs", "pbs_hyperparameter_optimization.sh")):
        r = _run([venv38 / "mitoseg-study", "submit", "--scheduler", scheduler, "--demo", "--dry-run",
                  "--output-dir", tmp_path / scheduler], tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("array job "))
        job = Path(line.split()[-1])
        assert job.name == script and job.is_file() and "site-packages/mitoseg/jobs" in str(job)
        assert "-m mitoseg.cli.study analyze" in r.stdout and "mitoseg-study status --study-dir" in r.stdout
    study = _demo_study(tmp_path / "study")
    r = _run([venv38 / "mitoseg-study", "status", "--study-dir", study], tmp_path)
    assert r.returncode == 0 and "6 cells: 6 missing" in r.stdout, r.stderr
    r = _run([venv38 / "mitoseg-study", "--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("mitoseg-hpo 0.3.0 (")


@pytest.mark.parametrize("version", ["3.6", "3.7"])
def test_an_older_python_is_refused_in_one_line(version, tmp_path):
    python = _pyenv(version)
    for front_end in FRONT_ENDS[:4]:
        r = _run([python, "-S", REPO / front_end, "--help"], tmp_path)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert re.fullmatch(rf"error: mitoseg-hpo needs Python >= 3\.8 \(this is {version}\.\d+ at \S+\)\n", r.stderr)
    r = _run([python, "-S", "-m", "mitoseg.cli.study", "list"], REPO)   # the job scripts' call
    assert r.returncode == 2 and r.stderr.startswith("error: mitoseg-hpo needs Python >= 3.8")


def test_the_login_node_commands_run_on_python_38_without_site_packages(tmp_path):
    python = _pyenv("3.8")
    r = _run([python, "-S", REPO / "run_study.py", "list", "--demo"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run([python, "-S", REPO / "run_study.py", "submit", "--scheduler", "slurm", "--demo", "--dry-run",
              "--output-dir", tmp_path], tmp_path)
    assert r.returncode == 0 and "array job (6 elements): sbatch" in r.stdout, r.stderr
    study = _demo_study(tmp_path / "study")
    for args in (["status", "--study-dir", study], ["status", "--study-dir", study, "--json"]):
        r = _run([python, "-S", REPO / "run_study.py", *args], tmp_path)
        assert r.returncode == 0, r.stderr
    # the confirmation's selection and the analysis read the results with pandas: one line naming the extra
    for cmd in ([REPO / "run_study.py", "confirm", "--study-dir", study, "--seeds", "2", "--scheduler", "slurm"],
                [REPO / "analyze_hyperparameter_results.py", "--study-dir", study]):
        r = _run([python, "-S", *cmd], tmp_path)
        assert r.returncode == 2 and r.stdout == "", r.stdout
        assert re.fullmatch(r"error: \w+ is not installed here \(\S+\); this command needs the \[analysis\] "
                            r"extra: pip install 'mitoseg-hpo\[analysis\]' \(or run it in the training environment\)\n",
                            r.stderr), r.stderr


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_help_imports_no_tensorflow_or_numpy(front_end, tmp_path):
    call = BLOCK.replace("for module in sys.argv[1:]:\n    importlib.import_module(module)\n", "") + (
        "import runpy\nsys.argv = [sys.argv[1], '--help']\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    r = _run([sys.executable, "-c", call, REPO / front_end], tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-2000:]
    assert r.stderr == ""


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_version_names_the_code(front_end, tmp_path):
    r = _run([sys.executable, REPO / front_end, "--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == version_line(), r.stderr


def test_version_info_reads_this_checkout():
    info = version_info()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert info["version"] == re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert info["git_commit"] == commit and isinstance(info["git_dirty"], bool)
    assert version_line(dict(version="1.2", git_commit="a" * 40, git_dirty=True)) == "mitoseg-hpo 1.2 (git aaaaaaaaaaaa, modified)"
    assert version_line(dict(version="1.2", git_commit=None, git_dirty=None)) == "mitoseg-hpo 1.2 (git commit unknown)"


def test_old_flag_spellings_are_accepted_but_not_shown():
    from mitoseg.cli import analyze, study
    parser = study.build_parser()
    for old in ("--root", "--output-dir"):
        args = parser.parse_args(["local", "--demo", old, "somewhere"])
        assert args.root == "somewhere"
    assert parser.parse_args(["verify", "--output-root", "x"]).output_root == "x"
    assert parser.parse_args(["submit", "--scheduler", "pbs"]).scheduler == "pbs"
    r = _run([sys.executable, REPO / "analyze_hyperparameter_results.py", "--help"], REPO)
    assert "--summary-file" in r.stdout and "--summary_file" not in r.stdout and "--output_dir" not in r.stdout
    assert analyze.main(["--summary_file", "/nonexistent/summary.csv", "--output_dir", "/nonexistent"]) == 2
