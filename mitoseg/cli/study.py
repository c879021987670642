"""Run a hyperparameter study on a scheduler or on this machine.

    python run_study.py local --demo               # CPU demo: 6 tiny cells, 9 confirmation runs, analysis
    python run_study.py list [--size] [--demo | --grid-config G.json | --study-dir D]
    python run_study.py local [--study-dir D] [--cells 0,3-5] [--arch UNet] [--jobs N|auto] [--force] [--confirm-seeds N [--confirm-folds K]]
    python run_study.py status --study-dir D
    python run_study.py submit [--site SITE.json] [--scheduler slurm|pbs|pbspro|torque] [--grid-config G.json] [--dry-run] [-- QSUB/SBATCH ARGS]
    python run_study.py confirm --study-dir D --seeds N [--folds K] [--sesoi X] [--top T] [--scheduler local|pbs|slurm]
    python run_study.py analyze --study-dir D
    python run_study.py verify [--site SITE.json] [--grid-config G.json] [--data-dir DATA] [-- QSUB/SBATCH ARGS]
    python run_study.py element [--task-index N]    # what the job scripts run (one array element)

The plain way on PBS is `qsub pbs_hyperparameter_optimization.sh` (Slurm: `sbatch
slurm_hyperparameter_optimization.sh`); `submit` does the same for any grid size and sets the
array range from the grid. Finished cells (status ok/diverged) are always skipped, failed and
interrupted ones rerun (interrupted ones resume from their last epoch).
Environment: STUDY_DIR (study folder), GRID_CONFIG (grid JSON for a new study), DATA_DIR (data
folder for a new study), MITOSEG_SITE (site profile, when no --site), TF_CONTAINER (Apptainer image:
.sif, sandbox folder or docker:// address; wins over the profile's; unusable = error, never the
host), CONTAINER_PYTHON (the Python inside it, default python), PYTHON (host Python of the job
scripts), MITOSEG_ANALYSIS_SBATCH_ARGS / MITOSEG_ANALYSIS_QSUB_ARGS (replace the analysis job's own
resource request).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mitoseg.study import auto_jobs as AJ
from mitoseg.study import confirm as C
from mitoseg.core import env_vars as E
from mitoseg.core import grid as G
from mitoseg.study import runner as R
from mitoseg.study import site as S
from mitoseg.cli.study_parser import build_study_parser, env_defaults
from mitoseg.cli.args import invoked_as, missing_extra, say
from mitoseg.study.console import fmt_duration, results_table
from mitoseg.study.submit import RETRY_ENV, detect_scheduler, scheduler_name, submit_study
from mitoseg.study.schedulers import get
from mitoseg.core.paths import StudyPaths, new_study_dir
from mitoseg.study.open import base_grid, create_new_study_dir, open_study
from mitoseg.core.status import (BUSY, DONE_STATUSES, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK,
                                 EXIT_SCHEDULER)


def build_parser():
    return build_study_parser(__doc__)


def _print(msg=""):
    say(msg)


def cmd_list(args) -> int:
    if args.study_dir and (args.grid_config or args.demo):   # as local refuses it: never silently one of two grids
        given = f"--grid-config {args.grid_config}" if args.grid_config else "--demo"
        G.check_flags_against_study(args.study_dir, base_grid(args.grid_config, None, args.demo), given)
    return G.list_grid(args.study_dir, args.grid_config, args.demo, args.size)


def _open_study(args, root) -> tuple[Path, G.GridConfig, list]:
    """The study to run and the cells chosen: the whole command is checked (flags against an existing
    study, --cells/--arch, the confirmation flags) before anything is written; then the study is opened
    with every check, its data included (mitoseg.study.open.open_study)."""
    from mitoseg.core.membership import study_membership
    _, grid = _planned_study(args, root)
    chosen = R.select_cells(grid, getattr(args, "cells", None), getattr(args, "arch", None), args.study_dir)
    for flag in ("confirm_seeds", "confirm_folds"):
        value = getattr(args, flag, None)
        if value is not None and value < (0 if flag == "confirm_seeds" else 1):
            raise ValueError(f"--{flag.replace('_', '-')} must be at least {0 if flag == 'confirm_seeds' else 1}, "
                             f"got {value}")
    if getattr(args, "confirm_seeds", None) and args.study_dir and Path(args.study_dir).is_dir():
        folds = args.confirm_folds or (C.DEMO_CONFIRM_FOLDS if args.demo else 1)
        C.check_against_plan(args.study_dir, args.confirm_seeds, folds=folds)   # not only after the grid has trained
    study = Path(args.study_dir) if args.study_dir else create_new_study_dir(root)
    retrain = [c.index for c in chosen] if getattr(args, "force", False) else []
    grid = open_study(study, grid, create=True, check_data=True, retrain=retrain)
    note = study_membership(study, grid).note()
    if note:
        _print(f"note: {note}")
    return study.resolve(), grid, chosen


def run_local_and_analyze(study, grid, chosen, jobs, force, analysis=True, pool=None) -> int:
    t0 = time.monotonic()
    rows = R.run_local(study, grid, chosen, jobs=jobs, force=force, log=_print, pool=pool)
    _print("")
    _print(results_table(rows))
    failed = [r for r in rows.values() if r["state"] not in (*DONE_STATUSES, BUSY)]
    _print(f"\n{len(rows) - len(failed)}/{len(rows)} cells finished, {len(failed)} not "
           f"({', '.join(r['cell'].name + ': ' + r['state'] for r in failed) or 'none'}); "
           f"training wall time {fmt_duration(time.monotonic() - t0)}")
    code = EXIT_FAILED if failed else EXIT_OK
    if analysis:
        acode = R.run_analysis_script(study, log=_print)
        if acode != 0:
            _print(f"warning: the analysis exited {acode}")
            code = code or acode
        report = R.report_path(study)
        _print(f"\nStudy folder: {study}")
        if report:
            _print(f"Report: {report}")
    return code


def cmd_local(args) -> int:
    t0 = time.monotonic()
    seeds = args.confirm_seeds if args.confirm_seeds is not None else (C.DEMO_CONFIRM_SEEDS if args.demo else 0)
    folds = args.confirm_folds or (C.DEMO_CONFIRM_FOLDS if args.demo else 1)
    if args.confirm_folds and not seeds:
        raise ValueError("--confirm-folds needs --confirm-seeds N (the confirmation stage whose runs it splits)")
    study, grid, chosen = _open_study(args, args.root or ("demo_study" if args.demo else "."))
    if args.demo:
        _print(f"Demo study: {grid.size} cells ({', '.join(grid.architectures)} x lr {grid.learning_rates} x "
               f"batch {grid.batch_sizes}), built-in synthetic data, fixed {grid.fixed}")
    python = R.local_launcher(study, grid, _print)
    jobs = _jobs(args.jobs or (2 if args.demo else 1), study, grid, python)
    if args.retry_failed:   # read by the runner and passed on to every train_one.py it starts
        os.environ[RETRY_ENV] = "1"
    with R.local_pool(study, grid, jobs, python) as pool:   # one pool: the confirmation's cells reuse its workers
        code = run_local_and_analyze(study, grid, chosen, jobs, args.force, not args.no_analysis and not seeds, pool)
        if seeds:
            code = run_confirmation(study, grid, seeds, 1, jobs, not args.no_analysis, folds=folds, pool=pool) or code
    if args.demo:
        _print(f"Demo finished in {fmt_duration(time.monotonic() - t0)}. "
               f"Open the report: {R.report_path(study) or study}")
    return code


def _jobs(jobs, study, grid, python) -> int:
    """--jobs N, or auto: from the cores and the pre-flight trial's memory (mitoseg/study/auto_jobs.py), said."""
    if jobs != "auto":
        return jobs
    jobs, why = AJ.auto_jobs(*AJ.measured_peak(study, grid, python, _print))
    _print(why)
    return jobs


