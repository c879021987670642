"""Array jobs and dependencies on a REAL one-node Slurm cluster.

The cluster comes from tests/slurm_cluster.py (Debian 12's Slurm 22.05, set up
by .ci/install_slurm.sh); without Slurm these tests are skipped.

What the slurm-wlm-torque ``qsub`` wrapper (/usr/bin/qsub, a perl script that
builds an ``sbatch`` command line; see ``qsub --sbatchline``) does, as read in
its source and checked below:

* arrays: ``-J 0-2`` and ``-t 0-2`` are the same option, both become
  ``sbatch --array='0-2'``;
* dependencies: ``-W depend=<spec>`` is passed verbatim as
  ``--dependency=<spec>``, so it takes Slurm's syntax:
  ``-W depend=afterany:<array job id>`` waits for all tasks of the array
  (scontrol shows ``afterany:<id>_*``). ``-W`` understands only
  ``depend``, ``umask``, ``group_list`` and ``block``; other attributes are
  silently ignored, and there is no way to pass ``--kill-on-invalid-dep``:
  put ``#SBATCH --kill-on-invalid-dep=yes`` in the script instead (sbatch
  reads #SBATCH lines of scripts submitted through qsub; it also reads
  ``#PBS -J``/``-t``/``-N``/``-l walltime``/``-W depend=`` lines itself);
* the wrapper prints the bare job id (the array's id for an array) and
  exits with sbatch's status; default output files are
  ``<script>.o<jobid>.<task>`` / ``.e`` in the submit directory.

The PBS variables inside jobs are not set by the wrapper but by the
spank_pbs.so plugin (package slurm-wlm-basic-plugins, not slurm-wlm-torque),
which the test cluster loads through its plugstack.conf. It applies to every
batch job, sbatch or qsub. Observed values:

* ``PBS_ARRAY_INDEX`` = ``SLURM_ARRAY_TASK_ID`` (unset in non-array jobs);
* ``PBS_ARRAY_ID`` = ``SLURM_ARRAY_JOB_ID`` (the array's job id);
* ``PBS_JOBID`` = ``SLURM_JOB_ID``: a plain number, a different one per
  task (not the PBS style ``123[1]``);
* ``PBS_O_WORKDIR`` = ``SLURM_SUBMIT_DIR`` (the directory qsub ran in);
  also ``PBS_JOBDIR``, ``PBS_JOBNAME``, ``PBS_NODENUM``, ``PBS_TASKNUM``,
  ``PBS_O_HOME``/``PATH``/``SHELL``/``LANG``;
* ``PBS_ARRAYID`` (Torque's name for the index) is NOT set.
"""

import os
import stat
import subprocess
import time
from pathlib import Path

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

TIMEOUT = 30  # seconds per wait; jobs here take about 1-3 s in all


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -eu\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _read(path: Path) -> str:
    return path.read_text().strip()


def test_cluster_is_up(slurm_cluster):  # noqa: F811
    out = slurm_cluster.run(["sinfo", "-h", "-o", "%P %a %T %D"]).stdout.split()
    assert out == [slurm_cluster.partition + "*", "up", "idle", "1"]
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf)
    assert slurm_cluster.spank_pbs and os.path.exists(slurm_cluster.spank_pbs)


