"""The local runner's worker processes (mitoseg/study/workers.py): a cell trained fourth in a worker records
exactly what it records trained alone, a worker that dies fails only its cell and is replaced, and
`--jobs auto` says why it chose its number."""
import csv
import os
import re
import time

import pytest

from mitoseg.core import grid as G
from mitoseg.core import paths as P
from mitoseg.study import auto_jobs as AJ
from mitoseg.study import runner as R
from mitoseg.study.commands import TRAIN, code_env
from mitoseg.core.results import load_results
from mitoseg.study.workers import WorkerPool

# tiny cells: two architectures x two learning rates, 2 epochs of 32x32 patches at width 4
TINY = dict(epochs=2, patch_size=32, base_filters=4, depth=3, synthetic_slices=16, synthetic_size=64,
            tensorboard=False)


def _grid() -> G.GridConfig:
    return G.GridConfig(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3, 5e-3], batch_sizes=[8],
                        fixed=dict(TINY))


def _env(study) -> dict:
    return code_env({**os.environ, "STUDY_DIR": str(study), "TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1",
                     "TF_CPP_MIN_LOG_LEVEL": "3"})


def _train_in_one_worker(study, indices: list) -> tuple[list, set]:
    """Train the cells one after the other in one pool of one worker: ([(cell, code, s, note)], worker pids)."""
    grid = G.init_study(study, _grid())
    paths = P.StudyPaths(study)
    paths.local_logs.mkdir(exist_ok=True)
    ended, pids = [], set()
    with WorkerPool(1, TRAIN, _env(study), str(R.REPO_DIR), paths.local_log("workers")) as pool:
        for i in indices:
            cell = G.study_cell_at(study, grid, i)
            pool.give(cell, R.train_command(study, i)[3:], paths.local_log(cell.name))
            pids |= {w.proc.pid for w in pool.workers}
            while not ended or ended[-1][0] is not cell:
                ended += pool.ended()
                time.sleep(0.1)
    return ended, pids


def _history(study, index: int) -> list:
    """The cell's history CSV without its wall-clock column."""
    cell = G.study_cell_at(study, G.load_study_grid(study), index)
    with open(P.experiment_paths(study, cell.name).history_csv) as f:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(f)]


@pytest.mark.oldest
def test_a_cell_after_three_others_in_one_worker_records_what_it_records_alone(tmp_path):
    ended, pids = _train_in_one_worker(tmp_path / "after_three", [0, 1, 2, 3])
    assert [code for _, code, _, _ in ended] == [0, 0, 0, 0] and len(pids) == 1   # one worker, four cells
    alone, _ = _train_in_one_worker(tmp_path / "alone", [3])
    assert alone[0][1] == 0
    after, first = _history(tmp_path / "after_three", 3), _history(tmp_path / "alone", 3)
    assert len(after) == 2 and after == first
    # every cell has its own log and results; the worker's start-up lines are not in a cell's log
    study = tmp_path / "after_three"
    for i in range(4):
        cell = G.study_cell_at(study, G.load_study_grid(study), i)
        assert load_results(P.experiment_paths(study, cell.name).results_json)["status"] == "ok"
        assert f"grid cell {i}/3: {cell.name}" in P.StudyPaths(study).local_log(cell.name).read_text()


# A stand-in for the train module: records which process ran each cell, writes an ok result, and kills
# its own process (the worker) in the cell numbered {crash} (-1: none).
STAND_IN_TRAIN = '''
import os, signal, sys
sys.path.insert(0, {repo!r})
from mitoseg.core import grid as G
from mitoseg.core import paths as P
from mitoseg.core.results import save_results
from tests.fixtures_results import record_for
args = sys.argv[1:]
study, index = args[args.index("--study-dir") + 1], int(args[args.index("--task-index") + 1])
with open(os.path.join(study, "pids.txt"), "a") as f:
    f.write(f"{{index}} {{os.getpid()}}\\n")
if index == {crash}:
    print("half-way through cell {crash}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)   # the worker dies mid-cell
cell = G.study_cell_at(study, G.load_study_grid(study), index)
os.makedirs(os.path.join(study, cell.name), exist_ok=True)
save_results(P.experiment_paths(study, cell.name).results_json, record_for(cell, iou=0.5))
'''


def test_a_worker_killed_mid_cell_fails_that_cell_only_and_is_replaced(tmp_path, monkeypatch):
    (tmp_path / "crashing_train.py").write_text(STAND_IN_TRAIN.format(repo=str(R.REPO_DIR), crash=1))
    monkeypatch.setattr(R, "TRAIN", "crashing_train")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    study = tmp_path / "study"
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3, 5e-3], batch_sizes=[8, 16], fixed=dict(TINY))
    G.init_study(study, grid)   # run_local trains a study its caller opened
    rows = R.run_local(study, grid, G.cells(grid), jobs=1, log=lambda line: None)
    assert [rows[i]["state"] for i in range(4)] == ["ok", "failed", "ok", "ok"]
    assert "worker process died (signal 9)" in rows[1]["note"]
    pids = dict(line.split() for line in (study / "pids.txt").read_text().splitlines())
    assert pids["0"] == pids["1"] != pids["2"] == pids["3"]   # cells 2, 3 ran in the fresh worker
    assert "half-way through cell 1" in P.StudyPaths(study).local_log(G.cells(grid)[1].name).read_text()