def run_confirmation(study, grid, seeds, top, jobs, analysis, allow_incomplete=False, folds=1, sesoi=0.01,
                     pool=None) -> int:
    """Plan (or reuse) the confirmation stage and train its cells here, then the analysis."""
    try:
        plan = C.plan_confirmation(study, seeds, top, folds, sesoi, allow_incomplete, log=_print)
    except ValueError as err:
        _print(f"error: {err}")
        if analysis:
            R.run_analysis_script(study, log=_print)
        return EXIT_BAD_INPUT
    _print("\n" + C.describe(plan))
    return run_local_and_analyze(study, grid, G.confirm_cells(study), jobs, False, analysis, pool)


def _scheduler_args(args) -> list[str]:
    """The qsub/sbatch arguments given after `--`."""
    return [a for a in (args.extra or []) if a != "--"]


def cmd_confirm(args) -> int:
    study = Path(args.study_dir).resolve()
    scheduler = scheduler_name(args.scheduler)   # pbs: PBS Pro or Torque, as detected
    if args.dry_run and not get(scheduler).batch:   # it would train every confirmation cell here, not print them
        raise ValueError(f"--dry-run prints a pbs|slurm submission; with --scheduler {scheduler} confirm trains "
                         "here, so nothing was done (add --scheduler slurm or pbs to see the submission)")
    grid = open_study(study, create=False, check_data=True)   # it trains cells of the study, like local and submit
    if not get(scheduler).batch:   # local: trained here
        python = R.local_launcher(study, grid, _print)
        jobs = _jobs(args.jobs, study, grid, python)
        with R.local_pool(study, grid, jobs, python) as pool:
            return run_confirmation(study, grid, args.seeds, args.top, jobs, not args.no_analysis,
                                    args.allow_incomplete, args.folds, args.sesoi, pool)
    plan = C.plan_confirmation(study, args.seeds, args.top, args.folds, args.sesoi, args.allow_incomplete, log=_print,
                               write=not args.dry_run)
    _print(C.describe(plan) + ("\n(dry run: this plan is not written)" if args.dry_run else ""))
    code = _submit(study, grid, scheduler, _scheduler_args(args), dry_run=args.dry_run,
                   indices=(plan["cells"][0]["index"], plan["cells"][-1]["index"]), site=_load_site(args))
    if code == EXIT_OK:
        _print(f"follow it with: {invoked_as('mitoseg-study')} status --study-dir {study}")
    return code