def test_sbatch_array_then_dependent_job(slurm_cluster, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    array_sh = _script(
        tmp_path / "array.sh",
        f'sleep 1\necho "$SLURM_ARRAY_TASK_ID" > {out}/task.$SLURM_ARRAY_TASK_ID\n'
        f"date +%s.%N > {out}/end.$SLURM_ARRAY_TASK_ID\n",
    )
    after_sh = _script(
        tmp_path / "after.sh",
        f"date +%s.%N > {out}/after.start\n"
        # What the array left when this job started: must be all of it.
        f"ls {out} | grep -c '^task\\.' > {out}/after.seen\n",
    )
    array_id = slurm_cluster.submit(
        ["--array=0-2", "-o", f"{tmp_path}/slurm-%A_%a.out", array_sh], cwd=tmp_path
    )
    dep_id = slurm_cluster.submit(
        [
            f"--dependency=afterany:{array_id}",
            "--kill-on-invalid-dep=yes",
            "-o",
            f"{tmp_path}/slurm-%j.out",
            after_sh,
        ],
        cwd=tmp_path,
    )
    states = slurm_cluster.wait([array_id, dep_id], timeout=TIMEOUT)

    assert states[array_id] == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED"}
    assert states[dep_id] == {None: "COMPLETED"}
    assert slurm_cluster.exit_codes(array_id) == {0: "0:0", 1: "0:0", 2: "0:0"}
    for i in range(3):
        assert _read(out / f"task.{i}") == str(i)
    assert _read(out / "after.seen") == "3"
    last_end = max(float(_read(out / f"end.{i}")) for i in range(3))
    assert float(_read(out / "after.start")) >= last_end


def test_qsub_wrapper_maps_array_and_depend(slurm_cluster, tmp_path):  # noqa: F811
    line = slurm_cluster.run(
        ["qsub", "--sbatchline", "-J", "0-2", "-W", "depend=afterany:123", "x.sh"],
        cwd=tmp_path,
    ).stdout
    assert "--array='0-2'" in line and "--dependency=afterany:123" in line
    line_t = slurm_cluster.run(["qsub", "--sbatchline", "-t", "0-2", "x.sh"], cwd=tmp_path).stdout
    assert "--array='0-2'" in line_t


def test_qsub_array_pbs_variables_and_dependency(slurm_cluster, tmp_path):  # noqa: F811
    sub = tmp_path / "submitdir"
    sub.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    _script(
        sub / "pbs.sh",
        "i=$PBS_ARRAY_INDEX\n"
        f'echo "$PBS_ARRAY_INDEX" > {out}/index.$i\n'
        f'echo "$PBS_O_WORKDIR" > {out}/workdir.$i\n'
        f'echo "$PBS_JOBID $SLURM_JOB_ID" > {out}/jobid.$i\n'
        f'echo "$PBS_ARRAY_ID $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID" > {out}/array.$i\n'
        f'echo "${{PBS_ARRAYID-unset}}" > {out}/arrayid.$i\n'
        f"date +%s.%N > {out}/end.$i\n",
    )
    _script(
        sub / "after.sh",
        "#SBATCH --kill-on-invalid-dep=yes\n"
        f"date +%s.%N > {out}/after.start\n"
        f"ls {out} | grep -c '^index\\.' > {out}/after.seen\n"
        f'echo "${{PBS_ARRAY_INDEX-unset}}" > {out}/after.index\n',
    )
    array_id = slurm_cluster.qsub(["-J", "0-2", "pbs.sh"], cwd=sub)
    dep_id = slurm_cluster.qsub(["-W", f"depend=afterany:{array_id}", "after.sh"], cwd=sub)
    job = slurm_cluster.run(["scontrol", "show", "job", dep_id]).stdout
    if "JobState=PENDING" in job:
        assert f"Dependency=afterany:{array_id}_*" in job

    states = slurm_cluster.wait([array_id, dep_id], timeout=TIMEOUT)
    assert states[array_id] == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED"}
    assert states[dep_id] == {None: "COMPLETED"}

    job_ids = set()
    for i in range(3):
        assert _read(out / f"index.{i}") == str(i)
        assert _read(out / f"workdir.{i}") == str(sub)
        pbs_jobid, slurm_jobid = _read(out / f"jobid.{i}").split()
        assert pbs_jobid == slurm_jobid and pbs_jobid.isdigit()
        job_ids.add(pbs_jobid)
        assert _read(out / f"array.{i}").split() == [array_id, array_id, str(i)]
        assert _read(out / f"arrayid.{i}") == "unset"  # no Torque PBS_ARRAYID
        # qsub's default output files, in the submit directory
        assert (sub / f"pbs.sh.o{array_id}.{i}").exists()
    assert len(job_ids) == 3  # one Slurm job id per task
    assert _read(out / "after.seen") == "3"
    assert _read(out / "after.index") == "unset"
    last_end = max(float(_read(out / f"end.{i}")) for i in range(3))
    assert float(_read(out / "after.start")) >= last_end


def test_failed_job_and_kill_on_invalid_dep(slurm_cluster, tmp_path):  # noqa: F811
    fail_sh = _script(tmp_path / "fail.sh", "exit 3\n")
    ok_sh = _script(tmp_path / "ok.sh", f"touch {tmp_path}/must-not-exist\n")
    failed = slurm_cluster.submit(["-o", "/dev/null", fail_sh], cwd=tmp_path)
    dep = slurm_cluster.submit(
        [f"--dependency=afterok:{failed}", "--kill-on-invalid-dep=yes", "-o", "/dev/null", ok_sh],
        cwd=tmp_path,
    )
    t0 = time.monotonic()
    states = slurm_cluster.wait([failed, dep], timeout=TIMEOUT)
    assert states[failed] == {None: "FAILED"}
    assert slurm_cluster.exit_codes(failed) == {None: "3:0"}
    assert states[dep] == {None: "CANCELLED"}
    assert not (tmp_path / "must-not-exist").exists()
    assert time.monotonic() - t0 < TIMEOUT


def test_env_works_for_plain_subprocess(slurm_cluster):  # noqa: F811
    # Code under test calls Slurm commands with the session's environment.
    r = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=slurm_cluster.env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    assert "UP" in r.stdout
