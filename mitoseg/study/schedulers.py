"""The batch schedulers, one class each behind one interface (`Scheduler`): Slurm, PBS Pro and Torque
(the PBS family shares most of its words), plus `Local` (this machine, nothing submitted).

One object knows everything scheduler-specific: its submit program and job scripts, its array range
syntax and array index variable, how it recognises a job of its own from the environment, the options
a site profile's keys become (a key it has no option for is refused, never dropped), its memory and
dependency syntax, which options belong to the array alone, and the command lines of the array, of
the dependent analysis job and of the verification job. Nothing here queries or cancels jobs: the
project never does (`scancel`/`qdel` by hand stop a study; mitoseg/study/launcher.py forwards the signal).
mitoseg/study/submit.py uses these objects to submit; `get(name)` finds one.

Standard library only: submit, the array element and the pre-flight run it with the host Python.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from mitoseg.core import env_vars as E
from mitoseg.study.commands import PBS_JOB, SLURM_JOB, job_script
from mitoseg.study.launcher import REPO_DIR
from mitoseg.core.paths import StudyPaths

# A size in a site profile ('64G', '64gb', '64GiB'): number and unit, spelled per scheduler by `memory`.
MEMORY = re.compile(r"^(\d+)\s*([kmgt])i?b?$", re.I)
# The shipped job scripts' requests: a profile that sets one of cpus/gpus/memory on PBS gets the
# others from here, because `-l select=` replaces the script's whole chunk.
SCRIPT_DEFAULTS = {"cpus": 8, "gpus": 1, "memory": "64G"}


def parse_job_id(output: str) -> str:
    """sbatch --parsable ('12' or '12;cluster') / qsub ('1234.server', '1234[].server')."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    if not lines:
        raise ValueError("the scheduler printed no job id")
    return lines[-1].split(";")[0].split()[-1]


class Scheduler:
    """The interface. Attributes: `name` (as in --scheduler and the site profile), `batch` (False:
    this machine), `program` (the submit command), `job_script_name` / `verify_script_name` (the
    repository's scripts), `index_variable` (the array index an element sees), `array_variables` (an
    element's array variables, never passed on to the analysis job), `analysis_args_env` /
    `analysis_defaults` (the analysis job's own request), `array_only` (options of the array alone),
    `refused` (site profile key -> why this scheduler has no option for it), `range_directive`,
    `script_range`, `script_walltime` (a job script's directive lines, read by `verify`).

    Methods of a batch scheduler: inside a job `in_job(env)`, `array_id(env)`, `array_key(env)`,
    `own_array_dependency(env)`; `dependency(job_id, array)` and `placeholder_dependency`; a site
    profile's options `memory(text)`, `queue_options(site)`, `resource_options(site)`,
    `array_range(first, last, throttle)`, `unsupported_key(site)`; the arguments after `--`:
    `without_array_options(args)`, `walltime_override(args)`; command lines `array_command`,
    `analysis_command`, `verify_command`."""
    name = ""
    batch = True
    program = ""
    job_script_name = ""
    verify_script_name = ""
    index_variable = ""
    array_variables: tuple = ()
    analysis_args_env = ""
    analysis_defaults = ""
    array_only: tuple = ()
    refused: dict = {}

    @property
    def job_script(self) -> Path:
        return job_script(self.job_script_name)

    @property
    def verify_script(self) -> Path:
        return job_script(self.verify_script_name)

    def unsupported_key(self, site) -> Optional[str]:
        """Why the first profile key set that this scheduler has no option for is refused, or None."""
        return next((why for key, why in self.refused.items() if getattr(site, key)), None)

    def without_array_options(self, args: list[str]) -> list[str]:
        """The arguments given after `--` that also apply to the analysis job: all but the array's
        range, job name and output files (`--output=X`, `-o X`, `-oX`, ...)."""
        out, skip = [], False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg.split("=", 1)[0] in self.array_only:
                skip = "=" not in arg     # the value is the next argument
                continue
            if any(arg.startswith(o) and not o.startswith("--") for o in self.array_only):
                continue                  # -oFILE
            out.append(arg)
        return out

    def walltime_override(self, args: list[str]) -> Optional[str]:
        """The walltime among the arguments after `--`, or None."""
        for i, arg in enumerate(args):
            found = self._walltime_in(arg, args[i + 1] if i + 1 < len(args) else "")
            if found:
                return found
        return None