def _submit(study, grid, scheduler, extra, **kw) -> int:
    """submit_study; a scheduler that refuses or cannot be run is EXIT_SCHEDULER (not bad input)."""
    try:
        submit_study(study, grid, scheduler, extra, log=_print, **kw)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        _print(f"error: {scheduler}: " + "; ".join(ln.strip() for ln in str(err).splitlines() if ln.strip()))
        return EXIT_SCHEDULER
    return EXIT_OK


def cmd_status(args) -> int:
    from mitoseg.study import status_view as study_status
    code = study_status.show(args.study_dir, log=_print, as_json=args.json)
    report = R.report_path(args.study_dir)
    if report and not args.json:
        _print(f"report: {report}")
    return code


def _load_site(args) -> S.SiteProfile:
    """The site profile (--site, $MITOSEG_SITE, ./mitoseg_site.json, ~/.config/mitoseg/site.json), said aloud."""
    profile = S.load_site(args.site)
    _print(profile.describe())
    return profile


def _planned_study(args, root) -> tuple[Path, G.GridConfig]:
    """A dry run's study: the existing one (read, never written) or the path a new one would get."""
    for flag, path in (("--study-dir", args.study_dir), ("--output-dir", root)):
        if path and Path(path).exists() and not Path(path).is_dir():   # else an [Errno 17] line naming no flag
            raise ValueError(f"{flag} {path} is a file, not a folder; name a folder")
    grid = base_grid(args.grid_config, args.data_dir, args.demo)
    if not args.study_dir:
        return new_study_dir(root).resolve(), grid
    given = f"--grid-config {args.grid_config}" if args.grid_config else "--demo" if args.demo else None
    G.check_flags_against_study(args.study_dir, grid, given, args.data_dir)
    existing = StudyPaths(args.study_dir).grid_config.exists()
    return Path(args.study_dir).resolve(), G.load_study_grid(args.study_dir) if existing else grid


