"""Train one grid cell (architecture, learning rate, batch size, seed) and write its exp_ folder.

By hand:          python train_one.py --arch UNet --lr 1e-3 --batch-size 16 --data-dir DATA --output-dir runs
Grid element:     python train_one.py --study-dir STUDY --task-index 4
                  (index from the flag, else $PBS_ARRAY_INDEX, $PBS_ARRAYID or $SLURM_ARRAY_TASK_ID)
Demo-sized:       python train_one.py --arch UNet --epochs 2 --patch-size 64 --base-filters 8 --depth 4

Without --data-dir the built-in synthetic EM-like data is used (nothing to download).
Exit codes: 0 finished (ok, diverged, or already done with these settings), 1 failed, 2 bad input (also: the
cell finished with other settings or data; --force retrains it), 3 interrupted (rerun resumes), 4 busy
(another process is training this cell right now; nothing done).
Paths (--data-dir, --grid-config) are made absolute against the current folder and stored so.
"""
import argparse
import os
import sys

from mitoseg.core import env_vars as E  # standard library only
from mitoseg.cell import quiet_tf  # standard library only
from mitoseg.cli.args import OneLineParser, add_flag, add_version, missing_extra, positive_float, positive_int  # standard library only

quiet_tf.install()  # TensorFlow's start-up lines stay out of the logs; real warnings pass


