"""The flags of run_study.py / mitoseg-study (mitoseg/cli/study.py): every sub-command's parser, and
$GRID_CONFIG/$DATA_DIR as defaults of --grid-config/--data-dir. Standard library only."""
from __future__ import annotations

import argparse
import os

from mitoseg.study import confirm as C
from mitoseg.core import env_vars as E
from mitoseg.core import grid as G
from mitoseg.study import site as S
from mitoseg.cli.args import OneLineParser, add_flag, add_version, positive_int
from mitoseg.study.submit import PBS_SCRIPT, SLURM_SCRIPT
from mitoseg.study.schedulers import BATCH, LOCAL

# --scheduler pbs: PBS Pro or Torque, as detected (mitoseg.study.submit.scheduler_name)
BATCH_CHOICES = ("pbs", *(s.name for s in BATCH))


def _grid_args(p):
    p.add_argument("--grid-config", help="grid JSON for a new study (default $GRID_CONFIG, else the 36-cell default)")
    p.add_argument("--demo", action="store_true", help="the CPU demo grid (3 archs x 2 lr at batch 8, tiny)")
    p.add_argument("--data-dir", help="data folder for a new study (default $DATA_DIR, else built-in synthetic data)")


ENV_DEFAULTS = (("grid_config", "GRID_CONFIG", "--grid-config"), ("data_dir", "DATA_DIR", "--data-dir"))


def env_defaults(args, environ=os.environ) -> list[str]:
    """Fill --grid-config/--data-dir from $GRID_CONFIG/$DATA_DIR; ValueError when such a variable contradicts
    --demo (the demo's grid and data are built in) or the flag given. Returns the lines naming what was used."""
    used = []
    for attr, var, flag in ENV_DEFAULTS:
        value = E.read(var, environ)
        if not value or not hasattr(args, attr):
            continue
        if getattr(args, "demo", False):
            raise ValueError(f"${var} is set ({value}) but --demo uses its own grid and the built-in data; "
                             f"unset {var} (or drop --demo)")
        given = getattr(args, attr)
        if given is None:
            setattr(args, attr, value)
            used.append(f"{flag} from ${var}: {value}")
        elif G.absolute_path(given) != G.absolute_path(value):
            raise ValueError(f"{flag} {given} contradicts ${var}={value}; give one of them (or unset {var})")
    study = E.read("STUDY_DIR", environ)
    if study and args.command in ("local", "submit") and not args.study_dir:
        used.append(f"note: $STUDY_DIR={study} is not read by `{args.command}`: a new study folder is "
                    f"created (give --study-dir {study} to continue that study)")
    if getattr(args, "demo", False) and getattr(args, "grid_config", None):
        raise ValueError("--demo and --grid-config contradict each other (the demo has its own grid); give one")
    return used


