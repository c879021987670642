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

from mitoseg.core import env_vars as E
from mitoseg.study.schedulers import BATCH, MEMORY, Scheduler, get

SITE_ENV = "MITOSEG_SITE"
LOCAL_NAME = "mitoseg_site.json"
SCHEDULERS = tuple(s.name for s in BATCH)
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
    "memory": (lambda v: isinstance(v, str) and bool(MEMORY.match(v.strip())), "a size such as 64G or 64gb"),
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
    retry_budget: Optional[int] = None   # mitoseg.core.results.retry_budget: below a grid file's, above the default

    def describe(self) -> str:
        if self.path is None:
            return (f"site profile: none (no --site, ${SITE_ENV}, ./{LOCAL_NAME} or {user_profile_path()}): "
                    "the job scripts' directives apply")
        return f"site profile: {self.path} ({self.source})"


def user_profile_path(environ=None) -> Path:
    base = E.read("XDG_CONFIG_HOME", environ) or os.path.join(E.read("HOME", environ) or os.path.expanduser("~"),
                                                            ".config")
    return Path(base) / "mitoseg" / "site.json"


def find_profile(flag: Optional[str] = None, environ=None, cwd=None) -> tuple[Optional[Path], str]:
    """(path of the profile to use or None, how it was chosen)."""
    env = os.environ if environ is None else environ
    if flag:
        return Path(flag).expanduser().resolve(), "--site"
    if E.read(SITE_ENV, env):
        return Path(E.read(SITE_ENV, env)).expanduser().resolve(), f"${SITE_ENV}"
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
    why = get(scheduler).unsupported_key(site)
    if why:
        raise SiteError(f"site profile {site.path}: {why}")


# --- the scheduler options of a profile (each scheduler's words: mitoseg/study/schedulers.py) ---------------
def log_dir(site: SiteProfile, study_logs: Path) -> Path:
    """Where the jobs' output goes: the profile's log_dir (relative: to the study), else STUDY/logs/."""
    if not site.log_dir:
        return study_logs
    path = Path(os.path.expanduser(site.log_dir))
    return path if path.is_absolute() else study_logs.parent / path


def common_options(site: SiteProfile, sched: Scheduler) -> list[str]:
    """Queue, account, project and the extra arguments: every job."""
    check_for_scheduler(site, sched.name)
    return sched.queue_options(site) + list(site.extra_args)


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


def resolved_retry_budget(study_dir=None, environ=None, grid=None, site: Optional[SiteProfile] = None) -> tuple[int, str]:
    """mitoseg.core.results.retry_budget with the site profile found as `submit` finds it (when not given)."""
    from mitoseg.core.results import retry_budget
    return retry_budget(study_dir, environ, site if site is not None else load_site(None, environ), grid)
