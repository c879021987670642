"""The site profile: one small JSON file with what a cluster needs for every job the project submits
(queue, account, resources, walltime per array element, array throttle, log folder, module lines,
container image, extra binds), and the scheduler options it turns into.

Which profile (first found wins, `describe` says which): `--site FILE`, else `$MITOSEG_SITE`, else
`./mitoseg_site.json` (the folder the command runs in), else `$XDG_CONFIG_HOME/mitoseg/site.json`
(default `~/.config/mitoseg/site.json`); none found: no profile (the job scripts' directives apply).
A named file that does not exist, an unknown key or a bad value is a one-line error naming the file
and the key. JSON has no comments: a `_comment` key (text or a list of text) is accepted and ignored.

Standard library only: submit, the array element and the pre-flight run it with the host Python.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SITE_ENV = "MITOSEG_SITE"
LOCAL_NAME = "mitoseg_site.json"
SCHEDULERS = ("pbspro", "torque", "slurm")
# The shipped job scripts' requests: a profile that sets one of cpus/gpus/memory on PBS gets the
# others from here, because `-l select=` replaces the script's whole chunk.
SCRIPT_DEFAULTS = {"cpus": 8, "gpus": 1, "memory": "64G"}
_MEMORY = re.compile(r"^(\d+)\s*([kmgt])i?b?$", re.I)
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


class SiteError(ValueError):
    """A site profile that cannot be used: one line naming the file and the key."""


def _text(v):
    return isinstance(v, str) and v.strip() != "" and "\n" not in v


def _text_list(v):
    return isinstance(v, list) and all(_text(x) for x in v)


def _count(minimum):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


_RULES = {  # key -> (is_ok(value), what it must be)
    "scheduler": (lambda v: v in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
    "queue": (_text, "a queue (PBS -q) or partition (Slurm --partition) name"),
    "account": (_text, "an account (Slurm --account, PBS -A)"),
    "project": (_text, "a PBS Pro project (-P)"),
    "gpus": (_count(0), "an integer >= 0 (GPUs per array element)"),
    "gpu_type": (_text, "a GPU type, e.g. a40 (Slurm --gres=gpu:TYPE:N, PBS Pro gpu_type=TYPE)"),
    "memory": (lambda v: isinstance(v, str) and bool(_MEMORY.match(v.strip())), "a size such as 64G or 64gb"),
    "cpus": (_count(1), "an integer >= 1"),
    "walltime": (lambda v: isinstance(v, str) and bool(_WALLTIME.match(v)), "[D-]HH:MM:SS, e.g. 02:00:00"),
    "array_throttle": (_count(1), "an integer >= 1 (array elements running at once)"),
    "log_dir": (_text, "a folder (absolute, or relative to the study folder)"),
    "modules": (_text_list, "a list of shell lines, e.g. [\"module load apptainer\"]"),
    "container": (_text, "a .sif file, a sandbox folder or a docker:// / oras:// / library:// address"),
    "binds": (_text_list, "a list of host folders to bind into the container"),
    "extra_args": (_text_list, "a list of extra qsub/sbatch arguments for every job"),
    "retry_budget": (_count(1), "an integer >= 1 (failures before a resubmission stops retrying a cell)"),
}


@dataclass(frozen=True)
class SiteProfile:
    path: Optional[Path] = None        # None: no profile
    source: str = "none"               # how it was found
    scheduler: Optional[str] = None
    queue: Optional[str] = None
    account: Optional[str] = None
    project: Optional[str] = None
    gpus: Optional[int] = None
    gpu_type: Optional[str] = None
    memory: Optional[str] = None
    cpus: Optional[int] = None
    walltime: Optional[str] = None     # per array element (= per cell, or per K cells run at once)
    array_throttle: Optional[int] = None
    log_dir: Optional[str] = None
    modules: list = field(default_factory=list)
    container: Optional[str] = None
    binds: list = field(default_factory=list)
    extra_args: list = field(default_factory=list)
    retry_budget: Optional[int] = None   # mitoseg.results.retry_budget: below a grid file's, above the default

    def describe(self) -> str:
        if self.path is None:
            return (f"site profile: none (no --site, ${SITE_ENV}, ./{LOCAL_NAME} or {user_profile_path()}): "
                    "the job scripts' directives apply")
        return f"site profile: {self.path} ({self.source})"


def user_profile_path(environ=None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "mitoseg" / "site.json"


def find_profile(flag: Optional[str] = None, environ=None, cwd=None) -> tuple[Optional[Path], str]:
    """(path of the profile to use or None, how it was chosen)."""
    env = os.environ if environ is None else environ
    if flag:
        return Path(flag).expanduser().resolve(), "--site"
    if env.get(SITE_ENV):
        return Path(env[SITE_ENV]).expanduser().resolve(), f"${SITE_ENV}"
    local = Path(cwd or os.getcwd()) / LOCAL_NAME
    if local.is_file():
        return local.resolve(), f"./{LOCAL_NAME}"
    user = user_profile_path(env)
    if user.is_file():
        return user.resolve(), "user default"
    return None, "none"


def load_site(flag: Optional[str] = None, environ=None, cwd=None) -> SiteProfile:
    path, source = find_profile(flag, environ, cwd)
    return SiteProfile() if path is None else read_profile(path, source)


def read_profile(path, source: str = "given") -> SiteProfile:
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except OSError as err:
        raise SiteError(f"site profile {path} ({source}): cannot read it ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise SiteError(f"site profile {path}: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise SiteError(f"site profile {path}: must be a JSON object")
    comment = values.pop("_comment", None)
    if comment is not None and not (isinstance(comment, str) or _text_list(comment)):
        raise SiteError(f"site profile {path}: key '_comment' must be text or a list of text")
    for key, value in values.items():
        if key not in _RULES:
            raise SiteError(f"site profile {path}: unknown key {key!r} (known: _comment, {', '.join(_RULES)})")
        ok, want = _RULES[key]
        if not ok(value):
            raise SiteError(f"site profile {path}: key {key!r} must be {want}, got {value!r}")
    profile = SiteProfile(path=path, source=source, **values)
    if profile.scheduler:
        check_for_scheduler(profile, profile.scheduler)
    return profile


def check_for_scheduler(site: SiteProfile, scheduler: str) -> None:
    """SiteError for a key the scheduler has no option for: checked when the profile names its scheduler,
    and again when the scheduler is detected at submission, so a key is never dropped in silence."""
    if site.project and scheduler in ("slurm", "torque"):
        raise SiteError(f"site profile {site.path}: key 'project' is PBS Pro's -P; on {scheduler} use 'account'")
    if site.gpu_type and scheduler == "torque":
        raise SiteError(f"site profile {site.path}: key 'gpu_type' is not supported on torque; use 'extra_args'")


# --- the scheduler options of a profile -------------------------------------------------------------
def memory_for(scheduler: str, text: str) -> str:
    """'64G' -> Slurm '64G', PBS '64gb'."""
    number, unit = _MEMORY.match(text.strip()).groups()
    return f"{number}{unit.upper()}" if scheduler == "slurm" else f"{number}{unit.lower()}b"


def log_dir(site: SiteProfile, study_logs: Path) -> Path:
    """Where the jobs' output goes: the profile's log_dir (relative: to the study), else STUDY/logs/."""
    if not site.log_dir:
        return study_logs
    path = Path(os.path.expanduser(site.log_dir))
    return path if path.is_absolute() else study_logs.parent / path


def common_options(site: SiteProfile, scheduler: str) -> list[str]:
    """Queue, account, project and the extra arguments: every job."""
    check_for_scheduler(site, scheduler)
    if scheduler == "slurm":
        out = [f"--partition={site.queue}"] * bool(site.queue) + [f"--account={site.account}"] * bool(site.account)
    else:
        out = ["-q", site.queue] * bool(site.queue) + ["-A", site.account] * bool(site.account)
        out += ["-P", site.project] * bool(site.project)
    return out + list(site.extra_args)


def resource_options(site: SiteProfile, scheduler: str) -> list[str]:
    """CPUs, memory, GPUs and walltime of one array element (only what the profile sets)."""
    if scheduler == "slurm":
        out = [f"--cpus-per-task={site.cpus}"] * bool(site.cpus)
        out += [f"--mem={memory_for('slurm', site.memory)}"] if site.memory else []
        if site.gpus is not None or site.gpu_type:
            n = SCRIPT_DEFAULTS["gpus"] if site.gpus is None else site.gpus
            out.append(f"--gres=gpu:{site.gpu_type + ':' if site.gpu_type else ''}{n}" if n else "--gres=none")
        return out + [f"--time={site.walltime}"] * bool(site.walltime)
    wanted = (site.cpus, site.gpus, site.memory, site.gpu_type)
    out = []
    if any(v is not None for v in wanted):
        cpus = site.cpus or SCRIPT_DEFAULTS["cpus"]
        gpus = SCRIPT_DEFAULTS["gpus"] if site.gpus is None else site.gpus
        mem = memory_for(scheduler, site.memory or SCRIPT_DEFAULTS["memory"])
        if scheduler == "pbspro":
            chunk = f"select=1:ncpus={cpus}:ngpus={gpus}:mem={mem}" + (f":gpu_type={site.gpu_type}" if site.gpu_type else "")
            out += ["-l", chunk]
        else:
            out += ["-l", f"nodes=1:ppn={cpus}" + (f":gpus={gpus}" if gpus else ""), "-l", f"mem={mem}"]
    return out + ["-l", f"walltime={site.walltime}"] * bool(site.walltime)


def array_range_options(scheduler: str, first: int, last: int, throttle: Optional[int]) -> list[str]:
    """The array range with at most `throttle` elements running at once: Slurm --array=A-B%K, Torque
    -t A-B%K, PBS Pro -J A-B plus the max_run_subjobs job attribute (OpenPBS 20 and later; an older
    PBS Pro refuses the submission with an unknown-attribute error, never ignores it)."""
    if scheduler == "slurm":
        return [f"--array={first}-{last}" + (f"%{throttle}" if throttle else "")]
    if scheduler == "torque":
        return ["-t", f"{first}-{last}" + (f"%{throttle}" if throttle else "")]
    return ["-J", f"{first}-{last}"] + (["-W", f"max_run_subjobs={throttle}"] if throttle else [])


def parse_walltime(text: str) -> int:
    """Seconds of '[D-]HH:MM:SS', 'MM:SS' or 'MM' (Slurm's and PBS' forms)."""
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:   # Slurm: minutes
        parts = [0, parts[0], 0]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, sec = parts
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + sec


# Options of the array alone (its range, name and output files): never copied to the analysis job.
_ARRAY_ONLY = {"slurm": ("--array", "-a", "--output", "-o", "--error", "-e", "--job-name", "-J"),
               "pbspro": ("-J", "-o", "-e", "-N"), "torque": ("-t", "-o", "-e", "-N")}


def without_array_options(args: list[str], scheduler: str) -> list[str]:
    """The arguments given after `--` that also apply to the analysis job: all but the array's range,
    job name and output files (`--output=X`, `-o X`, `-oX`, ...)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _ARRAY_ONLY[scheduler]:
            skip = "=" not in arg     # the value is the next argument
            continue
        if any(arg.startswith(o) and not o.startswith("--") for o in _ARRAY_ONLY[scheduler]):
            continue                  # -oFILE
        out.append(arg)
    return out


def walltime_override(args: list[str], scheduler: str) -> Optional[str]:
    """The walltime among the arguments after `--` (Slurm `--time=X`/`--time X`/`-t X`, PBS
    `-l walltime=X` or inside another -l list), or None."""
    for i, arg in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if scheduler == "slurm":
            if arg.startswith("--time="):
                return arg.split("=", 1)[1]
            if arg in ("--time", "-t") and nxt:
                return nxt
            if arg.startswith("-t") and len(arg) > 2:
                return arg[2:]
            continue
        text = nxt if arg == "-l" else arg[2:] if arg.startswith("-l") else ""
        m = re.search(r"(?:^|[,:])walltime=([\d:-]+)", text)
        if m:
            return m.group(1)
    return None
