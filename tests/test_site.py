"""The site profile (mitoseg/study/site.py): found in a stated order, validated with one-line errors, and given
to every job `submit` makes (array and dependent analysis), with the arguments after `--` winning; a dry
run prints every job line and creates nothing; the container asked for is used or refused
(mitoseg/study/launcher.py), never replaced by the host Python."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mitoseg.core import grid as G
from mitoseg.study import launcher as L
from mitoseg.core import paths as P
from mitoseg.study import runner as R
from mitoseg.study import submit as Sched
from mitoseg.study import site as S
from mitoseg.study import verify as V

REPO = Path(__file__).resolve().parent.parent
STANDIN_BIN = REPO / "tests" / "bin"


def write(path: Path, **values) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    return path


def run_study(*args, cwd, env=None):
    return subprocess.run([sys.executable, str(REPO / "run_study.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=env)


# --- which profile, and its validation ----------------------------------------------------------------
def test_profile_precedence_flag_env_local_user(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    env = {"HOME": str(home)}
    none = S.load_site(None, env, cwd)
    assert none.path is None and none.describe().startswith("site profile: none")
    write(home / ".config" / "mitoseg" / "site.json", queue="user")
    assert S.load_site(None, env, cwd).queue == "user"
    assert S.load_site(None, {**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}, cwd).path is None
    write(cwd / "mitoseg_site.json", queue="local")
    assert S.load_site(None, env, cwd).queue == "local"
    from_env = write(tmp_path / "env.json", queue="env")
    env[S.SITE_ENV] = str(from_env)
    assert S.load_site(None, env, cwd).queue == "env"
    profile = S.load_site(str(write(tmp_path / "flag.json", queue="flag")), env, cwd)
    assert profile.queue == "flag" and profile.describe() == f"site profile: {tmp_path / 'flag.json'} (--site)"


@pytest.mark.parametrize("values, words", [
    ({"queu": "gpu"}, "unknown key 'queu'"),
    ({"scheduler": "lsf"}, "key 'scheduler' must be one of pbspro, torque, slurm, got 'lsf'"),
    ({"memory": "lots"}, "key 'memory' must be a size such as 64G"),
    ({"walltime": "2h"}, "key 'walltime' must be [D-]HH:MM:SS"),
    ({"gpus": -1}, "key 'gpus' must be an integer >= 0"),
    ({"cpus": True}, "key 'cpus' must be an integer >= 1"),
    ({"array_throttle": 0}, "key 'array_throttle'"),
    ({"modules": "module load x"}, "key 'modules' must be a list of shell lines"),
    ({"binds": ["/a", "b\nc"]}, "key 'binds'"),
    ({"_comment": {"a": 1}}, "key '_comment' must be text"),
    ({"scheduler": "slurm", "project": "p"}, "key 'project' is PBS Pro's -P; on slurm use 'account'"),
])
def test_a_bad_profile_is_one_line_naming_the_file_and_the_key(tmp_path, values, words):
    path = write(tmp_path / "site.json", **values)
    with pytest.raises(S.SiteError) as err:
        S.read_profile(path)
    assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


def test_a_named_profile_that_is_missing_is_refused_by_submit_and_verify(tmp_path):
    missing = tmp_path / "nope.json"
    for cmd in (["submit", "--scheduler", "slurm", "--dry-run", "--demo"], ["verify", "--demo", "--skip-env-probe"]):
        r = run_study(*cmd, "--site", str(missing), cwd=tmp_path)
        assert r.returncode in (1, 2) and f"site profile {missing} (--site): cannot read it" in r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, scheduler", [("site_pbspro.json", "pbspro"), ("site_slurm.json", "slurm")])
def test_the_example_profiles_load_and_say_what_they_are(name, scheduler):
    profile = S.read_profile(REPO / "examples" / name)
    assert profile.scheduler == scheduler and profile.walltime and profile.container and profile.modules
    assert len(json.loads((REPO / "examples" / name).read_text())["_comment"]) >= 5


# --- the scheduler options of a profile ----------------------------------------------------------------
def test_options_per_scheduler():
    site = S.SiteProfile(queue="q", account="acc", cpus=4, memory="32G", gpus=2, gpu_type="a100",
                         walltime="01:30:00", array_throttle=5, extra_args=["--qos=x"])
    slurm = Sched.array_submit_command("slurm", 0, 9, "A=1", ["--time=03:00:00"], site)
    for opt in ("--array=0-9%5", "--partition=q", "--account=acc", "--cpus-per-task=4", "--mem=32G",
                "--gres=gpu:a100:2", "--time=01:30:00", "--qos=x"):
        assert opt in slurm
    assert slurm.index("--time=03:00:00") > slurm.index("--time=01:30:00")   # after `--`: last, so it wins
    pbs = Sched.array_submit_command("pbspro", 0, 9, "A=1", [], site)
    assert pbs[pbs.index("-J") + 1] == "0-9" and pbs[pbs.index("-W") + 1] == "max_run_subjobs=5"
    assert "select=1:ncpus=4:ngpus=2:mem=32gb:gpu_type=a100" in pbs and "walltime=01:30:00" in pbs
    assert pbs[pbs.index("-q") + 1] == "q" and pbs[pbs.index("-A") + 1] == "acc"
    torque = Sched.array_submit_command("torque", 0, 9, "A=1", [], S.SiteProfile(cpus=2, array_throttle=3))
    assert torque[torque.index("-t") + 1] == "0-9%3" and "nodes=1:ppn=2:gpus=1" in torque and "mem=64gb" in torque
    # one value on PBS: the select chunk is completed with the job script's own request
    assert "select=1:ncpus=8:ngpus=1:mem=16gb" in Sched.array_submit_command("pbspro", 0, 1, "A=1", [],
                                                                             S.SiteProfile(memory="16gb"))
    # no profile: no resource options at all, the job script's directives apply
    assert Sched.array_submit_command("slurm", 0, 1, "A=1", [])[-1] == str(Sched.SLURM_SCRIPT)
    assert not any(a.startswith(("--mem", "--time", "--gres")) for a in Sched.array_submit_command("slurm", 0, 1, "A=1", []))


def test_the_analysis_job_gets_the_profile_its_env_args_and_the_dash_dash_args(tmp_path, monkeypatch):
    site = S.SiteProfile(queue="q", account="acc", cpus=16, walltime="09:00:00")
    dash_dash = ["--output=/x/%A_%a.out", "--qos=x", "--array", "0-3", "-J", "name"]
    cmd = Sched.analysis_submit_command("slurm", "afterany:5", tmp_path / "run_analysis.sh", tmp_path, site, dash_dash)
    assert "--partition=q" in cmd and "--account=acc" in cmd and cmd[-2] == "--qos=x"
    assert not {"--output=/x/%A_%a.out", "--array", "0-3", "-J", "name"} & set(cmd)   # the array's own options
    assert "--cpus-per-task=1" in cmd and "--cpus-per-task=16" not in cmd   # the cells' resources are not the analysis'
    assert f"--output={tmp_path / 'logs' / 'analysis_job_%j.log'}" in cmd
    monkeypatch.setenv("MITOSEG_ANALYSIS_QSUB_ARGS", "-l select=1:ncpus=2:mem=2gb -l walltime=00:10:00")
    cmd = Sched.analysis_submit_command("pbspro", "afterany:5[]", tmp_path / "r.sh", tmp_path, site,
                                        ["-o", "/x/", "-l", "place=excl"])
    assert "select=1:ncpus=2:mem=2gb" in cmd and "walltime=00:10:00" in cmd and "walltime=02:00:00" not in cmd
    assert cmd[-3:-1] == ["-l", "place=excl"] and cmd[cmd.index("-o") + 1] == str(tmp_path / "logs" / "analysis_job.log")


@pytest.mark.parametrize("scheduler, extra, expected", [
    ("slurm", ["--qos=high"], ["--array=0-5%3", "--partition=gpuq", "--account=lab", "--cpus-per-task=6",
                               "--mem=48G", "--gres=gpu:1", "--time=03:00:00", "--qos=high"]),
    ("pbspro", ["-l", "place=excl"], ["-J 0-5", "-W max_run_subjobs=3", "-q gpuq", "-A lab",
                                      "-l select=1:ncpus=6:ngpus=1:mem=48gb", "-l walltime=03:00:00", "-l place=excl"]),
    ("torque", ["-l", "place=excl"], ["-t 0-5%3", "-q gpuq", "-A lab", "-l nodes=1:ppn=6:gpus=1", "-l mem=48gb",
                                      "-l walltime=03:00:00", "-l place=excl"]),
])
def test_dry_run_prints_every_job_line_with_the_profile_and_creates_nothing(tmp_path, scheduler, extra, expected):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    profile = write(tmp_path / "site.json", scheduler=scheduler, queue="gpuq", account="lab", cpus=6, memory="48G",
                    gpus=1, walltime="03:00:00", array_throttle=3, modules=["module load apptainer/1.3"])
    r = run_study("submit", "--site", str(profile), "--dry-run", "--demo", "--", *extra, cwd=cwd,
                  env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"site profile: {profile} (--site)"
    array = next(ln for ln in lines if ln.startswith("array job (6 elements): "))
    analysis = next(ln for ln in lines if ln.startswith("analysis job (after the whole array): "))
    for opt in expected:
        assert opt in array, (opt, array)
    assert f"MITOSEG_SITE={profile}" in array and str(P.StudyPaths(cwd).root) in array
    assert array.endswith(str(P.StudyPaths(Path(array.split()[-1]).parent).array_job_script))   # with the module line
    assert "/logs" in array and "mitoseg_analysis" in analysis and " ".join(extra) in analysis
    assert ("--partition=gpuq" if scheduler == "slurm" else "-q gpuq") in analysis
    assert "ARRAY_ID" in analysis and "    module load apptainer/1.3" in lines
    assert list(cwd.iterdir()) == []   # no study folder, no pointer file, no log


FAKE_SBATCH = """#!/bin/sh
echo "$@" >> {log}
echo $(( $(wc -l < {log}) + 40 ))
"""


def test_submit_gives_the_profile_to_both_jobs_and_the_logs_go_into_the_study(tmp_path):
    bindir, root = tmp_path / "bin", tmp_path / "root"
    log = tmp_path / "sbatch_calls"
    write(bindir / "x", a=1)
    (bindir / "sbatch").write_text(FAKE_SBATCH.format(log=log))
    (bindir / "sbatch").chmod(0o755)
    profile = write(tmp_path / "site.json", scheduler="slurm", queue="gpuq", walltime="03:00:00",
                    array_throttle=2, modules=["module load apptainer/1.3"])
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    env.pop("TF_CONTAINER", None)
    r = run_study("submit", "--site", str(profile), "--demo", "--root", str(root), "--", "--qos=x", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    array, analysis = log.read_text().splitlines()
    study = next(root.glob(P.STUDY_PREFIX + "*"))
    paths = P.StudyPaths(study)
    assert "--array=0-5%2" in array and f"--output={paths.logs}/mitoseg_hpo_%A_%a.out" in array
    assert "--time=03:00:00 --qos=x" in array and array.endswith(str(paths.array_job_script))
    job = paths.array_job_script.read_text()
    assert "#SBATCH --job-name=mitoseg_hpo" in job and job.index("module load apptainer/1.3") < job.index("exec ")
    assert "--dependency=afterany:41" in analysis and "--partition=gpuq" in analysis and analysis.endswith(
        f"--qos=x {paths.analysis_script}")
    assert paths.logs.is_dir() and "module load apptainer/1.3\n" in paths.analysis_script.read_text()
    assert not (tmp_path / "mitoseg_hpo_41_0.out").exists() and not list(REPO.glob("mitoseg_hpo_*_*.out"))


# --- the walltime the pre-flight checks -----------------------------------------------------------------
def test_verify_checks_the_walltime_that_will_be_used(tmp_path):
    slurm = tmp_path / "slurm.sh"
    slurm.write_text("#!/bin/bash\n#SBATCH --array=0-1\n#SBATCH --time=02:00:00\n")
    pbs = tmp_path / "pbs.sh"
    pbs.write_text("#!/bin/bash\n#PBS -J 0-1\n#PBS -l walltime=02:00:00\n")
    assert [lim[1] for lim in V.walltime_limits(S.SiteProfile(), [], None, pbs, slurm)] == [7200, 7200]
    site = S.SiteProfile(path=tmp_path / "site.json", walltime="08:00:00")
    assert V.walltime_limits(site, [], "slurm", pbs, slurm) == [("walltime (site profile)", 8 * 3600, str(site.path))]
    assert V.walltime_limits(site, ["--time=1-00:00:00"], "slurm", pbs, slurm)[0][1] == 86400
    assert V.walltime_limits(site, ["-l", "walltime=04:00:00"], "pbspro", pbs, slurm)[0][1] == 4 * 3600
    assert V.walltime_limits(S.SiteProfile(), ["-t", "30"], "slurm", pbs, slurm)[0][1] == 1800
    three_hours = {0: 3 * 3600.0}
    rows = V.check_walltime(three_hours, ["GPU:0"], limits=V.walltime_limits(S.SiteProfile(), [], "slurm", pbs, slurm))
    assert rows[-1].status == V.FAIL
    rows = V.check_walltime(three_hours, ["GPU:0"], limits=V.walltime_limits(site, [], "slurm", pbs, slurm))
    assert rows[-1].status == V.PASS and rows[-1].check == "walltime (site profile)"


# --- the container: used or refused ---------------------------------------------------------------------
@pytest.fixture
def standin(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{STANDIN_BIN}{os.pathsep}{os.environ['PATH']}")
    return {"PATH": os.environ["PATH"], "STANDIN_CONTAINER_PYTHON": sys.executable,
            "STANDIN_APPTAINER_LOG": str(tmp_path / "apptainer_calls")}


def test_a_sandbox_folder_or_an_address_is_passed_to_the_runtime(tmp_path, standin):
    sandbox = tmp_path / "tf_sandbox"
    (sandbox / "usr").mkdir(parents=True)
    for image in (str(sandbox), "docker://nvcr.io/nvidia/tensorflow:24.06-tf2-py3", "oras://reg.example/tf:1"):
        prefix, how = L.launcher({**standin, "TF_CONTAINER": image}, binds=["/tmp"])
        assert prefix == [str(STANDIN_BIN / "apptainer"), "exec", "--nv", "--bind", "/tmp", image, "python"]
        assert L.probe_container(prefix, standin).startswith(f"python {sys.version.split()[0]} at ")
    images = [json.loads(ln)["image"] for ln in (tmp_path / "apptainer_calls").read_text().splitlines()]
    assert images == [str(sandbox), "docker://nvcr.io/nvidia/tensorflow:24.06-tf2-py3", "oras://reg.example/tf:1"]


def test_the_profile_container_and_binds_and_tf_container_wins(tmp_path, standin):
    sif = tmp_path / "tf.sif"
    sif.write_text("image")
    site = S.SiteProfile(path=tmp_path / "site.json", container=str(sif), binds=["/scratch"])
    prefix, how = L.launcher(standin, binds=["/a"], site=site)
    assert prefix[-2] == str(sif) and prefix[prefix.index("--bind") + 1] == "/a,/scratch"
    assert f"from site profile {site.path}" in how
    prefix, how = L.launcher({**standin, "TF_CONTAINER": "docker://x/y:1"}, site=site)
    assert prefix[-2] == "docker://x/y:1" and "from $TF_CONTAINER" in how


def _trainer(tmp_path, monkeypatch) -> dict:
    """The runner starts the module fake_train_one (in tmp_path) instead of mitoseg.cli.train; returns
    the environment entry that lets the child find it."""
    (tmp_path / "fake_train_one.py").write_text(f"open({str(tmp_path / 'trained')!r}, 'a').write('x')\n")
    monkeypatch.setattr(R, "TRAIN", "fake_train_one")
    return {"PYTHONPATH": str(tmp_path)}


@pytest.mark.parametrize("case, words", [("typo path", "tensorflw.sif (from $TF_CONTAINER) does not exist"),
                                         ("typo in the profile", "tensorflw.sif (from site profile "),
                                         ("no runtime", "neither apptainer nor singularity is on PATH"),
                                         ("python does not start", "could not start python (exit 1: FileNotFoundError")])
def test_an_unusable_container_fails_the_element_with_exit_2_and_trains_nothing(tmp_path, monkeypatch, standin, case,
                                                                                words):
    fake = _trainer(tmp_path, monkeypatch)
    grid = tmp_path / "grid.json"
    G.demo_grid().save(grid)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    env = {**standin, **fake, "GRID_CONFIG": str(grid), "HOME": str(tmp_path), "TF_CONTAINER": str(sandbox)}
    if case == "typo path":
        env["TF_CONTAINER"] = str(tmp_path / "tensorflw.sif")
    elif case == "typo in the profile":
        env.pop("TF_CONTAINER")
        env[S.SITE_ENV] = str(write(tmp_path / "site.json", container=str(tmp_path / "tensorflw.sif")))
    elif case == "no runtime":
        env["PATH"] = os.defpath
    else:
        env["STANDIN_CONTAINER_PYTHON"] = str(tmp_path / "no_python_here")
    logs: list[str] = []
    assert R.run_element(0, tmp_path / "root", environ=env, log=logs.append) == 2
    assert logs[-1].startswith("error: container ") and words in logs[-1] and "\n" not in logs[-1], logs
    assert not (tmp_path / "trained").exists()
    # the same sandbox with a working runtime trains, inside the container
    if case == "python does not start":
        env["STANDIN_CONTAINER_PYTHON"] = sys.executable
        assert R.run_element(0, tmp_path / "root", environ=env, log=logs.append) == 0
        assert (tmp_path / "trained").exists() and any(ln.startswith(f"container {sandbox} (from $TF_CONTAINER)")
                                                         for ln in logs)
        calls = [json.loads(ln) for ln in (tmp_path / "apptainer_calls").read_text().splitlines()]
        assert calls[-1]["image"] == str(sandbox) and calls[-1]["cmd"][1:3] == ["-m", R.TRAIN]


def test_no_container_is_the_host_python_said_aloud(tmp_path, monkeypatch):
    fake = _trainer(tmp_path, monkeypatch)
    grid = tmp_path / "grid.json"
    G.demo_grid().save(grid)
    logs: list[str] = []
    env = {"PATH": os.environ["PATH"], "GRID_CONFIG": str(grid), "HOME": str(tmp_path), **fake}
    assert R.run_element(0, tmp_path / "root", environ=env, log=logs.append) == 0
    assert any(f"training with the host Python {sys.executable}: no container set" in ln for ln in logs)
    assert any("data: built-in synthetic data" in ln for ln in logs) and (tmp_path / "trained").exists()


# --- the verification job -------------------------------------------------------------------------------
FAKE_SUBMIT_STDIN = """#!/bin/sh
echo "$@" >> {log}
cat > {script}
echo 77
"""


@pytest.mark.parametrize("scheduler, tool", [("slurm", "sbatch"), ("pbspro", "qsub")])
def test_verify_submit_gives_the_profile_to_the_verification_job(tmp_path, scheduler, tool):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / tool).write_text(FAKE_SUBMIT_STDIN.format(log=tmp_path / "calls", script=tmp_path / "job.sh"))
    (bindir / tool).chmod(0o755)
    profile = write(tmp_path / "site.json", scheduler=scheduler, queue="gpuq", walltime="05:00:00",
                    modules=["module load apptainer"])
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    args = ["verify", "--submit", "--site", str(profile), "--grid-config", str(REPO / "examples" / "gpu_full_study.json"),
            "--output-root", "out"]
    dry = run_study(*args, "--dry-run", cwd=tmp_path, env=env)
    assert dry.returncode == 0 and "dry run: nothing submitted" in dry.stdout and not (tmp_path / "calls").exists()
    assert not (tmp_path / "out").exists()
    r = run_study(*args, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "verification job 77 submitted" in r.stdout, r.stdout + r.stderr
    call = (tmp_path / "calls").read_text()
    assert ("--partition=gpuq" if scheduler == "slurm" else "-q gpuq") in call and "05:00:00" not in call
    assert str(tmp_path / "out" / "logs") in call and (tmp_path / "out" / "logs").is_dir()
    job = (tmp_path / "job.sh").read_text()
    assert job.index("module load apptainer") < job.index("set -- --output-dir") < job.index("exec ")
    assert f"--site {profile}" in job and f"--grid-config {REPO / 'examples' / 'gpu_full_study.json'}" in job
    # the job script as the scheduler gets it runs the check with these arguments (here: no TensorFlow trial)
    local = subprocess.run(["bash", "-c", job.replace("set -- ", "set -- --skip-env-probe ").replace(
        "module load apptainer", "true")], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**env, "PYTHON": sys.executable})
    assert local.returncode == 0 and "walltime" not in local.stdout and " 0 FAIL" in local.stdout, local.stdout


def test_an_element_names_where_its_data_came_from(tmp_path, monkeypatch):
    """`#PBS -V` exports the login shell's DATA_DIR: it may make a new study's data, said in every
    element's log; an existing study's data stays its own (a contradicting DATA_DIR is refused)."""
    fake = _trainer(tmp_path, monkeypatch)
    grid = tmp_path / "grid.json"
    G.demo_grid().save(grid)
    data = tmp_path / "data"
    data.mkdir()
    env = {"PATH": os.environ["PATH"], "GRID_CONFIG": str(grid), "HOME": str(tmp_path), "DATA_DIR": str(data), **fake}
    logs: list[str] = []
    assert R.run_element(0, tmp_path / "root", environ=env, log=logs.append) == 0
    assert any(f"data: {data} (from $DATA_DIR of the submitting shell)" in ln for ln in logs), logs
    study = next((tmp_path / "root").glob(P.STUDY_PREFIX + "*"))
    env.update(STUDY_DIR=str(study))
    assert R.run_element(1, tmp_path / "root", environ=env, log=logs.append) == 0
    assert f"data: {data} (the study's grid_config.json)" in "\n".join(logs[-6:])
    env.update(DATA_DIR=str(tmp_path))
    assert R.run_element(1, tmp_path / "root", environ=env, log=logs.append) == 2
    assert logs[-1].startswith("error:") and "fixed.data_dir" in logs[-1] and str(tmp_path) in logs[-1]


def test_a_key_the_detected_scheduler_cannot_take_is_refused_not_dropped(tmp_path):
    """A profile without `scheduler` is checked against the scheduler found at submission: PBS Pro's
    project on Slurm (or Torque) and a GPU type on Torque are one-line errors, never left out in silence."""
    site = S.SiteProfile(path=tmp_path / "site.json", project="p1", gpu_type="a100")
    for scheduler, key in (("slurm", "project"), ("torque", "project")):
        with pytest.raises(S.SiteError, match=f"key '{key}'"):
            Sched.array_submit_command(scheduler, 0, 1, "A=1", [], site)
    with pytest.raises(S.SiteError, match="key 'gpu_type'"):
        Sched.array_submit_command("torque", 0, 1, "A=1", [], S.SiteProfile(gpu_type="a100"))
    assert "-P" in Sched.array_submit_command("pbspro", 0, 1, "A=1", [], site)