def _site_and_scheduler(args):
    """(site profile, scheduler): --scheduler, else the profile's, else the one found on PATH (or None)."""
    profile = _load_site(args)
    chosen = args.scheduler or profile.scheduler
    return profile, scheduler_name(chosen) if chosen else detect_scheduler()


def cmd_submit(args) -> int:
    profile, scheduler = _site_and_scheduler(args)
    if scheduler is None:
        _print(f"error: neither sbatch nor qsub found; use `{invoked_as('mitoseg-study')} local` on one machine")
        return EXIT_SCHEDULER
    from mitoseg.study.multi_cell import cells_per_gpu
    k = cells_per_gpu(args.cells_per_gpu)   # checked before the study folder is written
    study, grid = _planned_study(args, args.root) if args.dry_run else _open_study(args, args.root)[:2]
    data, env_data = grid.fixed.get("data_dir"), E.read("DATA_DIR")
    from_env = data and env_data and G.absolute_path(env_data) == data and not args.study_dir
    _print(f"data: {data or 'built-in synthetic data (no data folder)'}" + (" (from $DATA_DIR)" if from_env else ""))
    code = _submit(study, grid, scheduler, _scheduler_args(args), dry_run=args.dry_run, cells_per_gpu=k,
                   site=profile, retry_failed=args.retry_failed)
    if code == EXIT_OK:
        _print(f"study folder{' (not created: dry run)' if args.dry_run else ''}: {study}\n"
               f"follow it with: {invoked_as('mitoseg-study')} status --study-dir {study}")
    return code


def cmd_export(args) -> int:
    from mitoseg.study.export import export_study
    if not args.output_dir:
        raise ValueError("export needs --output-dir BUNDLE (a folder outside the study)")
    export_study(args.study_dir, args.output_dir, args.arch, overwrite=args.overwrite, log=_print)
    return EXIT_OK


def cmd_verify(args) -> int:
    if not args.submit:
        from mitoseg.study import verify
        return verify.main(args)
    from mitoseg.study import verify_job
    profile, scheduler = _site_and_scheduler(args)
    if scheduler is None:
        _print(f"error: neither sbatch nor qsub found; run the check here: {invoked_as('mitoseg-study')} verify")
        return EXIT_SCHEDULER
    return verify_job.submit(args, profile, scheduler, log=_print)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--demo"]:   # `python run_study.py --demo` = `local --demo`
        argv = ["local", *argv]
    args = build_parser().parse_args(argv)
    try:
        for line in env_defaults(args):   # `list --size` feeds scripts: its note goes to stderr
            print(line, file=sys.stderr if args.command == "list" else sys.stdout, flush=True)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "local":
            return cmd_local(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "analyze":
            return R.run_analysis_script(args.study_dir, log=_print)
        if args.command == "submit":
            return cmd_submit(args)
        if args.command == "confirm":
            return cmd_confirm(args)
        if args.command == "element":
            return R.run_element(args.task_index, args.root, args.grid_config, log=_print,
                                 cells_per_gpu=args.cells_per_gpu)
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "export":
            return cmd_export(args)
    except KeyboardInterrupt:
        _quiet_stdout()
        print("interrupted (Ctrl-C): cells that were training are recorded as interrupted; the same command "
              "resumes them", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:   # `status | head`: the reader has gone, nothing is left to say
        _quiet_stdout()
        return EXIT_OK
    except ImportError as err:   # confirm selects with pandas: the [analysis] extra
        _print(missing_extra(err, "analysis"))
        return EXIT_BAD_INPUT
    except (ValueError, RuntimeError, OSError) as err:
        _print(f"error: {err}")
        return EXIT_BAD_INPUT
    return EXIT_BAD_INPUT


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: a closed pipe must not fail once more when Python flushes it at exit."""
    try:
        sys.stdout.flush()
    except OSError:
        pass
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