class Slurm(Scheduler):
    name, program = "slurm", "sbatch"
    job_script_name, verify_script_name = SLURM_JOB, "slurm_setup_verification.sh"
    index_variable = "SLURM_ARRAY_TASK_ID"
    array_variables = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                       "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")
    analysis_args_env = "MITOSEG_ANALYSIS_SBATCH_ARGS"
    analysis_defaults = "--cpus-per-task=1 --mem=4G --time=02:00:00"
    array_only = ("--array", "-a", "--output", "-o", "--error", "-e", "--job-name", "-J")
    refused = {"project": "key 'project' is PBS Pro's -P; on slurm use 'account'"}
    placeholder_dependency = "afterany:ARRAY_ID"   # a dry run's, before there is an array id
    # The directive lines of a job script: its array range and walltime (checked by `verify`).
    range_directive = "#SBATCH --array"
    script_range = re.compile(r"^#SBATCH\s+(?:--array[=\s]|-a\s*)(\d+)-(\d+)\b", re.M)
    script_walltime = re.compile(r"^#SBATCH\s+(?:--time[=\s]|-t\s*)([\d:-]+)", re.M)

    # --- inside a job (also under slurm-wlm-torque's qsub wrapper: the element sees SLURM_* variables)
    def in_job(self, env) -> bool:
        return bool(E.read("SLURM_JOB_ID", env))

    def array_id(self, env) -> str:
        return E.read("SLURM_ARRAY_JOB_ID", env) or E.read("SLURM_JOB_ID", env)   # SLURM_JOB_ID: a non-array job

    def array_key(self, env) -> str:
        cluster = E.read("SLURM_CLUSTER_NAME", env)
        return f"slurm_{self.array_id(env)}" + (f".{cluster}" if cluster else "")

    def own_array_dependency(self, env) -> str:
        return self.dependency(self.array_id(env))

    def dependency(self, job_id: str, array: bool = True) -> str:
        return f"afterany:{job_id}"

    # --- the options of a site profile
    def memory(self, text: str) -> str:
        number, unit = MEMORY.match(text.strip()).groups()
        return f"{number}{unit.upper()}"

    def queue_options(self, site) -> list[str]:
        return [f"--partition={site.queue}"] * bool(site.queue) + [f"--account={site.account}"] * bool(site.account)

    def resource_options(self, site) -> list[str]:
        out = [f"--cpus-per-task={site.cpus}"] * bool(site.cpus)
        out += [f"--mem={self.memory(site.memory)}"] if site.memory else []
        if site.gpus is not None or site.gpu_type:
            n = SCRIPT_DEFAULTS["gpus"] if site.gpus is None else site.gpus
            out.append(f"--gres=gpu:{site.gpu_type + ':' if site.gpu_type else ''}{n}" if n else "--gres=none")
        return out + [f"--time={site.walltime}"] * bool(site.walltime)

    def array_range(self, first: int, last: int, throttle: Optional[int]) -> list[str]:
        return [f"--array={first}-{last}" + (f"%{throttle}" if throttle else "")]

    def _walltime_in(self, arg: str, nxt: str) -> Optional[str]:
        """`--time=X`, `--time X`, `-t X`, `-tX`."""
        if arg.startswith("--time="):
            return arg.split("=", 1)[1]
        if arg in ("--time", "-t") and nxt:
            return nxt
        return arg[2:] if arg.startswith("-t") and len(arg) > 2 else None

    # --- command lines
    def array_command(self, rng, env_vars: str, logs: Optional[Path], opts, extra_args, script) -> list[str]:
        out = [f"--output={StudyPaths.array_log(logs, self.name)}"] if logs else []
        return ["sbatch", "--parsable", *rng, f"--export=ALL,{env_vars}", f"--chdir={REPO_DIR}", *out, *opts,
                *extra_args, str(script)]

    def analysis_command(self, dependency: str, log_dir: Path, opts, script) -> list[str]:
        log = StudyPaths.analysis_log(log_dir, True)
        return ["sbatch", "--parsable", f"--dependency={dependency}", "--kill-on-invalid-dep=yes",
                "--job-name=mitoseg_analysis", f"--output={log}", f"--chdir={REPO_DIR}", *opts, str(script)]

    def verify_command(self, logs: Path, opts) -> list[str]:
        return ["sbatch", "--parsable", f"--chdir={REPO_DIR}", f"--output={logs / 'mitoseg_verify_%j.out'}", *opts]


