"""`run_study.py verify --submit`: the pre-flight check as a job on a GPU node, with the site profile's
queue, account, resources (not its per-cell walltime: the check keeps its script's 30 min) and module
lines. The job script is the repository's verification script with the module lines and the
arguments (`set -- ...`, read by its `"$@"`) inserted before its Python call, given to qsub/sbatch on
standard input: nothing is written but the log folder. Its output goes to OUTPUT_ROOT/logs/.

Standard library only: it runs on a login node.
"""
from __future__ import annotations

import dataclasses
import shlex
import subprocess
from pathlib import Path
from typing import Callable

from mitoseg.study import site as S
from mitoseg.study.launcher import REPO_DIR
from mitoseg.study.submit import module_lines
from mitoseg.study.schedulers import get, parse_job_id


def verify_arguments(args, site: S.SiteProfile) -> list[str]:
    """The flags of this `verify` call for the one in the job, with every path made absolute."""
    out = ["--output-dir", str(Path(args.output_root).resolve())]
    if args.grid_config:
        out += ["--grid-config", str(Path(args.grid_config).resolve())]
    if args.data_dir:
        out += ["--data-dir", str(Path(args.data_dir).resolve())]
    if args.demo:
        out.append("--demo")
    if site.path:
        out += ["--site", str(site.path)]
    if args.skip_env_probe:
        out.append("--skip-env-probe")
    if args.scheduler:
        out += ["--scheduler", args.scheduler]
    extra = [a for a in (args.extra or []) if a != "--"]
    return out + (["--", *extra] if extra else [])


def job_text(scheduler: str, site: S.SiteProfile, verify_args: list[str]) -> str:
    source = get(scheduler).verify_script
    lines = source.read_text().splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if ln.startswith("exec "))
    inserted = module_lines(site) + f"set -- {' '.join(shlex.quote(a) for a in verify_args)}\n"
    return "".join(lines[:at]) + inserted + "".join(lines[at:])


def submit_command(scheduler: str, site: S.SiteProfile, logs: Path, extra: list[str]) -> list[str]:
    sched = get(scheduler)
    resources = sched.resource_options(dataclasses.replace(site, walltime=None))
    return sched.verify_command(logs, [*S.common_options(site, sched), *resources, *extra])


def submit(args, site: S.SiteProfile, scheduler: str, log: Callable[[str], None] = print) -> int:
    """Submit (or with --dry-run print) the verification job; 0, or 1 when the submission failed."""
    verify_args = verify_arguments(args, site)
    logs = Path(args.output_root).resolve() / "logs"
    cmd = submit_command(scheduler, site, logs, [a for a in (args.extra or []) if a != "--"])
    text = job_text(scheduler, site, verify_args)
    log(f"verification job: {' '.join(shlex.quote(c) for c in cmd)} < (job script:)\n"
        + "".join(f"    {ln}\n" for ln in text.splitlines()).rstrip())
    if args.dry_run:
        log("dry run: nothing submitted")
        return 0
    logs.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True, cwd=str(REPO_DIR), timeout=120)
    if proc.returncode != 0:
        log(f"error: the verification job was not submitted: {cmd[0]} exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()}")
        return 1
    log(f"verification job {parse_job_id(proc.stdout)} submitted; its table will be in {logs}/")
    return 0
