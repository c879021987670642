"""Runner and scheduler helpers without a scheduler: index mapping, study-dir resolution under
concurrency, the grid listing, resume/skip in the local runner, job scripts."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mitoseg.core import paths as P
from mitoseg.core import grid as G
from mitoseg.study import launcher as L
from mitoseg.study import runner as R
from mitoseg.study import submit as Sched
from mitoseg.study.console import results_table
from mitoseg.study.open import resolve_study_dir
from mitoseg.core.results import save_results
from tests.fixtures_results import record_for

REPO = Path(__file__).resolve().parent.parent
JOB_SCRIPTS = sorted(REPO.glob("*.sh"))
TINY_FIXED = dict(epochs=1, patch_size=32, base_filters=4, depth=3, synthetic_slices=10, synthetic_size=64)


def tiny_grid(batch_sizes=(8, 16), lrs=(1e-3,), archs=("UNet", "Attention_UNet")) -> G.GridConfig:
    return G.GridConfig(architectures=list(archs), learning_rates=list(lrs), batch_sizes=list(batch_sizes),
                        fixed=dict(TINY_FIXED))


# --- index mapping per scheduler ------------------------------------------------------------------
@pytest.mark.parametrize("env, index", [
    ({"PBS_ARRAY_INDEX": "7"}, 7),                       # PBS Pro
    ({"PBS_ARRAYID": "3", "PBS_JOBID": "12[3].srv"}, 3),  # Torque
    ({"SLURM_ARRAY_TASK_ID": "35"}, 35),                 # Slurm
    ({"PBS_ARRAY_INDEX": "1", "SLURM_ARRAY_TASK_ID": "1"}, 1),  # slurm-wlm-torque's spank_pbs: both
    ({}, None),
])
def test_task_index_from_each_scheduler_variable(env, index):
    assert Sched.task_index_from_env(env) == index


@pytest.mark.parametrize("env, sched, key, dep", [
    ({"PBS_JOBID": "1234[5].pbs01", "PBS_ARRAY_INDEX": "5", "PBS_ARRAY_ID": "1234[].pbs01"},
     "pbspro", "pbs_1234.pbs01", "afterany:1234[].pbs01"),
    ({"PBS_JOBID": "1234[5].pbs01", "PBS_ARRAY_INDEX": "5"}, "pbspro", "pbs_1234.pbs01", "afterany:1234[].pbs01"),
    ({"PBS_JOBID": "77[2].torque", "PBS_ARRAYID": "2"}, "torque", "pbs_77.torque", "afteranyarray:77[].torque"),
    ({"SLURM_JOB_ID": "58", "SLURM_ARRAY_JOB_ID": "55", "SLURM_ARRAY_TASK_ID": "3", "SLURM_CLUSTER_NAME": "c"},
     "slurm", "slurm_55.c", "afterany:55"),
    # slurm-wlm-torque: PBS_* from spank_pbs (PBS_JOBID is the per-task Slurm id) and SLURM_* together
    ({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "8", "PBS_JOBID": "9", "PBS_ARRAY_ID": "8",
      "PBS_ARRAY_INDEX": "1"}, "slurm", "slurm_8", "afterany:8"),
    ({}, None, None, None),
])
def test_scheduler_ids(env, sched, key, dep):
    assert Sched.scheduler_of(env) == sched
    assert Sched.array_job_key(env) == key
    target = Sched.dependency_target(env)
    assert (target[1] if target else None) == dep


def test_parse_job_id():
    assert Sched.parse_job_id("123\n") == "123"
    assert Sched.parse_job_id("123;cluster\n") == "123"
    assert Sched.parse_job_id("4567[].pbs01\n") == "4567[].pbs01"
    assert Sched.parse_job_id("Submitted batch job 88") == "88"


def test_analysis_submit_commands(tmp_path):
    script = tmp_path / "run_analysis.sh"
    s = Sched.analysis_submit_command("slurm", "afterany:5", script, tmp_path)
    assert s[:2] == ["sbatch", "--parsable"] and "--dependency=afterany:5" in s and "--kill-on-invalid-dep=yes" in s
    p = Sched.analysis_submit_command("pbspro", "afterany:5[].srv", script, tmp_path)
    assert p[0] == "qsub" and p[p.index("-W") + 1] == "depend=afterany:5[].srv" and p[-1] == str(script)
    t = Sched.analysis_submit_command("torque", "afteranyarray:5[].srv", script, tmp_path)
    assert "depend=afteranyarray:5[].srv" in t


# --- grid listing ---------------------------------------------------------------------------------
def _run_study(*args, **kw):
    return subprocess.run([sys.executable, str(REPO / "run_study.py"), *args], capture_output=True, text=True,
                          cwd=kw.pop("cwd", REPO), timeout=120, **kw)


def test_list_prints_grid_and_size(tmp_path):
    r = _run_study("list", "--size")
    assert r.returncode == 0 and r.stdout.strip() == str(G.default_grid().size) == "36"
    r = _run_study("list")
    rows = [ln for ln in r.stdout.splitlines() if re.match(r"^\s*\d+\s+[A-Z]", ln)]
    assert len(rows) == 36 and "exp_35_Attention_ResUNet_lr0.005_bs32" in rows[-1]
    cfg = tmp_path / "g.json"
    tiny_grid().save(cfg)
    r = _run_study("list", "--size", "--grid-config", str(cfg))
    assert r.stdout.strip() == "4"
    assert _run_study("list", "--size", "--demo").stdout.strip() == str(G.demo_grid().size)


def test_list_of_a_study_refuses_a_grid_flag_that_contradicts_it(tmp_path):
    """`list --study-dir S --grid-config G` showed S's grid whatever G said; local refuses the same pair."""
    cfg, study = tmp_path / "g.json", tmp_path / "study"
    tiny_grid().save(cfg)
    G.init_study(study, G.load_user_grid(cfg))
    assert _run_study("list", "--size", "--study-dir", str(study), "--grid-config", str(cfg)).stdout.strip() == "4"
    r = _run_study("list", "--size", "--study-dir", str(study), "--demo")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error: --demo differs from the existing study's"), r.stderr


