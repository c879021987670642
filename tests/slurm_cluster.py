"""A real one-node Slurm cluster for tests, built from Debian's packages.

Install the packages with ``bash .ci/install_slurm.sh`` (slurm-wlm and
slurm-wlm-torque, Debian 12: Slurm 22.05).  Without them, the fixture skips.

Use from a test module (run with ``python -m pytest`` from the repo root;
``tests/__init__.py`` makes ``tests`` importable as a package)::

    from tests.slurm_cluster import slurm_cluster  # noqa: F401  (fixture)

    def test_something(slurm_cluster, tmp_path):
        job = slurm_cluster.submit(["--array=0-2", str(script)])
        states = slurm_cluster.wait([job], timeout=30)
        assert set(states[job].values()) == {"COMPLETED"}
        subprocess.run(["squeue"], env=slurm_cluster.env, check=True)

or, outside pytest::

    with start_cluster("/tmp/x") as cluster:
        ...

The fixture is session-scoped: one cluster per pytest session (under 1 s to
come up here), shared by every test that asks for it; while it runs,
``os.environ["SLURM_CONF"]`` points at its slurm.conf, so sbatch, squeue,
qsub, ... called by the code under test talk to it.  At the end of the
session it cancels what is left in the queue, stops the daemons it started
(by PID: SIGTERM, then SIGKILL) and restores ``SLURM_CONF``.

What it configures (see ``_write_config``):

* no munge: ``AuthType=auth/none``, ``CredType=cred/none``; ``SlurmUser=root``
  (the daemons must run as root, so the fixture skips for another user);
* every state/spool/log/pid file under ``workdir``; ``SlurmctldPort`` and
  ``SlurmdPort`` on free high ports, so it never clashes with
  /etc/slurm/slurm.conf nor with another test session on the same machine.
  Every daemon and client gets ``-f``/``SLURM_CONF`` explicitly;
* the node line from ``slurmd -C`` with ``RealMemory`` *below* the real one
  (a node configured with more memory than it has is drained with
  "Low RealMemory"), ``ReturnToService=2``, one partition ``debug``
  (``Default=YES State=UP``), ``select/cons_tres`` with
  ``CR_Core_Memory`` and ``DefMemPerCPU`` so several jobs share the node;
* ``JobCompType=jobcomp/filetxt``: one line per finished job (or array task)
  with its final ``JobState``/``ExitCode``; read by :meth:`job_states`
  (there is no accounting database, so no sacct);
* a plugstack.conf loading ``spank_pbs.so`` so batch jobs see PBS variables
  (``PBS_JOBID``, ``PBS_ARRAY_INDEX``, ``PBS_ARRAY_ID``, ``PBS_O_WORKDIR``...).
  Note: that .so is shipped by slurm-wlm-basic-plugins, not by
  slurm-wlm-torque (which only has the perl wrappers: qsub, qstat, ...).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

import pytest

__all__ = [
    "SlurmCluster",
    "SlurmClusterError",
    "slurm_cluster",
    "slurm_available",
    "start_cluster",
    "TERMINAL_STATES",
]

# Final job states (squeue long names, jobcomp/filetxt JobState values).
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)

_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_PLUGIN_NAME = "spank_pbs.so"


class SlurmClusterError(RuntimeError):
    """The cluster could not be started, or a Slurm command failed."""


def _which(name: str) -> Optional[str]:
    """Find a program on PATH or in the sbin dirs (daemons live in /usr/sbin)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    return shutil.which(name, path=path)


