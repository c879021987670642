"""Setup verification before a long study is queued: a PASS / WARN / FAIL table, non-zero on FAIL.

Run by `pbs_setup_verification.sh` (= `python run_study.py verify`). Checks:

* the training environment (the TF_CONTAINER image if configured, else this Python), through the
  same launcher and binds the array elements use (`python -m mitoseg.cell.preflight`): every package
  imports, TensorFlow sees a GPU (WARN on a CPU-only node), and for each architecture of the grid
  one optimizer step at the study's settings and largest batch trains, saves, reloads and predicts
  (FAIL rows otherwise), with seconds per step and peak memory;
* the time estimate per cell and for the grid against the walltime an element will get (after `--`,
  else the site profile's, else the job scripts'); the container image exists when one is set;
* the dataset (grid's data_dir or DATA_DIR): layout, files, image/mask shapes, binary masks,
  foreground fraction (plausible: 0.5 % .. 50 %), train/val patches at the patch size;
* the output folder is writable and has room for every cell's model (params x 4 bytes x ~3:
  the model file with its optimizer state, and the resume backup);
* the array range of the job scripts (`#PBS -J`, `#SBATCH --array`): a note when `submit` sets another.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mitoseg.core import grid as G
from mitoseg.study import launcher as L
from mitoseg.study import site as S
from mitoseg.study.site import parse_walltime
from mitoseg.study.console import fmt_duration
from mitoseg.core.errors import DataError, error_line
from mitoseg.study.open import base_grid
from mitoseg.core.config import TrainConfig
from mitoseg.study.schedulers import PBSPRO, SLURM, get
from mitoseg.core.status import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
FOREGROUND_RANGE = (0.005, 0.5)
BYTES_PER_PARAM_PER_CELL = 4 * 3
PREFLIGHT_TIMEOUT_S = 3 * 3600   # the cluster-default trial on a CPU takes minutes; on a GPU seconds
WALLTIME_MARGIN = 2.0            # WARN when a cell's estimate uses more than 1/2 of the walltime
WALLTIME_OVERSIZE = 20.0         # WARN when the walltime is over 20x the longest cell's estimate


@dataclass
class Row:
    check: str
    status: str
    detail: str


# --- the trial: runs inside the training environment (mitoseg/cell/preflight.py) -----------------------
def run_trial(grid: G.GridConfig, environ=None, timeout: float = PREFLIGHT_TIMEOUT_S,
              site: Optional[S.SiteProfile] = None, launch: Optional[tuple[list, str]] = None) -> tuple[Optional[dict], str]:
    """Run the pre-flight trial through the launcher the cells use (`launch`: its (prefix, description)
    when the caller resolved it). (result or None, where / why)."""
    try:
        prefix, how = launch or L.launcher(environ, binds=L.study_binds(grid.fixed.get("data_dir")), site=site)
    except L.ContainerError as err:
        return None, str(err)
    cmd = [*prefix, "-m", "mitoseg.cell.preflight", json.dumps(grid.to_dict())]
    env = dict(os.environ if environ is None else environ)   # the trial sets its own log level (quiet_tf)
    try:   # stderr (progress, tracebacks) goes to the user's terminal / job log as it happens
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=str(L.REPO_DIR), env=env)
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"{' '.join(cmd[:4])}: {err}"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line), how
            except json.JSONDecodeError:
                break
    return None, f"{' '.join(prefix)} -m mitoseg.cell.preflight exited {proc.returncode} without a result (see above)"


def check_environment(result: Optional[dict], where: str) -> list[Row]:
    if result is None:
        return [Row("training environment", FAIL, f"cannot run the trial there: {where}")]
    versions = ", ".join(f"{name} {result['packages'][mod]['version']}" for mod, name in
                         (("tensorflow", "TensorFlow"), ("keras", "Keras")) if result["packages"].get(mod, {}).get("ok"))
    rows = [Row("training environment", PASS, f"trained with Python {result['python']} ({result.get('executable')})"
                                              f"{', ' + versions if versions else ''}; {where}")]
    for mod, info in result["packages"].items():
        rows.append(Row(f"import {mod}", PASS, info["version"]) if info["ok"] else Row(f"import {mod}", FAIL, info["error"]))
    if result["error"]:
        rows.append(Row("trial set-up", FAIL, result["error"]))
    if result["gpus"]:
        rows.append(Row("GPU", PASS, ", ".join(result["gpus"])))
    else:
        rows.append(Row("GPU", WARN, "TensorFlow sees no GPU: training runs on the CPU (fine for the demo, "
                                     "far too slow for the full study)"))
    return rows


def _step_seconds(steps: dict, batch_size: int) -> float:
    """Seconds per step at `batch_size`, interpolated per image between the timed batch sizes."""
    timed = sorted((int(b), t) for b, t in steps.items())
    (b0, t0), (b1, t1) = timed[0], timed[-1]
    if b1 == b0:
        return t0 * batch_size / b0
    per_image = t0 / b0 + (t1 / b1 - t0 / b0) * (min(max(batch_size, b0), b1) - b0) / (b1 - b0)
    return per_image * batch_size


def estimate_cell_seconds(trial: dict, batch_size: int, epochs: int) -> float:
    """All epochs (no early stop) of training steps plus the per-epoch validation pass, plus start-up."""
    steps = math.ceil(trial["n_train_patches"] / batch_size)
    per_epoch = steps * _step_seconds(trial["step_s"], batch_size) + trial["n_val_patches"] * trial["predict_per_patch_s"]
    return trial["startup_s"] + epochs * per_epoch


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_trial(result: Optional[dict], grid: G.GridConfig) -> tuple[list[Row], dict]:
    """FAIL rows for architectures whose trial raised; PASS rows with step time and memory; the
    per-cell estimates {cell index: seconds}."""
    if result is None or result["error"]:
        return [Row("trial step", FAIL, "not run (see the rows above)")], {}
    rows, estimates = [], {}
    epochs = TrainConfig.from_dict(dict(grid.fixed)).epochs
    for arch in grid.architectures:
        t = result["architectures"].get(arch) or {"ok": False, "error": "no result"}
        if not t["ok"]:
            rows.append(Row(f"trial {arch}", FAIL, t["error"]))
            continue
        mem = t["memory"]
        step = ", ".join(f"{float(v):.2f} s/step at batch {b}" for b, v in sorted(t["step_s"].items(), key=lambda kv: -int(kv[0])))
        rows.append(Row(f"trial {arch}", PASS, f"{t['params']:,} params; build + first step {t['startup_s']:.1f} s; "
                        f"{step}; peak {'GPU memory' if mem['kind'] == 'GPU' else 'RSS'} {_fmt_bytes(mem['bytes'])}; "
                        f"saved, reloaded, predicted a tile"))
        for cell in G.cells(grid):
            if cell.architecture == arch:
                estimates[cell.index] = estimate_cell_seconds(t, cell.batch_size, epochs)
    return rows, estimates


def check_container(environ=None, site: Optional[S.SiteProfile] = None) -> list[Row]:
    image, where = L.container_choice(environ, site)
    if not image:
        return [Row("container image", WARN, f"{where}: jobs train with the host Python "
                                             f"(e.g. export {L.CONTAINER_ENV}={L.EXAMPLE_CONTAINER})")]
    try:
        runtime = L.check_image(image, where, environ=environ)
    except L.ContainerError as err:
        return [Row("container image", FAIL, str(err))]
    path = Path(image).expanduser()
    kind = (f"{path.stat().st_size / 2**30:.1f} GiB image" if path.is_file() else "sandbox folder" if path.is_dir()
            else "address, pulled by the runtime")
    return [Row("container image", PASS, f"{image} from {where} ({kind}), runtime {runtime}")]


def _patch_counts(volume, cfg: TrainConfig, has_test_stack: bool) -> tuple[int, int, int]:
    """(train, val, per-slice) patch counts of a cell, counted as `cell_data` cuts them: after the
    test slices are held out (no test stack and test_fraction > 0), then the val split."""
    from mitoseg.cell.inputs import hold_out_test_slices, train_val_slices
    from mitoseg.data.patches import tile_grid
    if not has_test_stack and cfg.test_fraction > 0:
        volume, _ = hold_out_test_slices(volume, cfg)
    train_idx, val_idx = train_val_slices(volume, cfg)
    rows, cols = tile_grid(*volume.images.shape[1:], cfg.patch_size)
    return len(train_idx) * rows * cols, len(val_idx) * rows * cols, rows * cols


def check_dataset(grid: G.GridConfig) -> list[Row]:
    cfg = TrainConfig.from_dict(dict(grid.fixed))
    if not cfg.data_dir:
        # WARN, not PASS: a full study on the synthetic demo data is almost always a missing DATA_DIR.
        return [Row("dataset", WARN, f"no data folder: built-in synthetic EM data ({cfg.synthetic_slices} slices of "
                                     f"{cfg.synthetic_size}^2); set DATA_DIR or the grid's data_dir for real data")]
    try:
        from mitoseg.data import stacks as data
    except ImportError as err:
        return [Row("dataset", FAIL, f"cannot import mitoseg.data.stacks here ({err}); run with the project's Python")]
    try:
        train, test = data.load_dataset(cfg.data_dir)
    except DataError as err:   # missing files, shape mismatch, non-binary masks, empty masks
        return [Row("dataset", FAIL, str(err))]
    except Exception as err:  # noqa: BLE001 - unreadable files and the like
        return [Row("dataset", FAIL, f"{cfg.data_dir}: {error_line(err)}"[:300])]
    rows = [Row("dataset files", PASS, train.source + (f"; test: {test.source}" if test else "; no test volume"))]
    z, h, w = train.images.shape
    rows.append(Row("image/mask shapes", PASS, f"{z} slices of {h}x{w}, image and mask shapes agree"
                    + (f"; test {test.images.shape[0]} slices of {test.images.shape[1]}x{test.images.shape[2]}" if test else "")))
    values = sorted(int(v) for v in set(train.masks.ravel()[:: max(1, train.masks.size // 1_000_000)].tolist()))
    rows.append(Row("masks binary", PASS, f"two mask values (0/255 or 0/1 on disk), read as {values}"))
    lo, hi = FOREGROUND_RANGE
    fg = train.foreground_fraction
    rows.append(Row("foreground fraction", PASS if lo <= fg <= hi else WARN,
                    f"{fg:.2%} of training pixels" + ("" if lo <= fg <= hi else
                                                      f" (outside the plausible {lo:.1%}..{hi:.0%}: wrong masks or inverted?)")))
    p = cfg.patch_size
    if h < p or w < p:
        rows.append(Row("patches", FAIL, f"slices of {h}x{w} are smaller than the patch size {p}"))
        return rows
    try:
        n_train, n_val, per_slice = _patch_counts(train, cfg, has_test_stack=test is not None)
    except DataError as err:
        rows.append(Row("patches", FAIL, str(err)))
        return rows
    max_bs = max(grid.batch_sizes)   # a cell whose batch exceeds its train patches is refused (cell_data.check_batch_fits)
    status = PASS if n_train >= max_bs and n_val > 0 else FAIL
    rows.append(Row("patches", status, f"{n_train} train + {n_val} val patches of {p}x{p} "
                                       f"({per_slice} per slice, val fraction {cfg.val_fraction})"
                                       + (f"; batch size {max_bs} is larger: those cells are refused"
                                          if n_train < max_bs else "")))
    return rows


def check_output(root, grid: G.GridConfig, params: dict) -> list[Row]:
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".verify_"):
            pass
    except OSError as err:
        return [Row("output folder", FAIL, f"{root}: not writable ({err.strerror or err})")]
    rows = [Row("output folder", PASS, f"{root.resolve()} is writable")]
    free = shutil.disk_usage(root).free
    if not params:
        rows.append(Row("free disk", WARN, f"{free / 2**30:.1f} GiB free; model sizes unknown (no parameter count)"))
        return rows
    need = sum(params.get(c.architecture, max(params.values())) * BYTES_PER_PARAM_PER_CELL for c in G.cells(grid))
    status = FAIL if free < need else WARN if free < 2 * need else PASS
    rows.append(Row("free disk", status, f"{free / 2**30:.1f} GiB free, study needs ~{need / 2**30:.2f} GiB "
                                         f"({grid.size} cells x params x 4 B x 3)"))
    return rows


_SCRIPT_KINDS = {"pbs": PBSPRO, "slurm": SLURM}   # the PBS script serves PBS Pro and Torque alike


def array_range(script, kind: str) -> Optional[tuple[int, int]]:
    text = Path(script).read_text()
    m = _SCRIPT_KINDS[kind].script_range.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_array_ranges(grid: G.GridConfig, pbs_script=None, slurm_script=None) -> list[Row]:
    rows = []
    for kind, script in (("pbs", pbs_script), ("slurm", slurm_script)):
        if not script:
            continue
        directive = _SCRIPT_KINDS[kind].range_directive
        name = f"array range ({Path(script).name})"
        try:
            rng = array_range(script, kind)
        except OSError as err:
            rows.append(Row(name, FAIL, f"cannot read {script}: {err.strerror or err}"))
            continue
        # `run_study.py submit` sets the range itself, so only a plain qsub/sbatch of the script uses it:
        # a note, never a FAIL.
        if rng == (0, grid.size - 1):
            rows.append(Row(name, PASS, f"{directive} {rng[0]}-{rng[1]} = {grid.size} cells"))
        else:
            has = f"{directive} {rng[0]}-{rng[1]}" if rng else f"no '{directive} 0-N' line"
            rows.append(Row(name, PASS, f"run_study.py submit sets the range 0-{grid.size - 1} itself; the script's "
                                        f"{has} is used only by a plain {_SCRIPT_KINDS[kind].program} of it"))
    return rows


def script_walltime(script, kind: str) -> Optional[int]:
    m = _SCRIPT_KINDS[kind].script_walltime.search(Path(script).read_text())
    return parse_walltime(m.group(1)) if m else None


def walltime_limits(site: S.SiteProfile, extra_args: list, scheduler: Optional[str], pbs_script=None,
                    slurm_script=None) -> list[tuple[str, Optional[int], str]]:
    """(row name, seconds or None, where from) of the walltime each array element will get: the
    arguments after `--` win, then the site profile's walltime, then the job script's directive."""
    scheduler = scheduler or site.scheduler
    kinds = [(k, sc) for k, sc in (("pbs", pbs_script), ("slurm", slurm_script))
             if sc and (scheduler is None or (k == "slurm") == (scheduler == "slurm"))]
    given = (get(scheduler).walltime_override(extra_args) if scheduler else
             PBSPRO.walltime_override(extra_args) or SLURM.walltime_override(extra_args))
    if given:
        return [("walltime (-- arguments)", parse_walltime(given), f"given after -- ({given})")]
    if site.walltime:
        return [("walltime (site profile)", parse_walltime(site.walltime), f"{site.path}")]
    out = []
    for kind, script in kinds:
        limit = script_walltime(script, kind)
        out.append((f"walltime ({Path(script).name})", limit, str(script)))
    return out


def check_walltime(estimates: dict, gpus: list, pbs_script=None, slurm_script=None, limits=None) -> list[Row]:
    """The estimate of the longest cell against the walltime each array element will get (`limits`,
    default the job scripts' directives)."""
    if not estimates:
        return []
    if limits is None:
        limits = walltime_limits(S.SiteProfile(), [], None, pbs_script, slurm_script)
    longest, total = max(estimates.values()), sum(estimates.values())
    where = "on this GPU" if gpus else "on this CPU (run the check on a GPU node for the real figure)"
    rows = [Row("time estimate", PASS, f"longest cell {fmt_duration(longest)}, whole grid {fmt_duration(total)} of "
                                       f"one device {where}; every epoch run, no early stopping")]
    for name, limit, source in limits:
        if limit is None:
            rows.append(Row(name, WARN, f"no walltime line in {source}: the queue's default applies"))
        elif longest > limit:
            rows.append(Row(name, FAIL if gpus else WARN, f"{fmt_duration(limit)} is shorter than the longest cell "
                            f"({fmt_duration(longest)} {where}); cells would be cut and need resubmitting"))
        elif longest * WALLTIME_MARGIN > limit:
            rows.append(Row(name, WARN, f"{fmt_duration(limit)} leaves less than {WALLTIME_MARGIN:g}x margin over the "
                                        f"longest cell ({fmt_duration(longest)})"))
        elif gpus and limit > WALLTIME_OVERSIZE * longest:
            rows.append(Row(name, WARN, f"{fmt_duration(limit)} is over {WALLTIME_OVERSIZE:g}x the longest cell "
                                        f"({fmt_duration(longest)}): a smaller request usually starts sooner"))
        else:
            rows.append(Row(name, PASS, f"{fmt_duration(limit)} for a longest cell of {fmt_duration(longest)}"))
    return rows


def run_checks(grid: G.GridConfig, output_root=".", pbs_script=None, slurm_script=None, environ=None,
               env_probe: bool = True, site: Optional[S.SiteProfile] = None, extra_args=(),
               scheduler: Optional[str] = None) -> list[Row]:
    rows: list[Row] = []
    params: dict = {}
    site = site or S.SiteProfile()
    if env_probe:
        result, where = run_trial(grid, environ, site=site)
        rows += check_environment(result, where)
        trial_rows, estimates = check_trial(result, grid)
        rows += trial_rows
        params = {a: t["params"] for a, t in (result or {}).get("architectures", {}).items() if t.get("ok")}
        limits = walltime_limits(site, list(extra_args), scheduler, pbs_script, slurm_script)
        rows += check_walltime(estimates, (result or {}).get("gpus", []), limits=limits)
    else:
        rows.append(Row("training environment", WARN, "not checked (--skip-env-probe): no trial step ran"))
    rows += check_container(environ, site)
    rows += check_dataset(grid)
    rows += check_output(output_root, grid, params)
    rows += check_array_ranges(grid, pbs_script, slurm_script)
    return rows


def check_grid_values(grid_config: Optional[str], data_dir: Optional[str] = None, demo: bool = False) -> list[Row]:
    """The grid as every command reads it (mitoseg.core.grid's loader, through study_dir.base_grid) and the
    data flag: one FAIL row per problem, so a bad value is seen before anything is queued; one PASS
    row otherwise."""
    source = grid_config or ("the demo grid" if demo else "the default grid")
    try:
        grid = base_grid(grid_config, data_dir, demo)
    except G.GridError as err:
        return [Row("grid values", FAIL, text) for text in err.problems]
    except ValueError as err:
        return [Row("grid values", FAIL, str(err))]
    return [Row("grid values", PASS, f"{source}: {grid.size} cells, every axis and fixed setting of the right "
                                     "type and range, no repeated values")]


def format_table(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = [f"{'check':<{width}}  result  detail", "-" * (width + 60)]
    lines += [f"{r.check:<{width}}  {r.status:<6}  {r.detail}" for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, WARN, FAIL)}
    trained = any(r.check.startswith("trial ") and r.status == PASS for r in rows)
    verdict = (": fix the FAIL rows before submitting." if counts[FAIL] else ": ready to submit." if trained
               else ", but no trial step ran (--skip-env-probe): not proven ready to submit.")
    lines.append(f"\n{counts[PASS]} PASS, {counts[WARN]} WARN, {counts[FAIL]} FAIL" + verdict)
    return "\n".join(lines)


def main(args) -> int:
    """`run_study.py verify` (args from its parser)."""
    try:
        site = S.load_site(args.site)
    except S.SiteError as err:
        print(format_table([Row("site profile", FAIL, str(err))]), flush=True)
        return EXIT_FAILED
    print(site.describe(), flush=True)
    value_rows = check_grid_values(args.grid_config, args.data_dir, args.demo)
    if any(r.status == FAIL for r in value_rows):
        print(format_table(value_rows), flush=True)
        return EXIT_BAD_INPUT   # a bad grid value is bad input, as for every other command
    grid = base_grid(args.grid_config, args.data_dir, args.demo)
    print(f"Verifying the setup for a study of {grid.size} cells (fixed settings: {json.dumps(grid.fixed, sort_keys=True)})",
          flush=True)
    rows = run_checks(grid, args.output_root, args.pbs_script, args.slurm_script, env_probe=not args.skip_env_probe,
                      site=site, extra_args=[a for a in (args.extra or []) if a != "--"], scheduler=args.scheduler)
    rows = value_rows + rows
    print(format_table(rows), flush=True)
    return EXIT_FAILED if any(r.status == FAIL for r in rows) else EXIT_OK