def test_select_cells():
    grid = G.default_grid()
    assert [c.index for c in R.select_cells(grid, "0,3-5")] == [0, 3, 4, 5]
    assert {c.architecture for c in R.select_cells(grid, None, ["UNet"])} == {"UNet"}
    assert len(R.select_cells(grid, None, ["UNet"])) == 12
    with pytest.raises(ValueError):
        R.parse_cells("30-40", grid.size)
    with pytest.raises(ValueError):
        R.parse_cells("x", grid.size)


# --- the study folder -----------------------------------------------------------------------------
def _resolve_worker(args):
    root, env = args
    study, _ = resolve_study_dir(root, env)
    return str(study)


def test_study_dir_resolution_is_shared_by_one_array_under_concurrency(tmp_path):
    env_a = {"SLURM_JOB_ID": "11", "SLURM_ARRAY_JOB_ID": "10"}
    env_b = {"PBS_JOBID": "10[3].srv", "PBS_ARRAY_INDEX": "3"}
    work = [(str(tmp_path), dict(env_a, SLURM_ARRAY_TASK_ID=str(i))) for i in range(12)]
    work += [(str(tmp_path), env_b)] * 12
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        got = pool.map(_resolve_worker, work)
    a, b = set(got[:12]), set(got[12:])
    assert len(a) == 1 and len(b) == 1 and a != b
    studies = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(P.STUDY_PREFIX))
    assert len(studies) == 2  # losers removed the folders they made
    assert all(re.fullmatch(r"hyperparameter_optimization_\d{8}_\d{6}", s) for s in studies)
    # later elements of the same array read the pointer
    assert str(resolve_study_dir(tmp_path, env_a)[0]) in a


def test_study_dir_from_env_and_local(tmp_path):
    assert resolve_study_dir(tmp_path, {"STUDY_DIR": "mine"})[0] == tmp_path / "mine"
    one = resolve_study_dir(tmp_path, {})[0]
    two = resolve_study_dir(tmp_path, {})[0]
    assert one != two and one.is_dir() and two.is_dir()


def test_analysis_claimed_once(tmp_path):
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        got = pool.starmap(Sched.claim_analysis_submission, [(str(tmp_path), "slurm_5")] * 18)
    assert sum(got) == 1
    assert Sched.claim_analysis_submission(tmp_path, "slurm_6")


# --- launching ------------------------------------------------------------------------------------
def test_launcher_container_or_plain_python(tmp_path, monkeypatch):
    prefix, how = L.launcher({})
    assert prefix == [sys.executable] and "host Python" in how and "no container set" in how
    monkeypatch.setenv("PATH", str(tmp_path))   # no apptainer anywhere
    with pytest.raises(L.ContainerError, match="missing.sif .from .TF_CONTAINER. does not exist"):
        L.launcher({"TF_CONTAINER": str(tmp_path / "missing.sif")})
    image = tmp_path / "tf.sif"
    image.write_text("x")
    with pytest.raises(L.ContainerError, match="neither apptainer nor singularity"):
        L.launcher({"TF_CONTAINER": str(image)})
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "apptainer"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    prefix, how = L.launcher({"TF_CONTAINER": str(image)})
    assert prefix == [str(fake), "exec", "--nv", str(image), "python"] and "from $TF_CONTAINER" in how
    cmd = R.train_command("S", 4, prefix)
    assert cmd[-6:] == ["-m", "mitoseg.cli.train", "--study-dir", "S", "--task-index", "4"]