def _jobs(text):
    """--jobs N (a positive integer) or auto."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive integer nor auto") from None


def _site_arg(p):
    p.add_argument("--site", help=f"site profile JSON (default ${S.SITE_ENV}, else ./{S.LOCAL_NAME}, else "
                   "~/.config/mitoseg/site.json; the first found is used and printed)")


def build_study_parser(description: str):
    p = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="print the grid (index -> cell) and its size")
    _grid_args(s)
    s.add_argument("--study-dir", help="list the grid saved in this study")
    s.add_argument("--size", action="store_true", help="print only the number of cells")

    s = sub.add_parser("local", help="run cells on this machine")
    _grid_args(s)
    s.add_argument("--study-dir", help="study folder to create or continue (default: a new one in --output-dir)")
    add_flag(s, "--output-dir", "--root", dest="root",
             help="where a new study folder is created (default ., with --demo demo_study/)")
    s.add_argument("--cells", help="subset of grid indices, e.g. 0,3-5")
    s.add_argument("--arch", action="append", help="only this architecture (repeatable)")
    s.add_argument("--jobs", "-j", type=_jobs, help="cells trained at the same time, each in a worker process that "
                   "imports TensorFlow once; auto: from the cores and the memory a cell takes, measured by the pre-flight "
                   "trial (default 1; --demo: 2)")
    s.add_argument("--force", action="store_true", help="retrain finished cells too")
    _retry_arg(s)
    s.add_argument("--no-analysis", action="store_true", help="do not run the analysis at the end")
    s.add_argument("--confirm-seeds", type=int, help="after the grid, run the confirmation stage with this many "
                   f"fresh seeds per architecture's winner (default 0; --demo: {C.DEMO_CONFIRM_SEEDS})")
    s.add_argument("--confirm-folds", type=positive_int, help="folds of the data split the confirmation runs each "
                   f"seed on (default 1; --demo: {C.DEMO_CONFIRM_FOLDS})")

    s = sub.add_parser("confirm", help="rerun each architecture's validation-selected configuration(s) with fresh "
                                       "seeds, then compare the architectures on the test set")
    s.add_argument("--study-dir", required=True, help="a study whose grid has finished")
    s.add_argument("--seeds", type=int, required=True, help="fresh seeds per configuration (never one the study used)")
    s.add_argument("--top", type=int, default=1, help="configurations per architecture, by validation IoU (default 1)")
    s.add_argument("--folds", type=positive_int, default=1,
                   help="folds of the data split per seed: each moves the validation block (and a held-out test "
                        "block) to another part of the stack (default 1: the grid's split)")
    s.add_argument("--sesoi", type=float, default=0.01, help="the smallest IoU difference that matters, recorded in the "
                   "plan for the comparison (default 0.01)")
    s.add_argument("--scheduler", choices=(LOCAL.name, *BATCH_CHOICES), default=LOCAL.name,
                   help="local (default): this machine; pbs|slurm: an array job + its dependent analysis")
    s.add_argument("--jobs", "-j", type=_jobs, default=1, help="local: cells trained at the same time, or auto (as "
                   "for local; default 1)")
    s.add_argument("--allow-incomplete", action="store_true", help="select although some grid cells are unfinished")
    s.add_argument("--no-analysis", action="store_true", help="local: do not run the analysis at the end")
    s.add_argument("--dry-run", action="store_true", help="pbs|slurm: print the submission only")
    _site_arg(s)
    s.add_argument("extra", nargs=argparse.REMAINDER, help="after --: extra qsub/sbatch arguments (array and analysis job)")

    s = sub.add_parser("status", help="state of every cell of a study (running: epoch, val IoU), and an ETA; "
                                      "exit 1 when a cell failed")
    s.add_argument("--study-dir", required=True)
    s.add_argument("--json", action="store_true", help="print the cell states as one JSON document")

    s = sub.add_parser("analyze", help="run the analysis of a study")
    s.add_argument("--study-dir", required=True)

    s = sub.add_parser("submit", help="submit the array job and its dependent analysis job")
    _grid_args(s)
    s.add_argument("--scheduler", choices=BATCH_CHOICES, help="default: detected (pbs: PBS Pro or Torque, as detected)")
    s.add_argument("--study-dir", help="existing study to continue (default: a new one in --output-dir)")
    add_flag(s, "--output-dir", "--root", dest="root", default=".", help="where a new study folder is created (default .)")
    s.add_argument("--dry-run", action="store_true", help="print every job line (array, analysis); create nothing")
    _retry_arg(s)
    _site_arg(s)
    s.add_argument("--cells-per-gpu", type=int,
                   help="K cells trained at once per array element (one GPU; default $CELLS_PER_GPU, else 1); "
                   "the array gets ceil(cells / K) elements")
    s.add_argument("extra", nargs=argparse.REMAINDER, help="after --: extra qsub/sbatch arguments; they win over "
                   "the site profile and reach the array and the analysis job")

    s = sub.add_parser("element", help="one array element (what the job scripts run)")
    s.add_argument("--task-index", type=int, help="default from $PBS_ARRAY_INDEX/$PBS_ARRAYID/$SLURM_ARRAY_TASK_ID")
    s.add_argument("--grid-config", default=None, help="grid JSON for a new study (default $GRID_CONFIG)")
    add_flag(s, "--output-dir", "--root", dest="root", default=".", help="where a new study folder is created (default .)")
    s.add_argument("--cells-per-gpu", type=int, help="K cells at once in this element (default $CELLS_PER_GPU, else 1)")

    _add_export(sub)
    _add_verify(sub)
    return p


def _add_export(sub) -> None:
    s = sub.add_parser("export", help="copy each architecture's chosen model(s) into a self-contained bundle "
                                      "folder for predict.py --bundle")
    s.add_argument("--study-dir", required=True)
    s.add_argument("--arch", action="append", help="only this architecture (repeatable; default: every one)")
    add_flag(s, "--output-dir", "--out", dest="output_dir",
             help="bundle folder, outside the study: one subfolder per architecture")
    s.add_argument("--overwrite", action="store_true", help="replace an existing, different bundle")


def _retry_arg(s) -> None:
    s.add_argument("--retry-failed", action="store_true", help="also retrain cells that failed as often as the "
                   "retry budget allows (2 attempts, see the results field `attempts`); default: skip them")


def _add_verify(sub) -> None:
    s = sub.add_parser("verify", help="check the setup before queueing a long study (PASS/WARN/FAIL)")
    _grid_args(s)
    add_flag(s, "--output-dir", "--output-root", dest="output_root", default=".",
             help="where study folders will be written (default .)")
    s.add_argument("--pbs-script", default=str(PBS_SCRIPT))
    s.add_argument("--slurm-script", default=str(SLURM_SCRIPT))
    s.add_argument("--skip-env-probe", action="store_true",
                   help="skip importing TensorFlow in the training environment (faster)")
    _site_arg(s)
    s.add_argument("--scheduler", choices=("slurm", "pbspro", "torque"),
                   help="whose walltime to check (default: the site profile's, else both job scripts')")
    s.add_argument("--submit", action="store_true", help="run the check as a job (pbs_setup_verification.sh / "
                   "slurm_setup_verification.sh with the site profile); its output goes to OUTPUT_DIR/logs/")
    s.add_argument("--dry-run", action="store_true", help="with --submit: print the job and submit nothing")
    s.add_argument("extra", nargs=argparse.REMAINDER, help="after --: the qsub/sbatch arguments you will give "
                   "submit (a walltime among them is the one checked; with --submit also the job's)")