class _Pbs(Scheduler):
    """What PBS Pro and Torque share: qsub, the PBS job scripts, `-q/-A/-P`, `-l` resources, job ids
    such as '1234[5].server'."""
    program = "qsub"
    job_script_name, verify_script_name = PBS_JOB, "pbs_setup_verification.sh"
    analysis_args_env = "MITOSEG_ANALYSIS_QSUB_ARGS"
    # The directive lines of a job script: its array range (-J PBS Pro, -t Torque) and walltime.
    range_directive = "#PBS -J"
    script_range = re.compile(r"^#PBS\s+-[Jt]\s+(\d+)-(\d+)\s*$", re.M)
    script_walltime = re.compile(r"^#PBS\s+-l\s+.*\bwalltime=([\d:]+)", re.M)

    # --- inside a job
    def in_job(self, env) -> bool:
        return bool(E.read("PBS_JOBID", env))

    def array_id(self, env) -> Optional[str]:
        return E.read("PBS_ARRAY_ID", env) or E.read("PBS_JOBID", env)

    def array_key(self, env) -> Optional[str]:
        """PBS_ARRAY_ID or PBS_JOBID with the element's [index] removed, the server name kept."""
        pbs = self.array_id(env)
        if not pbs:
            return None
        num, server = self.id_parts(pbs)
        return f"pbs_{num}{server}"

    def own_array_dependency(self, env) -> str:
        job_id = self.array_id(env)
        return self.dependency(job_id, array="[" in job_id)

    @staticmethod
    def id_parts(job_id: str) -> tuple[str, str]:
        """'1234[5].server' / '1234[].server' / '1234.server' -> ('1234', '.server')."""
        m = re.match(r"^\s*(\d+)(?:\[[^\]]*\])?(\.\S*)?\s*$", job_id or "")
        if not m:
            raise ValueError(f"cannot parse PBS job id {job_id!r}")
        return m.group(1), m.group(2) or ""

    def dependency(self, job_id: str, array: bool = True) -> str:
        num, server = self.id_parts(job_id)
        return f"{self.array_dependency}:{num}[]{server}" if array else f"afterany:{num}{server}"

    # --- the options of a site profile
    def memory(self, text: str) -> str:
        number, unit = MEMORY.match(text.strip()).groups()
        return f"{number}{unit.lower()}b"

    def queue_options(self, site) -> list[str]:
        out = ["-q", site.queue] * bool(site.queue) + ["-A", site.account] * bool(site.account)
        return out + ["-P", site.project] * bool(site.project)

    def resource_options(self, site) -> list[str]:
        out = []
        if any(v is not None for v in (site.cpus, site.gpus, site.memory, site.gpu_type)):
            cpus = site.cpus or SCRIPT_DEFAULTS["cpus"]
            gpus = SCRIPT_DEFAULTS["gpus"] if site.gpus is None else site.gpus
            out += self._chunk(cpus, gpus, self.memory(site.memory or SCRIPT_DEFAULTS["memory"]), site.gpu_type)
        return out + ["-l", f"walltime={site.walltime}"] * bool(site.walltime)

    def _walltime_in(self, arg: str, nxt: str) -> Optional[str]:
        """`-l walltime=X`, or inside another -l list."""
        text = nxt if arg == "-l" else arg[2:] if arg.startswith("-l") else ""
        m = re.search(r"(?:^|[,:])walltime=([\d:-]+)", text)
        return m.group(1) if m else None

    # --- command lines
    def array_command(self, rng, env_vars: str, logs: Optional[Path], opts, extra_args, script) -> list[str]:
        out = ["-j", "oe", "-o", f"{StudyPaths.array_log(logs, self.name)}/"] if logs else []
        return ["qsub", "-V", "-v", env_vars, *rng, *out, *opts, *extra_args, str(script)]

    def analysis_command(self, dependency: str, log_dir: Path, opts, script) -> list[str]:
        log = StudyPaths.analysis_log(log_dir, False)
        return ["qsub", "-W", f"depend={dependency}", "-N", "mitoseg_analysis", "-j", "oe", "-o", str(log), *opts,
                str(script)]

    def verify_command(self, logs: Path, opts) -> list[str]:
        return ["qsub", "-V", "-j", "oe", "-o", f"{logs}/", *opts]