FAKE_TRAIN = r'''
import json, sys, os
sys.path.insert(0, {repo!r})
from mitoseg.core import grid as G
from mitoseg.core import paths as P
from mitoseg.core.results import save_results
from tests.fixtures_results import record_for
args = sys.argv[1:]
study, index = args[args.index("--study-dir") + 1], int(args[args.index("--task-index") + 1])
with open(os.path.join(study, "calls.txt"), "a") as f:
    f.write(f"{{index}}\n")
if index == {fail!r}:
    print("error: boom", flush=True)
    sys.exit(1)
cell = G.study_cell_at(study, G.load_study_grid(study), index)   # as train_one.py
os.makedirs(os.path.join(study, cell.name), exist_ok=True)
save_results(P.experiment_paths(study, cell.name).results_json, record_for(cell, iou=0.5 + index / 100))
'''


def _fake_trainer(tmp_path, fail, monkeypatch) -> dict:
    """The runner starts the module fake_train_one (in tmp_path) instead of mitoseg.cli.train;
    returns the environment entry that lets a child find it (also set in this process)."""
    (tmp_path / "fake_train_one.py").write_text(FAKE_TRAIN.format(repo=str(REPO), fail=fail))
    monkeypatch.setattr(R, "TRAIN", "fake_train_one")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return {"PYTHONPATH": str(tmp_path)}


def test_local_runner_skips_finished_reruns_failed_and_survives_a_failure(tmp_path, monkeypatch):
    grid = tiny_grid()
    study = tmp_path / "study"
    G.init_study(study, grid)
    cells = G.cells(grid)
    for cell, status in ((cells[0], "ok"), (cells[1], "failed")):
        (study / cell.name).mkdir()
        save_results(P.experiment_paths(study, cell.name).results_json, record_for(cell, status=status, iou=0.9))
    _fake_trainer(tmp_path, 2, monkeypatch)
    lines = []
    rows = R.run_local(study, grid, cells, jobs=2, log=lines.append)
    calls = sorted(int(x) for x in (study / "calls.txt").read_text().split())
    assert calls == [1, 2, 3]                      # 0 finished: skipped; 1 failed: rerun; 3 after 2 failed
    assert rows[0]["state"] == "ok" and "skipped" in rows[0]["note"]
    assert rows[1]["state"] == "ok" and rows[3]["state"] == "ok"
    assert rows[2]["state"] == "failed" and "boom" in rows[2]["note"]
    progress = [ln for ln in lines if ln.startswith("[")]
    assert len(progress) == 3 and progress[-1].startswith("[3/3]") and "ETA" in progress[-1]
    assert "best_val_iou 0.510" in "".join(progress)
    table = results_table(rows)
    assert "finished earlier, skipped" in table and "boom" in table
    # second pass: only the failed cell runs again
    (study / "calls.txt").unlink()
    R.run_local(study, grid, cells, jobs=1, log=lines.append)
    assert (study / "calls.txt").read_text().split() == ["2"]


def test_run_element_bad_index_and_analysis_submitted_once(tmp_path, monkeypatch):
    fake = _fake_trainer(tmp_path, -1, monkeypatch)
    cfg = tmp_path / "grid.json"
    tiny_grid().save(cfg)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/sbatch_calls\necho 99\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "root"
    base = {"SLURM_JOB_ID": "21", "SLURM_ARRAY_JOB_ID": "20", "GRID_CONFIG": str(cfg), "PATH": os.environ["PATH"],
            **fake}
    logs = []
    assert R.run_element(None, root, environ={**base, "SLURM_ARRAY_TASK_ID": "9"}, log=logs.append) == 2
    assert "outside the grid" in logs[-1]
    for i in range(4):
        assert R.run_element(None, root, environ={**base, "SLURM_ARRAY_TASK_ID": str(i)}, log=logs.append) == 0
    studies = list(root.glob(P.STUDY_PREFIX + "*"))
    assert len(studies) == 1
    study = studies[0]
    assert G.load_study_grid(study).size == 4
    assert sorted((study / "calls.txt").read_text().split()) == ["0", "1", "2", "3"]
    calls = (tmp_path / "sbatch_calls").read_text().splitlines()
    assert len(calls) == 1 and "--dependency=afterany:20" in calls[0] and "--kill-on-invalid-dep=yes" in calls[0]
    info = json.loads((study / "analysis_job.json").read_text())
    assert info["job_id"] == "99"
    script = (study / P.ANALYSIS_SCRIPT_NAME).read_text()
    assert "-m mitoseg.cli.study analyze --study-dir" in script
    # a resubmission (another array id) into the same study submits its own analysis job
    env2 = {**base, "SLURM_ARRAY_JOB_ID": "30", "SLURM_JOB_ID": "31", "STUDY_DIR": str(study), "SLURM_ARRAY_TASK_ID": "0"}
    assert R.run_element(None, root, environ=env2, log=logs.append) == 0
    assert len((tmp_path / "sbatch_calls").read_text().splitlines()) == 2