def build_parser() -> argparse.ArgumentParser:
    from mitoseg.core.config import ARCHITECTURES, ATTENTION_GATES, HEADS, TrainConfig
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()

    def add(group, *flags, **kw):
        return _show_default(group.add_argument(*flags, **kw), defaults)
    add_version(p)
    cell = p.add_argument_group("the cell (ignored with --task-index: the grid decides)")
    add(cell, "--arch", choices=ARCHITECTURES, help="architecture")
    add(cell, "--lr", type=positive_float, help="initial Adam learning rate")
    add(cell, "--batch-size", type=positive_int, help="batch size")
    add(cell, "--seed", type=int, help="random seed for Python, numpy, TensorFlow, shuffling")
    grid = p.add_argument_group("grid mode")
    grid.add_argument("--study-dir", default=E.read("STUDY_DIR"),
                      help="study folder holding grid_config.json and the exp_ folders (default $STUDY_DIR)")
    grid.add_argument("--task-index", type=int,
                      help="grid index; default from $PBS_ARRAY_INDEX, $PBS_ARRAYID or $SLURM_ARRAY_TASK_ID")
    grid.add_argument("--grid-config", help="grid JSON that creates --study-dir when it has none yet (without it, "
                      "--study-dir must be a study already)")
    s = p.add_argument_group("fixed settings (defaults: the cluster's full-size run)")
    add(s, "--epochs", type=positive_int, help="maximum epochs")
    add(s, "--patch-size", type=positive_int, help="square patch side in pixels")
    add(s, "--base-filters", type=positive_int, help="filters of the first level, doubled at each deeper one")
    add(s, "--depth", type=positive_int, help="resolution levels")
    add(s, "--dropout", type=float, help="dropout inside conv blocks")
    add(s, "--no-batch-norm", dest="batch_norm", action="store_false", default=None,
                   help="build the models without BatchNormalization")
    add(s, "--bn-momentum", type=float, help="BatchNormalization momentum")
    add(s, "--head", choices=HEADS, help="output head: plain 1x1 conv+sigmoid or the original "
                   "bn_sigmoid (BatchNorm before the sigmoid)")
    add(s, "--attention-gate", choices=ATTENTION_GATES, help="gate of the attention variants: the "
                   "original study's or legacy, the lighter one this project used before it rebuilt the original")
    add(s, "--input-channels", type=int, choices=(1, 3), help="1 grey channel or 3 copies")
    add(s, "--early-stopping-patience", type=positive_int,
                   help="epochs without a better validation IoU before training stops")
    add(s, "--reduce-lr-patience", type=positive_int,
                   help="epochs without a lower validation loss before the learning rate is reduced")
    add(s, "--clipnorm", type=positive_float, help="Adam gradient clipping norm")
    add(s, "--val-fraction", type=float, help="fraction of whole slices held out for validation")
    add(s, "--test-fraction", type=float, help="when the data has no testing.tif: hold out this "
                   "fraction of whole slices (a block at the start of the stack) as the test volume")
    add(s, "--n-folds", type=positive_int, help="folds of the data split; with --fold k the "
                   "validation block (and a --test-fraction block) move to fold k's part of the stack")
    add(s, "--fold", type=int, help="which fold of --n-folds (0 .. n_folds-1; 0: the unmoved split)")
    add(s, "--augment", action="store_true", default=None, help="random flips and 90-degree rotations")
    add(s, "--tta", dest="test_tta", action="store_true", default=None,
                   help="8-fold flip/rotation test-time augmentation on the held-out test slices")
    add(s, "--mixed-precision", action="store_true", default=None, help="float16 compute (GPU)")
    add(s, "--jit-compile", action="store_true", default=None, help="XLA compilation (GPU)")
    add(s, "--deterministic", action="store_true", default=None,
                   help="TensorFlow op determinism: the same seed gives a bit-identical run (can be slower)")
    add(s, "--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="do not write TensorBoard event files (default: write them under the exp_ folder)")
    add(s, "--save-format", choices=("keras", "hdf5"), help="model file format")
    d = p.add_argument_group("data and output")
    add(d, "--data-dir", help="training.tif + training_groundtruth.tif [+ testing*.tif], or images/ + masks/ "
                   "folders; default: built-in synthetic EM data")
    add(d, "--synthetic-slices", type=positive_int, help="slices of the built-in synthetic volume")
    add(d, "--synthetic-size", type=positive_int, help="side of the synthetic slices")
    add_flag(d, "--output-dir", "--out-dir", dest="out_dir", default="runs", help="parent folder of the exp_ folder in hand mode (default runs/)")
    add(d, "--force", action="store_true", help="retrain even if the cell already finished")
    add(d, "--retry-failed", action="store_true", help="train a cell that already failed as often as the "
                   "retry budget allows (2 attempts; default: $MITOSEG_RETRY_FAILED=1, else skip it)")
    return p


def _show_default(action: argparse.Action, defaults) -> argparse.Action:
    """Append `defaults`' value (a TrainConfig) to the help of a flag that sets one of its fields (not
    the on/off switches, whose help says what they change): the values are read, never retyped."""
    value = getattr(defaults, FLAG_TO_FIELD.get(action.dest, action.dest), None)
    if action.help and value is not None and not isinstance(value, bool):
        action.help += f" (default {value:g})" if isinstance(value, float) else f" (default {value})"
    return action


FLAG_TO_FIELD = {"arch": "architecture", "lr": "learning_rate"}
FIELD_TO_FLAG = {"architecture": "arch", "learning_rate": "lr", "test_tta": "tta", "batch_norm": "no-batch-norm"}
CELL_FLAGS = ("arch", "lr", "batch_size", "seed")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mitoseg.core import grid as G
    from mitoseg.study import submit as S
    from mitoseg.core.config import ConfigError, TrainConfig
    from mitoseg.core.paths import StudyPaths, cell_name
    from mitoseg.study.open import open_study
    from mitoseg.core.status import EXIT_BAD_INPUT
    try:
        from mitoseg.cell.run import run_cell
    except ImportError as err:   # e.g. the host Python of a login node: no numpy / TensorFlow
        print(missing_extra(err, "train"), file=sys.stderr)
        return EXIT_BAD_INPUT

    if args.data_dir:   # recorded in the results JSON: absolute against the folder it was given in
        args.data_dir = G.absolute_path(args.data_dir)
    overrides = {FLAG_TO_FIELD.get(k, k): v for k, v in vars(args).items()
                 if v is not None and k not in ("study_dir", "task_index", "grid_config", "out_dir", "force", "retry_failed")}
    try:
        index = args.task_index if args.task_index is not None else S.task_index_from_env()
        if index is not None or args.study_dir:
            if index is None or not args.study_dir:
                raise ValueError("grid mode needs both --study-dir (or $STUDY_DIR) and --task-index "
                                 "(or a scheduler array index variable)")
            given = [f"--{k.replace('_', '-')}" for k in CELL_FLAGS if getattr(args, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} cannot be combined with --task-index: the grid sets the cell")
            # A study is created only from the grid it was given (--grid-config), never from a default one
            # its cells may not belong to. The other cells are not this process's to check: run_cell checks
            # this cell's own finished record against its settings and data.
            requested = G.load_user_grid(args.grid_config) if args.grid_config else None
            grid = open_study(args.study_dir, requested, args.grid_config and f"--grid-config {args.grid_config}",
                              create=requested is not None, check_cells=False)
            cell = G.study_cell_at(args.study_dir, grid, index)   # a grid or a confirmation cell
            config = cell.train_config(grid)
            contradicting = [f"--{flag.replace('_', '-')} {value!r} (the grid's {flag}: {getattr(config, flag)!r})"
                             for flag, value in sorted(overrides.items()) if getattr(config, flag) != value]
            if contradicting:
                raise ValueError(f"{', '.join(contradicting)} contradicts the study's "
                                 f"{StudyPaths(args.study_dir).grid_config}, which sets every cell")
            exp_dir = StudyPaths(args.study_dir).exp(cell.name).exp_dir
            cache_dir = StudyPaths(args.study_dir).cache_dir
            where = f"grid cell {index}/{grid.size - 1}" if cell.stage == "grid" else f"confirmation cell {index}"
            print(f"{where}: {cell.name}", flush=True)
        else:
            config = TrainConfig.from_dict(overrides)
            exp_dir = os.path.join(args.out_dir, cell_name(None, config.architecture, config.learning_rate,
                                                           config.batch_size, config.seed,
                                                           config.fold if config.n_folds > 1 else None))
            cache_dir = None  # a hand-run cell prepares its data in memory
        config.validate()
    except ConfigError as err:   # name the flag when the value came from one
        flag = FIELD_TO_FLAG.get(err.field, err.field.replace("_", "-"))
        print(f"error: --{flag}: {err}" if err.field in overrides else f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from mitoseg.study.site import resolved_retry_budget
    try:   # the study's budget with the site profile's (the cell itself does not read profiles)
        budget, _ = resolved_retry_budget(os.path.dirname(os.path.abspath(exp_dir)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _, code = run_cell(config, exp_dir, force=args.force, cache_dir=cache_dir,
                       retry_failed=args.retry_failed or S.retry_failed_requested(), budget=budget)
    return code


if __name__ == "__main__":
    sys.exit(main())