class PbsPro(_Pbs):
    name = "pbspro"
    index_variable = "PBS_ARRAY_INDEX"
    array_variables = ("PBS_ARRAY_INDEX", "PBS_ARRAY_ID")
    analysis_defaults = "-l select=1:ncpus=1:mem=8gb -l walltime=02:00:00"
    array_only = ("-J", "-o", "-e", "-N")
    array_dependency = "afterany"
    placeholder_dependency = "afterany:ARRAY_ID[]"

    def _chunk(self, cpus: int, gpus: int, mem: str, gpu_type: Optional[str]) -> list[str]:
        return ["-l", f"select=1:ncpus={cpus}:ngpus={gpus}:mem={mem}" + (f":gpu_type={gpu_type}" if gpu_type else "")]

    def array_range(self, first: int, last: int, throttle: Optional[int]) -> list[str]:
        """-J A-B plus the max_run_subjobs job attribute (OpenPBS 20 and later; an older PBS Pro
        refuses the submission with an unknown-attribute error, never ignores it)."""
        return ["-J", f"{first}-{last}"] + (["-W", f"max_run_subjobs={throttle}"] if throttle else [])


class Torque(_Pbs):
    name = "torque"
    index_variable = "PBS_ARRAYID"
    array_variables = ("PBS_ARRAYID",)
    analysis_defaults = "-l nodes=1:ppn=1 -l walltime=02:00:00"
    array_only = ("-t", "-o", "-e", "-N")
    refused = {"project": "key 'project' is PBS Pro's -P; on torque use 'account'",
               "gpu_type": "key 'gpu_type' is not supported on torque; use 'extra_args'"}
    array_dependency = "afteranyarray"
    placeholder_dependency = "afteranyarray:ARRAY_ID[]"

    def in_job(self, env) -> bool:
        return super().in_job(env) and E.read("PBS_ARRAYID", env) not in (None, "")

    def _chunk(self, cpus: int, gpus: int, mem: str, gpu_type: Optional[str]) -> list[str]:
        return ["-l", f"nodes=1:ppn={cpus}" + (f":gpus={gpus}" if gpus else ""), "-l", f"mem={mem}"]

    def array_range(self, first: int, last: int, throttle: Optional[int]) -> list[str]:
        return ["-t", f"{first}-{last}" + (f"%{throttle}" if throttle else "")]


class Local(Scheduler):
    """This machine: `run_study.py local` (mitoseg/study/runner.py run_local) trains the cells itself."""
    name, batch = "local", False


SLURM, PBSPRO, TORQUE, LOCAL = Slurm(), PbsPro(), Torque(), Local()
BATCH = (PBSPRO, TORQUE, SLURM)            # the site profile's `scheduler` values, in this order
# Which scheduler runs us: Slurm first (its slurm-wlm-torque qsub wrapper also sets PBS_* variables
# through spank_pbs), then Torque (PBS_ARRAYID) before PBS Pro.
DETECTION_ORDER = (SLURM, TORQUE, PBSPRO)
# The array index of an element: PBS Pro, Torque, Slurm (first one set wins).
INDEX_ORDER = (PBSPRO, TORQUE, SLURM)
_BY_NAME = {s.name: s for s in (*BATCH, LOCAL)}


def get(name: str) -> Scheduler:
    return _BY_NAME[name]


def running_under(env) -> Optional[Scheduler]:
    """The scheduler whose job this process is, or None."""
    return next((s for s in DETECTION_ORDER if s.in_job(env)), None)