def slurm_available() -> Optional[str]:
    """Return None if a cluster can be started here, else the reason why not."""
    missing = [p for p in ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo") if not _which(p)]
    if missing:
        return (
            f"Slurm not installed ({', '.join(missing)} missing): "
            "run `bash .ci/install_slurm.sh`"
        )
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "a local Slurm cluster needs root (SlurmUser=root, slurmd switches users)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> List[int]:
    """n distinct free TCP ports (kernel-chosen, i.e. from the ephemeral range)."""
    ports: List[int] = []
    while len(ports) < n:
        p = _free_port()
        if p not in ports:
            ports.append(p)
    return ports


def _find_spank_pbs() -> Optional[str]:
    """Path of spank_pbs.so: asked from dpkg, then searched in the lib dirs."""
    for pkg in ("slurm-wlm-torque", "slurm-wlm-basic-plugins"):
        try:
            out = subprocess.run(
                ["dpkg", "-L", pkg], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            if line.endswith("/" + _PLUGIN_NAME) and os.path.exists(line):
                return line
    for base in ("/usr/lib", "/usr/lib64", "/usr/local/lib"):
        for p in sorted(Path(base).glob(f"**/slurm*/{_PLUGIN_NAME}")):
            return str(p)
    return None


def _node_hardware(slurmd: str) -> Dict[str, str]:
    """`slurmd -C` parsed into {key: value} (NodeName, CPUs, ..., RealMemory)."""
    proc = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SlurmClusterError(f"slurmd -C failed: {proc.stderr.strip()}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("NodeName=")), "")
    hw = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    if "NodeName" not in hw or "CPUs" not in hw:
        raise SlurmClusterError(f"cannot parse `slurmd -C` output: {proc.stdout!r}")
    return hw


def _slurm_pids(zombies_only: bool = False) -> List[int]:
    """PIDs whose command name starts with "slurm" (optionally: zombies only)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat_line = (d / "stat").read_text()
            except OSError:
                continue
            comm = stat_line[stat_line.find("(") + 1 : stat_line.rfind(")")]
            state = stat_line[stat_line.rfind(")") + 2 :][:1]
            if comm.startswith("slurm") and (state == "Z" or not zombies_only):
                pids.append(int(d.name))
    return pids


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"  ({path}: missing)"
    return "\n".join("  " + ln for ln in lines[-n:]) or f"  ({path}: empty)"


class SlurmCluster:
    """A running one-node cluster. Create it with :func:`start_cluster`.

    Attributes:
        workdir:   the directory holding everything (conf, state, logs).
        conf:      path of its slurm.conf.
        env:       a copy of os.environ with SLURM_CONF set: pass it as
                   ``env=`` to subprocesses that run Slurm commands.
        node:      the node name (short host name, from ``slurmd -C``).
        partition: the default partition's name.
        jobcomp:   the jobcomp/filetxt file (one line per finished job/task).
        spank_pbs: path of spank_pbs.so loaded via plugstack.conf, or None.
        startup_seconds: how long it took until the node was idle.
    """

    partition = "debug"

    def __init__(self, workdir: Union[str, Path]):
        self.workdir = Path(workdir).resolve()
        self.conf = self.workdir / "etc" / "slurm.conf"
        self.jobcomp = self.workdir / "log" / "jobcomp.txt"
        self.env: Dict[str, str] = dict(os.environ, SLURM_CONF=str(self.conf))
        self.node = ""
        self.spank_pbs: Optional[str] = None
        self.ctld_port = 0
        self.slurmd_port = 0
        self.startup_seconds = 0.0
        self._procs: Dict[str, subprocess.Popen] = {}
        self._pids_before = set(_slurm_pids())
        self._stopped = False

    # ------------------------------------------------------------ running it
    def _write_config(self) -> None:
        for sub in ("etc", "state", "spool", "log", "run"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        hw = _node_hardware(_which("slurmd") or "slurmd")
        self.node = hw["NodeName"]
        real = int(hw.get("RealMemory", "1024"))
        # Below the real memory: RealMemory above what slurmd measures drains
        # the node ("Low RealMemory"). Keep 10 % (at least 256 MiB) spare.
        mem = max(64, min(real - 256, int(real * 0.9)))
        node_kv = " ".join(
            f"{k}={hw[k]}"
            for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
            if k in hw
        )
        self.ctld_port, self.slurmd_port = _free_ports(2)
        w = self.workdir
        self.spank_pbs = _find_spank_pbs()
        plugstack = w / "etc" / "plugstack.conf"
        plugstack.write_text(
            f"optional {self.spank_pbs}\n" if self.spank_pbs else "# spank_pbs.so not found\n"
        )
        conf = f"""\
# Generated by tests/slurm_cluster.py for a throw-away one-node test cluster.
ClusterName=testcluster
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool
SlurmctldPidFile={w}/run/slurmctld.pid
SlurmdPidFile={w}/run/slurmd.pid
SlurmctldLogFile={w}/log/slurmctld.log
SlurmdLogFile={w}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={plugstack}
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=128
ReturnToService=2
MaxArraySize=100001
MaxJobCount=200000
MinJobAge=300
KillWait=2
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=300
Waittime=0
NodeName={self.node} NodeAddr=127.0.0.1 {node_kv} RealMemory={mem} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)

    def _start(self, timeout: float) -> None:
        t0 = time.monotonic()
        self._write_config()
        for name in ("slurmctld", "slurmd"):
            exe = _which(name)
            out = open(self.workdir / "log" / f"{name}.out", "wb")
            try:
                # -D: foreground, so the PID is the daemon's; new session so a
                # signal to pytest's group does not reach it (and vice versa).
                self._procs[name] = subprocess.Popen(
                    [exe, "-D", "-f", str(self.conf)],
                    env=self.env,
                    cwd=str(self.workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                out.close()
            if name == "slurmctld":
                self._wait_ctld(t0 + timeout)
        self._wait_idle(t0 + timeout)
        self.startup_seconds = time.monotonic() - t0

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise SlurmClusterError(
                    f"{name} exited with {proc.returncode} during startup\n" + self.logs()
                )

    def _wait_ctld(self, deadline: float) -> None:
        while True:
            self._check_alive()
            r = self.run(["scontrol", "ping"], check=False, timeout=15)
            if "UP" in r.stdout:
                return
            if time.monotonic() > deadline:
                raise SlurmClusterError(
                    f"slurmctld did not answer in time: {r.stdout}{r.stderr}\n" + self.logs()
                )
            time.sleep(0.2)

    def _wait_idle(self, deadline: float) -> None:
        state = ""
        while True:
            self._check_alive()
            r = self.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], check=False)
            state = r.stdout.strip().lower()
            if state in ("idle", "mixed", "allocated"):
                return
            # "inval": slurmd registered with less than the configured
            # hardware (e.g. RealMemory too high); drain/down: other trouble.
            if any(s in state for s in ("drain", "down", "fail", "inval")):
                reason = self.run(["sinfo", "-h", "-R", "-o", "%E"], check=False).stdout
                raise SlurmClusterError(
                    f"node {self.node} is {state!r} ({reason.strip()})\n" + self.logs()
                )
            if time.monotonic() > deadline:
                raise SlurmClusterError(
                    f"node {self.node} not idle in time (state {state!r}: {r.stderr.strip()})\n"
                    + self.logs()
                )
            time.sleep(0.2)

    def logs(self, n: int = 30) -> str:
        """The tail of the daemons' logs, for error messages."""
        parts = []
        for name in ("slurmctld", "slurmd"):
            for suffix in ("log", "out"):
                p = self.workdir / "log" / f"{name}.{suffix}"
                parts.append(f"--- {p} (last {n} lines)\n{_tail(p, n)}")
        return "\n".join(parts)

    def stop(self, timeout: float = 15) -> None:
        """Cancel leftover jobs, then stop the daemons this object started.

        By PID only: SIGTERM, wait, SIGKILL. A slurmstepd left over (one
        per job step; they are daemonized, not our children) is found by its
        open files under ``workdir`` and killed. Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        ctld = self._procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            with contextlib.suppress(Exception):
                self.run(["scancel", "--full", "--quiet", "-u", "root"], check=False, timeout=10)
                # Give the steps KillWait to die while slurmd still runs.
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and self._squeue_lines(["-t", "RUNNING,COMPLETING"]):
                    time.sleep(0.2)
        for name in ("slurmd", "slurmctld"):
            proc = self._procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._kill_leftovers()

    def _leftover_pids(self) -> List[int]:
        """Live processes of this cluster that outlived the daemons: those with
        a file open under our workdir (slurmstepd keeps slurmd.log and its
        socket in our spool dir open). slurmstepd daemonizes (setsid, parent
        init), so neither the daemons' PIDs nor their session find it."""
        root = str(self.workdir) + os.sep
        me = os.getpid()
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == me:
                continue
            try:
                fds = os.listdir(d / "fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(d / "fd" / fd).startswith(root):
                        found.append(int(d.name))
                        break
                except OSError:
                    continue
        return found

    def _kill_leftovers(self, grace: float = 3.0) -> None:
        deadline = time.monotonic() + grace
        pids = self._leftover_pids()
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = self._leftover_pids()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # Exited slurmstepds are reaped by init (not by us: they are not our
        # children), here within ~1 s; wait so `pgrep slurm` is clean after.
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            pid not in self._pids_before for pid in _slurm_pids(zombies_only=True)
        ):
            time.sleep(0.1)

    def __enter__(self) -> "SlurmCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ using it
    def run(
        self, args: List[str], check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        """Run a command (e.g. ["squeue"]) against this cluster; text output."""
        kw.setdefault("env", self.env)
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise SlurmClusterError(
                f"{' '.join(map(str, args))} exited {r.returncode}: {r.stderr.strip()} {r.stdout.strip()}"
            )
        return r

    def submit(self, args: List[str], **kw) -> str:
        """``sbatch --parsable *args``; returns the job id (for an array: the
        array's job id, usable as ``afterany:<id>``)."""
        out = self.run(["sbatch", "--parsable", *map(str, args)], **kw).stdout.strip()
        job_id = out.splitlines()[-1].split(";")[0].strip()
        if not job_id.isdigit():
            raise SlurmClusterError(f"unexpected sbatch output: {out!r}")
        return job_id

    def qsub(self, args: List[str], **kw) -> str:
        """The slurm-wlm-torque ``qsub`` wrapper; returns the job id it prints.

        The wrapper (a perl script) builds an ``sbatch`` command line and
        prints the last word of sbatch's output, so the output is checked to
        be a job id. Pass ``cwd=`` (its default -o/-e files
        ``<script>.o<jobid>[.<task>]`` land in the current directory)."""
        r = self.run(["qsub", *map(str, args)], **kw)
        job_id = r.stdout.strip().splitlines()[-1].strip() if r.stdout.strip() else ""
        if not job_id.isdigit():
            raise SlurmClusterError(f"qsub failed: {r.stdout.strip()} {r.stderr.strip()}")
        return job_id

    def _squeue_lines(self, extra: List[str]) -> List[List[str]]:
        r = self.run(
            ["squeue", "-h", "-r", "-o", "%i|%A|%F|%K|%T", *extra], check=False, timeout=30
        )
        if r.returncode != 0:
            return []
        return [ln.split("|") for ln in r.stdout.splitlines() if ln.count("|") == 4]

    def _jobcomp_records(self) -> List[Dict[str, str]]:
        try:
            text = self.jobcomp.read_text(errors="replace")
        except OSError:
            return []
        recs = []
        for line in text.splitlines():
            # Values never contain spaces except after the last key we need.
            recs.append(dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line)))
        return recs

    def job_states(self, job_id: Union[str, int]) -> Dict[Optional[int], str]:
        """States of a job: ``{array_task_id: state}``, or ``{None: state}``
        for a job that is not an array.

        Finished jobs/tasks come from the jobcomp/filetxt file (final states:
        COMPLETED, FAILED, CANCELLED, TIMEOUT, ...), the others from squeue
        (PENDING, RUNNING, COMPLETING...). Pending array tasks not yet split
        off are expanded by ``squeue -r``. Empty if the job is unknown.
        """
        jid = str(job_id)
        states: Dict[Optional[int], str] = {}
        # squeue -t all also lists finished jobs for MinJobAge seconds.
        for ident, job, array_job, task, state in self._squeue_lines(["-t", "all"]):
            if jid not in (job, array_job):
                continue
            key = int(task) if task.isdigit() else None
            states[key] = state
        for rec in self._jobcomp_records():
            array_job = rec.get("ArrayJobId")
            task = rec.get("ArrayTaskId")
            if rec.get("JobId") == jid or array_job == jid:
                key = int(task) if (array_job and task and task.isdigit()) else None
                states[key] = rec.get("JobState", "UNKNOWN")
        return states

    def exit_codes(self, job_id: Union[str, int]) -> Dict[Optional[int], str]:
        """``{array_task_id or None: "exit:signal"}`` of finished jobs (jobcomp)."""
        jid = str(job_id)
        out: Dict[Optional[int], str] = {}
        for rec in self._jobcomp_records():
            array_job = rec.get("ArrayJobId")
            task = rec.get("ArrayTaskId")
            if rec.get("JobId") == jid or array_job == jid:
                key = int(task) if (array_job and task and task.isdigit()) else None
                out[key] = rec.get("ExitCode", "")
        return out

    def wait(
        self, job_ids: Iterable[Union[str, int]], timeout: float = 60, poll: float = 0.25
    ) -> Dict[str, Dict[Optional[int], str]]:
        """Wait until every task of every job is in a final state.

        Returns ``{job_id: job_states(job_id)}``. Raises TimeoutError (with
        the states seen and squeue's reasons) if not done in ``timeout`` s.
        """
        ids = [str(j) for j in job_ids]
        deadline = time.monotonic() + timeout
        while True:
            all_states = {j: self.job_states(j) for j in ids}
            if all(s and set(s.values()) <= TERMINAL_STATES for s in all_states.values()):
                return all_states
            if time.monotonic() > deadline:
                reasons = self.run(
                    ["squeue", "-h", "-r", "-o", "%i %T %r"], check=False
                ).stdout
                raise TimeoutError(
                    f"jobs {ids} not finished after {timeout}s: {all_states}\n"
                    f"squeue:\n{reasons}"
                )
            time.sleep(poll)


def start_cluster(workdir: Union[str, Path], timeout: float = 60) -> SlurmCluster:
    """Write a config under ``workdir`` (created if needed), start slurmctld
    and slurmd, and wait until the node is idle.

    Returns the running :class:`SlurmCluster`; also a context manager that
    calls :meth:`SlurmCluster.stop` on exit. Raises SlurmClusterError (with
    the daemons' log tails) if the node is not idle within ``timeout`` s;
    the daemons are stopped before raising.
    """
    reason = slurm_available()
    if reason:
        raise SlurmClusterError(reason)
    cluster = SlurmCluster(workdir)
    try:
        cluster._start(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Session-wide one-node Slurm cluster (:class:`SlurmCluster`).

    Skips if Slurm is not installed (or not root). Sets
    ``os.environ["SLURM_CONF"]`` for the session and restores it after.
    """
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    # Short path: slurmd puts unix sockets (<=108 bytes) in its spool dir.
    workdir = Path(tempfile.mkdtemp(prefix="slurm-", dir=tmp_path_factory.getbasetemp()))
    cluster = start_cluster(workdir)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