def test_the_confirmation_stage_of_local_reuses_the_grid_stages_workers(tmp_path, monkeypatch):
    """`local --confirm-seeds`: one pool for both stages, so the confirmation cells start in the workers that
    already imported TensorFlow for the grid (a stand-in train module records the process of each cell)."""
    from mitoseg.cli import study as cli
    (tmp_path / "pid_train.py").write_text(STAND_IN_TRAIN.format(repo=str(R.REPO_DIR), crash=-1))
    monkeypatch.setattr(R, "TRAIN", "pid_train")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    cfg, study = tmp_path / "grid.json", tmp_path / "study"
    G.GridConfig(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3], batch_sizes=[8],
                 fixed=dict(TINY)).save(cfg)
    code = cli.main(["local", "--grid-config", str(cfg), "--study-dir", str(study), "--jobs", "1",
                     "--confirm-seeds", "1", "--no-analysis"])
    assert code == 0
    pids = dict(line.split() for line in (study / "pids.txt").read_text().splitlines())
    assert len(pids) == 4 and len(set(pids.values())) == 1, pids   # 2 grid + 2 confirmation cells, one worker


SLEEPY_TRAIN = '''
import os, sys, time
args = sys.argv[1:]
study = args[args.index("--study-dir") + 1]
with open(os.path.join(study, "worker.pid"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(120)
'''

RUNNER = '''
import sys
sys.path.insert(0, {repo!r})
from mitoseg.core import grid as G
from mitoseg.study import runner as R
R.TRAIN = "sleepy_train"
study = sys.argv[1]
grid = G.load_study_grid(study)
R.run_local(study, grid, G.cells(grid), jobs=1, python=[sys.executable])
'''


def test_a_worker_ends_when_the_runner_that_started_it_is_killed(tmp_path):
    """A `local` killed outright (SIGKILL: no Ctrl-C handling) must not leave its worker training on."""
    import signal
    import subprocess
    import sys
    (tmp_path / "sleepy_train.py").write_text(SLEEPY_TRAIN)
    study = tmp_path / "study"
    G.init_study(study, _grid())
    runner = subprocess.Popen([sys.executable, "-c", RUNNER.format(repo=str(R.REPO_DIR)), str(study)],
                              env={**os.environ, "PYTHONPATH": str(tmp_path)})
    pid_file = study / "worker.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    worker = int(pid_file.read_text())
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{worker}") and \
            "Z" not in open(f"/proc/{worker}/stat").read().split()[2]:
        time.sleep(0.2)
    gone = not os.path.exists(f"/proc/{worker}") or "Z" in open(f"/proc/{worker}/stat").read().split()[2]
    if not gone:
        os.kill(worker, signal.SIGKILL)
    assert gone, "the worker outlived the runner that started it"


def test_jobs_auto_takes_the_smaller_of_cores_and_memory_and_says_why():
    gib = 2**30
    jobs, why = AJ.auto_jobs(int(1.2 * gib), "the trial", cores=8, available=4 * gib)
    assert jobs == 2   # 80 % of 4 GiB holds two cells of 1.2 GiB x 1.25 = 1.5 GiB, fewer than 8 cores
    assert why == ("jobs auto: 2 (the smaller of 8 cores and 2 cells in memory: 80 % of 4.0 GiB available / "
                   "1.50 GiB per cell = 1.25 x the 1.20 GiB peak of the trial)")
    assert AJ.auto_jobs(gib, "t", cores=2, available=24 * gib)[0] == 2   # cores bound
    assert AJ.auto_jobs(gib, "t", cores=4, available=gib)[0] == 1        # never 0, even when memory holds less than one


def _trial_result(rss: int, ok: bool = True) -> dict:
    arch = {"ok": True, "memory": {"kind": "RSS", "bytes": rss}, "host_rss_bytes": rss} if ok else \
        {"ok": False, "error": "ValueError: no step"}
    return {"error": None, "gpus": [], "architectures": {"UNet": arch}}