def test_status_counts_finished_and_missing_cells(tmp_path):
    grid = tiny_grid()
    study = tmp_path / "s"
    G.init_study(study, grid)
    cell = G.cells(grid)[0]
    (study / cell.name).mkdir()
    save_results(P.experiment_paths(study, cell.name).results_json, record_for(cell, iou=0.61))
    r = _run_study("status", "--study-dir", str(study))
    assert r.returncode == 0 and "1 finished" in r.stdout and "3 missing" in r.stdout


# --- job scripts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("script", JOB_SCRIPTS, ids=lambda p: p.name)
def test_bash_n_every_job_script(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", ["pbs_hyperparameter_optimization.sh", "slurm_hyperparameter_optimization.sh",
                                  "pbs_setup_verification.sh", "slurm_setup_verification.sh"])
def test_job_scripts_are_directives_and_one_python_call(name):
    text = (REPO / name).read_text()
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(body) == 2 and body[0].startswith("cd ") and "-m mitoseg.cli.study" in body[1]
    assert os.stat(REPO / name).st_mode & stat.S_IXUSR


def test_job_script_array_ranges_match_the_default_grid():
    from mitoseg.study.verify import array_range
    n = G.default_grid().size
    assert array_range(REPO / "pbs_hyperparameter_optimization.sh", "pbs") == (0, n - 1)
    assert array_range(REPO / "slurm_hyperparameter_optimization.sh", "slurm") == (0, n - 1)
    pbs = (REPO / "pbs_hyperparameter_optimization.sh").read_text()
    assert re.search(r"^#PBS -l select=1:ncpus=8:ngpus=1:mem=64gb$", pbs, re.M)
    assert re.search(r"^#PBS -l walltime=", pbs, re.M) and re.search(r"^#PBS -j oe$", pbs, re.M)
    assert "PBS_O_WORKDIR" in pbs and "TF_CONTAINER" in pbs


def test_submit_dry_run_sets_the_array_range_from_the_grid(tmp_path):
    cfg = tmp_path / "g.json"
    tiny_grid().save(cfg)
    root = tmp_path / "root"
    for sched, flag, script in (("slurm", "--array=0-3", "slurm_hyperparameter_optimization.sh"),
                                ("pbspro", "-J", "pbs_hyperparameter_optimization.sh"),
                                ("torque", "-t", "pbs_hyperparameter_optimization.sh")):
        r = _run_study("submit", "--scheduler", sched, "--grid-config", str(cfg), "--root", str(root),
                       "--dry-run", "--", "--qos=x", env={**os.environ, "HOME": str(tmp_path)})
        assert r.returncode == 0, r.stdout + r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("array job ("))
        assert flag in line and script in line and "--qos=x" in line and "MITOSEG_NO_ANALYSIS_JOB=1" in line
        if sched != "slurm":
            assert " 0-3 " in line
    assert not root.exists()   # a dry run creates nothing
def test_walltime_signal_is_forwarded_to_the_training_process(tmp_path):
    import signal
    import threading
    child = tmp_path / "child.py"
    flag = tmp_path / "ready"
    child.write_text(
        "import signal, sys, time, pathlib\n"
        "def stop(signum, frame):\n"
        f"    pathlib.Path({str(tmp_path / 'got')!r}).write_text(str(signum)); sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"pathlib.Path({str(flag)!r}).write_text('x')\n"
        "time.sleep(60)\n")

    def send():
        for _ in range(300):
            if flag.exists():
                break
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)   # a pre-walltime warning reaches the element

    threading.Thread(target=send, daemon=True).start()
    assert R._run_forwarding_signals([sys.executable, str(child)]) == 3
    assert (tmp_path / "got").read_text() == str(int(signal.SIGTERM))


def test_report_path_is_a_report_never_the_summary_csv(tmp_path):
    """`Report:` lines (local, status, the demo) name the Markdown or text report; a study whose analysis
    wrote only the summary CSV has no report to name."""
    from mitoseg.core.paths import REPORT_MD, REPORT_TXT, SUMMARY_CSV_NAME
    from mitoseg.study.runner import report_path
    (tmp_path / SUMMARY_CSV_NAME).write_text("x\n")
    assert report_path(tmp_path) is None
    (tmp_path / REPORT_TXT).write_text("r\n")
    assert report_path(tmp_path) == tmp_path / REPORT_TXT
    (tmp_path / REPORT_MD).write_text("r\n")
    assert report_path(tmp_path) == tmp_path / REPORT_MD
