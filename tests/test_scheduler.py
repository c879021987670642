"""The job scripts on a REAL one-node Slurm cluster (tests/slurm_cluster.py; skipped without Slurm).

A tiny 2-cell study (synthetic data, 4 base filters, 1 epoch) goes through
* `sbatch slurm_hyperparameter_optimization.sh`, and
* `qsub -J 0-1 pbs_hyperparameter_optimization.sh` (slurm-wlm-torque's wrapper; the elements see
  PBS_ARRAY_INDEX / PBS_O_WORKDIR from spank_pbs, and SLURM_* too, so they submit the analysis with
  sbatch);
with the study folder chosen by the elements themselves (no STUDY_DIR: the array-id pointer file).
Each test checks every element COMPLETED with a results JSON of status ok, the analysis job
(submitted by the first element, afterany on the array) COMPLETED after the array and wrote the
report; the Slurm test then resubmits into the same study and checks the finished cells were
skipped (results untouched) and the analysis ran again.

The scripts' own resource lines (8 CPUs, 64 GB, a GPU) do not fit this node, so the tests
override them on the command line, as a user of a small cluster would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mitoseg.core import paths as P
from mitoseg.core import grid as G
from mitoseg.core.results import load_results
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 420   # per wait; a tiny cell takes ~30-60 s here, two run at a time on the 2-CPU node
TINY = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8, 16],
                    fixed=dict(epochs=1, patch_size=32, base_filters=4, depth=3, synthetic_slices=10,
                               synthetic_size=64, early_stopping_patience=5))


def _submit_dir(tmp_path: Path) -> tuple[Path, dict]:
    """A submit folder outside the repository and the environment the user would export before
    submitting: the job script's `python -m mitoseg.cli.study` finds the code through PYTHONPATH
    (in the repository folder itself, or with the package installed, it needs none)."""
    sub = tmp_path / "submit"
    sub.mkdir()
    cfg = tmp_path / "tiny_grid.json"
    TINY.save(cfg)
    env = {"PYTHON": sys.executable, "PYTHONPATH": str(REPO), "GRID_CONFIG": str(cfg), "TF_CPP_MIN_LOG_LEVEL": "3",
           "MITOSEG_ANALYSIS_SBATCH_ARGS": "--cpus-per-task=1 --mem=1G --time=00:20:00"}
    env.pop("TF_CONTAINER", None)
    return sub, env


def _the_study(sub: Path) -> Path:
    studies = sorted(sub.glob(P.STUDY_PREFIX + "*"))
    assert len(studies) == 1, studies
    return studies[0]


def _wait_for_analysis(cluster, study: Path, array_id: str, previous=None) -> str:
    info_path = study / "analysis_job.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if info_path.exists():
            info = json.loads(info_path.read_text())
            if info["job_id"] != previous:
                break
        time.sleep(0.5)
    else:
        pytest.fail(f"no analysis job recorded in {info_path}")
    assert info["dependency"] == f"afterany:{array_id}"
    states = cluster.wait([info["job_id"]], timeout=TIMEOUT)
    log = P.StudyPaths(study).logs / f"analysis_job_{info['job_id']}.log"
    assert states[info["job_id"]] == {None: "COMPLETED"}, log.read_text(errors="replace")
    assert "Report:" in log.read_text(errors="replace")
    return info["job_id"]


def _check_cells(study: Path) -> dict:
    grid = G.load_study_grid(study)
    assert grid.size == 2
    out = {}
    for cell in G.cells(grid):
        paths = P.experiment_paths(study, cell.name)
        rec = load_results(paths.results_json)
        assert rec["status"] == "ok", rec["error"]
        assert rec["task_index"] == cell.index and rec["epochs_run"] == 1
        assert paths.log.exists()
        out[cell.index] = rec
    return out


def _element_logs(sub: Path, pattern: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(sub.glob(pattern)))


def test_slurm_script_array_analysis_and_resubmission(slurm_cluster, tmp_path):  # noqa: F811
    sub, extra_env = _submit_dir(tmp_path)
    env = {**slurm_cluster.env, **extra_env}
    override = ["--array=0-1", "--cpus-per-task=1", "--mem=1G", "--gres=none", "--time=00:30:00",
                "--output=" + str(sub / "first_%A_%a.out")]
    array_id = slurm_cluster.submit([*override, str(REPO / "slurm_hyperparameter_optimization.sh")], cwd=sub, env=env)
    states = slurm_cluster.wait([array_id], timeout=TIMEOUT)
    logs = _element_logs(sub, "first_*.out")
    assert states[array_id] == {0: "COMPLETED", 1: "COMPLETED"}, logs
    study = _the_study(sub)
    assert (sub / ".mitoseg_jobs").is_dir()   # the shared-folder pointer of this array
    first = _check_cells(study)
    analysis_id = _wait_for_analysis(slurm_cluster, study, array_id)
    assert (study / "hyperparameter_report.md").exists()
    assert (study / P.SUMMARY_CSV_NAME).exists()
    report_time = (study / "hyperparameter_report.md").stat().st_mtime
    last_cell = max(os.path.getmtime(P.experiment_paths(study, c.name).results_json) for c in G.cells(TINY))
    assert report_time >= last_cell

    # resubmission into the same study with `run_study.py submit` (array range from the grid, the
    # analysis job submitted by submit itself): finished cells are skipped, the analysis runs again
    r = slurm_cluster.run([sys.executable, str(REPO / "run_study.py"), "submit", "--scheduler", "slurm",
                           "--study-dir", str(study), "--", "--cpus-per-task=1", "--mem=1G", "--gres=none",
                           "--output=" + str(sub / "again_%A_%a.out")], env=env, cwd=sub, timeout=120)
    again = next(ln.split()[2].rstrip(":") for ln in r.stdout.splitlines() if ln.startswith("array job "))
    assert "--array=0-1" in r.stdout
    states = slurm_cluster.wait([again], timeout=TIMEOUT)
    logs = _element_logs(sub, "again_*.out")
    assert states[again] == {0: "COMPLETED", 1: "COMPLETED"}, logs
    assert logs.count("already finished (status ok); skipping") == 2, logs
    second = _check_cells(study)
    assert [second[i]["finished_at"] for i in (0, 1)] == [first[i]["finished_at"] for i in (0, 1)]
    assert len(list(sub.glob(P.STUDY_PREFIX + "*"))) == 1
    _wait_for_analysis(slurm_cluster, study, again, previous=analysis_id)


def test_qsub_wrapper_pbs_script(slurm_cluster, tmp_path):  # noqa: F811
    sub, extra_env = _submit_dir(tmp_path)
    env = {**slurm_cluster.env, **extra_env}
    # -J sets the array; -l overrides the script's select=1:ncpus=8:ngpus=1:mem=64gb for this node
    array_id = slurm_cluster.qsub(["-J", "0-1", "-l", "select=1:ncpus=1:mem=1gb",
                                   str(REPO / "pbs_hyperparameter_optimization.sh")], cwd=sub, env=env)
    states = slurm_cluster.wait([array_id], timeout=TIMEOUT)
    logs = _element_logs(sub, "pbs_hyperparameter_optimization.sh.o*")
    assert states[array_id] == {0: "COMPLETED", 1: "COMPLETED"}, logs
    study = _the_study(sub)
    _check_cells(study)
    assert "training with the host Python" in logs and "no container set" in logs
    _wait_for_analysis(slurm_cluster, study, array_id)
    assert (study / "hyperparameter_report.md").exists()


def test_slurm_element_runs_in_the_container_with_the_oldest_stack(slurm_cluster, tmp_path, oldest_python):  # noqa: F811
    """TF_CONTAINER path for real: the element's launcher calls `apptainer exec --nv --bind ... IMAGE
    python -m mitoseg.cli.train ...`; the stand-in apptainer (tests/bin) checks the image and bind sources and
    runs the oldest-stack Python. The cell must end ok in that stack, with the study and data folders
    (both outside the home folder) bound; the dependent analysis goes the same way."""
    from tests.fixtures_data import write_synthetic_dataset
    data = write_synthetic_dataset(tmp_path / "data", n_slices=8, height=64, width=64)
    sub, extra_env = _submit_dir(tmp_path)
    grid = G.GridConfig(architectures=["Attention_UNet"], learning_rates=[1e-3], batch_sizes=[8],
                        fixed={**TINY.fixed, "data_dir": str(data)})
    grid.save(tmp_path / "tiny_grid.json")
    image = tmp_path / "tensorflow_2.16.1-cuda_12.5.0_24.06.sif"
    image.write_text("stand-in image")
    calls = tmp_path / "apptainer_calls.jsonl"
    env = {**slurm_cluster.env, **extra_env, "TF_CONTAINER": str(image), "STANDIN_CONTAINER_PYTHON": oldest_python,
           "STANDIN_APPTAINER_LOG": str(calls),
           "PATH": f"{REPO / 'tests' / 'bin'}{os.pathsep}{slurm_cluster.env.get('PATH', os.environ['PATH'])}"}
    override = ["--array=0-0", "--cpus-per-task=1", "--mem=2G", "--gres=none", "--time=00:30:00",
                "--output=" + str(sub / "container_%A_%a.out")]
    array_id = slurm_cluster.submit([*override, str(REPO / "slurm_hyperparameter_optimization.sh")], cwd=sub, env=env)
    states = slurm_cluster.wait([array_id], timeout=TIMEOUT)
    logs = _element_logs(sub, "container_*.out")
    assert states[array_id] == {0: "COMPLETED"}, logs
    assert "warning: $TF_CONTAINER" not in logs
    study = _the_study(sub)
    rec = load_results(P.experiment_paths(study, G.cells(grid)[0].name).results_json)
    assert rec["status"] == "ok", rec["error"]
    oldest = json.loads(subprocess.run([oldest_python, "-c", "import json, platform, importlib.metadata as m; print(json.dumps("
                                        "[platform.python_version(), m.version('keras'), m.version('tensorflow')]))"],
                                       capture_output=True, text=True, check=True).stdout)
    assert [rec["environment"]["python"], rec["environment"]["packages"]["keras"],
            rec["environment"]["packages"]["tensorflow"]] == oldest
    runs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert runs[0]["cmd"][1] == "-c" and runs[0]["image"] == str(image)   # the element's probe: python starts
    assert "container python " in logs
    first = runs[1]
    assert first["image"] == str(image) and first["nv"] and first["cmd"][1:3] == ["-m", "mitoseg.cli.train"]
    assert str(study) in first["binds"] and str(data.resolve()) in first["binds"]
    _wait_for_analysis(slurm_cluster, study, array_id)
    assert any("mitoseg.cli.study analyze" in " ".join(json.loads(l)["cmd"]) for l in calls.read_text().splitlines()[2:])
def test_submit_with_a_site_profile_on_slurm(slurm_cluster, tmp_path):  # noqa: F811
    """A site profile for real: its resources, throttle (%1: one element at a time) and module line reach
    both jobs, the element logs land in STUDY/logs/, the arguments after `--` reach the analysis job too,
    and a GRID_CONFIG left in the login shell (exported with the rest of it) does not reach the elements
    (submit itself refuses one that contradicts its --grid-config: tests/test_selections.py)."""
    sub, extra_env = _submit_dir(tmp_path)
    profile = tmp_path / "site.json"
    profile.write_text(json.dumps({"_comment": "this test node", "scheduler": "slurm", "queue": "debug", "cpus": 1,
                                   "memory": "1G", "gpus": 0, "walltime": "00:30:00", "array_throttle": 1,
                                   "modules": ["echo site-module-line-ran"]}))
    env = {**slurm_cluster.env, **extra_env, "GRID_CONFIG": str(tmp_path / "tiny_grid.json")}
    r = slurm_cluster.run([sys.executable, str(REPO / "run_study.py"), "submit", "--site", str(profile),
                           "--grid-config", str(tmp_path / "tiny_grid.json"), "--", "--comment=dash-dash"],
                          env=env, cwd=sub, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"site profile: {profile} (--site)")
    assert "--array=0-1%1" in r.stdout and "--gres=none" in r.stdout and "--partition=debug" in r.stdout
    array_id = next(ln.split()[2].rstrip(":") for ln in r.stdout.splitlines() if ln.startswith("array job "))
    study = _the_study(sub)
    states = slurm_cluster.wait([array_id], timeout=2 * TIMEOUT)
    logs = _element_logs(P.StudyPaths(study).logs, "mitoseg_hpo_*.out")
    assert states[array_id] == {0: "COMPLETED", 1: "COMPLETED"}, logs
    assert logs.count("site-module-line-ran") == 2 and logs.count(f"site profile: {profile}") == 2, logs
    cells = _check_cells(study)
    assert cells[0]["finished_at"] <= cells[1]["started_at"] or cells[1]["finished_at"] <= cells[0]["started_at"]
    assert not list(sub.glob("*.out")) and not list(REPO.glob("mitoseg_hpo_*.out"))
    info = json.loads((study / "analysis_job.json").read_text())
    assert info["command"][-2] == "--comment=dash-dash" and "--partition=debug" in info["command"]
    _wait_for_analysis(slurm_cluster, study, array_id)
    analysis_log = (P.StudyPaths(study).logs / f"analysis_job_{info['job_id']}.log").read_text()
    assert analysis_log.startswith("site-module-line-ran")


def test_confirm_stage_on_slurm(slurm_cluster, tmp_path):  # noqa: F811
    """`run_study.py confirm --scheduler slurm`: an array over the confirmation indices only (after
    the grid's), through the same job script and element code; then the dependent analysis."""
    from tests.fixtures_results import record_for
    from mitoseg.core.results import save_results
    sub, extra_env = _submit_dir(tmp_path)
    env = {**slurm_cluster.env, **extra_env}
    study = sub / "study"
    G.init_study(study, TINY)
    for cell in G.cells(TINY):   # a finished grid (fake results): the confirmation stage trains for real
        P.experiment_paths(study, cell.name).exp_dir.mkdir()
        save_results(P.experiment_paths(study, cell.name).results_json,
                     record_for(cell, iou=0.8 if cell.batch_size == 8 else 0.7))
    r = slurm_cluster.run([sys.executable, str(REPO / "run_study.py"), "confirm", "--study-dir", str(study),
                           "--seeds", "2", "--scheduler", "slurm", "--", "--cpus-per-task=1", "--mem=1G", "--gres=none",
                           "--output=" + str(sub / "confirm_%A_%a.out")], env=env, cwd=sub, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--array=2-3" in r.stdout
    array_id = next(ln.split()[2].rstrip(":") for ln in r.stdout.splitlines() if ln.startswith("array job "))
    states = slurm_cluster.wait([array_id], timeout=TIMEOUT)
    logs = _element_logs(sub, "confirm_*.out")
    assert states[array_id] == {2: "COMPLETED", 3: "COMPLETED"}, logs
    for cell, seed in zip(G.confirm_cells(study), (43, 44)):
        rec = load_results(P.experiment_paths(study, cell.name).results_json)
        assert rec["status"] == "ok" and rec["seed"] == seed and rec["batch_size"] == 8   # the validation winner
        assert rec["task_index"] == cell.index and len(rec["test"]["slices"]) == rec["test"]["n_slices"]
    _wait_for_analysis(slurm_cluster, study, array_id)
    report = (study / "hyperparameter_report.md").read_text()
    assert "| exp_02_UNet_lr0.001_bs8_seed43 |" in report and "a comparison needs two" in report