def test_jobs_auto_reuses_a_trial_only_at_the_same_settings_and_environment(tmp_path, monkeypatch):
    """The recorded trial is read back when the study's settings and the training Python are those it ran
    with; another Python (e.g. a container set since) or a damaged record measures again; a failed step
    refuses, naming the architecture."""
    import mitoseg.study.verify as V
    runs = []
    monkeypatch.setattr(V, "run_trial", lambda grid, launch: runs.append(launch[0]) or (_trial_result(2**30), "x"))
    study, grid, lines = tmp_path, _grid(), []
    assert AJ.measured_peak(study, grid, ["py"], lines.append)[0] == 2**30 and runs == [["py"]]
    assert "measuring a cell's memory with the pre-flight trial" in lines[0]
    assert AJ.measured_peak(study, grid, ["py"], lines.append) == (2**30, f"the pre-flight trial (recorded in "
                                                                          f"{P.StudyPaths(study).preflight})")
    assert runs == [["py"]]   # reused
    AJ.measured_peak(study, grid, ["apptainer", "exec", "img.sif", "python"], lines.append)
    assert len(runs) == 2     # another training environment: measured there
    P.StudyPaths(study).preflight.write_text("{truncated")
    AJ.measured_peak(study, grid, ["py"], lines.append)
    assert len(runs) == 3
    import json
    P.StudyPaths(study).preflight.write_text(json.dumps({"key": AJ.trial_key(grid, ["py"]), "result": {"x": 1}}))
    AJ.measured_peak(study, grid, ["py"], lines.append)   # the right key, no figure: measured again
    assert len(runs) == 4
    monkeypatch.setattr(V, "run_trial", lambda grid, launch: (_trial_result(0, ok=False), "x"))
    other = G.GridConfig.from_dict({**grid.to_dict(), "batch_sizes": [16]})   # other settings: never the record
    with pytest.raises(ValueError, match=r"jobs auto: the pre-flight trial failed: UNet: ValueError: no step"):
        AJ.measured_peak(study, other, ["py"], lines.append)


def test_local_trains_in_the_container_that_is_set_and_sizes_jobs_auto_there(tmp_path, oldest_python):
    """`local` with $TF_CONTAINER: the pre-flight trial of --jobs auto and the worker processes run through
    the container (stand-in apptainer, tests/bin, whose Python is the oldest stack's), with the study
    bound; the cell records the container's Python; the trial's peak is recorded and reused by a rerun."""
    import json
    import subprocess
    import sys
    container_python = oldest_python
    cfg = tmp_path / "grid.json"
    G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8], fixed=dict(TINY)).save(cfg)
    image, calls = tmp_path / "tf.sif", tmp_path / "calls.jsonl"
    image.write_text("stand-in image")
    env = {**os.environ, "TF_CONTAINER": str(image), "STANDIN_CONTAINER_PYTHON": container_python,
           "STANDIN_APPTAINER_LOG": str(calls), "HOME": str(tmp_path),
           "PATH": f"{R.REPO_DIR / 'tests' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    study = tmp_path / "study"

    def local():
        return subprocess.run([sys.executable, str(R.REPO_DIR / "run_study.py"), "local", "--grid-config", str(cfg),
                               "--study-dir", str(study), "--jobs", "auto", "--no-analysis"],
                              capture_output=True, text=True, env=env, timeout=600)
    r = local()
    assert r.returncode == 0, r.stdout + r.stderr
    runs = [json.loads(line) for line in calls.read_text().splitlines()]
    modules = [c["cmd"][2] for c in runs if c["cmd"][1:2] == ["-m"]]
    assert modules == ["mitoseg.cell.preflight", "mitoseg.study.workers"], runs
    assert all(c["image"] == str(image) and str(study.resolve()) in c["binds"] for c in runs[1:])
    assert f"container {image} (from $TF_CONTAINER)" in r.stdout
    assert re.search(r"jobs auto: \d \(.* GiB peak of the pre-flight trial \(just measured, recorded in .*preflight.json\)", r.stdout)
    cell = G.cells(G.load_study_grid(study))[0]
    record = load_results(P.experiment_paths(study, cell.name).results_json)
    version = subprocess.run([container_python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert record["status"] == "ok" and record["environment"]["python"] == version
    r = local()   # the cell is finished; the recorded trial sizes --jobs auto without a new one
    assert r.returncode == 0 and "recorded in" in r.stdout and "measuring" not in r.stdout, r.stdout + r.stderr
    assert len(calls.read_text().splitlines()) == len(runs) + 1   # only the probe of the container ran again


def test_jobs_flag_takes_auto_or_a_positive_integer():
    from mitoseg.cli.study_parser import build_study_parser
    parser = build_study_parser("")
    assert parser.parse_args(["local", "--jobs", "auto"]).jobs == "auto"
    assert parser.parse_args(["local", "-j", "3"]).jobs == 3
    assert parser.parse_args(["confirm", "--study-dir", "S", "--seeds", "1", "--jobs", "auto"]).jobs == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["confirm", "--study-dir", "S", "--seeds", "1", "--jobs", "some"])
    with pytest.raises(SystemExit):
        parser.parse_args(["local", "--jobs", "0"])
