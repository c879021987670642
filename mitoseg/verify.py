"""Setup verification before a long study is queued: a PASS / WARN / FAIL table, non-zero on FAIL.

Run by `pbs_setup_verification.sh` (= `python run_study.py verify`). Checks:

* the training environment (the TF_CONTAINER image if configured, else this Python) imports every
  package, with versions, and TensorFlow sees a GPU (WARN on a CPU-only node); this part runs in a
  subprocess through the same launcher the array elements use (`python -m mitoseg.verify --probe`),
  which also counts each architecture's parameters at the grid's width;
* the container image exists when one is configured;
* the dataset (grid's data_dir or DATA_DIR): layout, files, image/mask shapes, binary masks,
  foreground fraction (plausible: 0.5 % .. 50 %), train/val patches at the patch size;
* the output folder is writable and has room for every cell's model (params x 4 bytes x ~3:
  the model file with its optimizer state, and the resume backup);
* the array range of the job scripts (`#PBS -J`, `#SBATCH --array`) equals the grid size.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import grid as G
from . import runner as R

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
# import name -> distribution name (for the version)
PACKAGES = {"tensorflow": "tensorflow", "keras": "keras", "numpy": "numpy", "focal_loss": "focal-loss",
            "tifffile": "tifffile", "skimage": "scikit-image", "scipy": "scipy", "pandas": "pandas",
            "matplotlib": "matplotlib", "seaborn": "seaborn", "statsmodels": "statsmodels"}
FOREGROUND_RANGE = (0.005, 0.5)
BYTES_PER_PARAM_PER_CELL = 4 * 3


@dataclass
class Row:
    check: str
    status: str
    detail: str


# --- the probe: runs inside the training environment ----------------------------------------------
def probe(fixed: dict) -> dict:
    """Package versions, GPUs and parameter counts (JSON-able). Never raises."""
    import importlib
    import importlib.metadata as md
    out: dict = {"python": sys.version.split()[0], "executable": sys.executable, "packages": {},
                 "gpus": [], "params": {}, "errors": []}
    for mod, dist in PACKAGES.items():
        try:
            importlib.import_module(mod)
            try:
                version = md.version(dist)
            except md.PackageNotFoundError:
                version = getattr(sys.modules[mod], "__version__", "?")
            out["packages"][mod] = {"ok": True, "version": version}
        except Exception as err:  # noqa: BLE001 - reported
            out["packages"][mod] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:200]}
    try:
        import tensorflow as tf
        out["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception as err:  # noqa: BLE001
        out["errors"].append(f"GPU query: {err}"[:200])
    try:
        sys.path.insert(0, str(R.REPO_DIR))
        import models
        from .config import TrainConfig
        cfg = TrainConfig.from_dict(dict(fixed))
        shape = (cfg.patch_size, cfg.patch_size, cfg.input_channels)
        for arch in ("UNet", "Attention_UNet", "Attention_ResUNet"):
            out["params"][arch] = int(models.build_model(arch, shape, base_filters=cfg.base_filters,
                                                         depth=cfg.depth).count_params())
    except Exception as err:  # noqa: BLE001
        out["errors"].append(f"parameter count: {type(err).__name__}: {err}"[:200])
    return out


def run_probe(fixed: dict, environ=None, timeout: float = 600) -> tuple[Optional[dict], str]:
    """Run `probe` through the launcher (container or this Python). (result or None, message)."""
    prefix, warning = R.launcher(environ)
    cmd = [*prefix, "-m", "mitoseg.verify", "--probe", json.dumps(fixed)]
    env = {**(os.environ if environ is None else environ), "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(R.REPO_DIR), env=env)
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"{' '.join(cmd[:4])}: {err}"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line), " ".join(prefix)
            except json.JSONDecodeError:
                break
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return None, f"{' '.join(prefix)} exited {proc.returncode}: {tail[0][:200]}"


# --- checks ---------------------------------------------------------------------------------------
def check_environment(fixed: dict, environ=None) -> tuple[list[Row], dict]:
    result, where = run_probe(fixed, environ)
    if result is None:
        return [Row("training environment", FAIL, f"cannot run Python there: {where}")], {}
    rows = [Row("training environment", PASS, f"Python {result['python']} via {where}")]
    for mod, info in result["packages"].items():
        if info["ok"]:
            rows.append(Row(f"import {mod}", PASS, info["version"]))
        else:
            rows.append(Row(f"import {mod}", FAIL, info["error"]))
    if result["gpus"]:
        rows.append(Row("GPU", PASS, ", ".join(result["gpus"])))
    else:
        rows.append(Row("GPU", WARN, "TensorFlow sees no GPU: training runs on the CPU (fine for the demo, "
                                     "far too slow for the full study)"))
    for err in result["errors"]:
        rows.append(Row("environment", WARN, err))
    return rows, result.get("params", {})


def check_container(environ=None) -> list[Row]:
    env = os.environ if environ is None else environ
    image = env.get(R.CONTAINER_ENV)
    if not image:
        return [Row("container image", WARN, f"${R.CONTAINER_ENV} not set: jobs run plain python "
                                             f"(e.g. export {R.CONTAINER_ENV}={R.EXAMPLE_CONTAINER})")]
    if not Path(image).is_file():
        return [Row("container image", FAIL, f"${R.CONTAINER_ENV}={image} does not exist")]
    runtime = R.container_runtime()
    if runtime is None:
        return [Row("container image", FAIL, f"{image} exists but neither apptainer nor singularity is on PATH")]
    size = Path(image).stat().st_size / 2**30
    return [Row("container image", PASS, f"{image} ({size:.1f} GiB), runtime {runtime}")]


def _patch_counts(volume, patch_size: int, val_fraction: float, val_position: str) -> tuple[int, int]:
    from . import data
    train_idx, val_idx = data.split_slices(len(volume.images), val_fraction, val_position)
    _, h, w = volume.images.shape
    per_slice = (h // patch_size) * (w // patch_size)
    return len(train_idx) * per_slice, len(val_idx) * per_slice


def check_dataset(fixed: dict) -> list[Row]:
    from .config import TrainConfig
    cfg = TrainConfig.from_dict(dict(fixed))
    if not cfg.data_dir:
        # WARN, not PASS: a full study on the synthetic demo data is almost always a missing DATA_DIR.
        return [Row("dataset", WARN, f"no data folder: built-in synthetic EM data ({cfg.synthetic_slices} slices of "
                                     f"{cfg.synthetic_size}^2); set DATA_DIR or the grid's data_dir for real data")]
    try:
        from . import data
    except ImportError as err:
        return [Row("dataset", FAIL, f"cannot import mitoseg.data here ({err}); run with the project's Python")]
    try:
        train, test = data.load_dataset(cfg.data_dir)
    except data.DataError as err:   # missing files, shape mismatch, non-binary masks, empty masks
        return [Row("dataset", FAIL, str(err))]
    except Exception as err:  # noqa: BLE001 - unreadable files and the like
        return [Row("dataset", FAIL, f"{cfg.data_dir}: {type(err).__name__}: {err}"[:300])]
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
        n_train, n_val = _patch_counts(train, p, cfg.val_fraction, cfg.val_position)
    except data.DataError as err:
        rows.append(Row("patches", FAIL, str(err)))
        return rows
    max_bs = max(G.default_grid().batch_sizes)
    status = PASS if n_train >= max_bs and n_val > 0 else FAIL if n_train == 0 or n_val == 0 else WARN
    rows.append(Row("patches", status, f"{n_train} train + {n_val} val patches of {p}x{p} "
                                       f"({(h // p) * (w // p)} per slice, val fraction {cfg.val_fraction})"))
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


_PBS_RANGE = re.compile(r"^#PBS\s+-[Jt]\s+(\d+)-(\d+)\s*$", re.M)
_SLURM_RANGE = re.compile(r"^#SBATCH\s+(?:--array[=\s]|-a\s*)(\d+)-(\d+)\b", re.M)


def array_range(script, kind: str) -> Optional[tuple[int, int]]:
    text = Path(script).read_text()
    m = (_PBS_RANGE if kind == "pbs" else _SLURM_RANGE).search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_array_ranges(grid: G.GridConfig, pbs_script=None, slurm_script=None) -> list[Row]:
    rows = []
    for kind, script, directive in (("pbs", pbs_script, "#PBS -J"), ("slurm", slurm_script, "#SBATCH --array")):
        if not script:
            continue
        name = f"array range ({Path(script).name})"
        try:
            rng = array_range(script, kind)
        except OSError as err:
            rows.append(Row(name, FAIL, f"cannot read {script}: {err.strerror or err}"))
            continue
        if rng is None:
            rows.append(Row(name, FAIL, f"no '{directive} 0-N' line in {script}"))
        elif rng == (0, grid.size - 1):
            rows.append(Row(name, PASS, f"{directive} {rng[0]}-{rng[1]} = {grid.size} cells"))
        else:
            rows.append(Row(name, FAIL, f"{directive} {rng[0]}-{rng[1]} ({rng[1] - rng[0] + 1} elements) but the grid "
                                        f"has {grid.size} cells: use 0-{grid.size - 1} (or run_study.py submit)"))
    return rows


def run_checks(grid: G.GridConfig, output_root=".", pbs_script=None, slurm_script=None, environ=None,
               env_probe: bool = True) -> list[Row]:
    rows: list[Row] = []
    params: dict = {}
    if env_probe:
        env_rows, params = check_environment(grid.fixed, environ)
        rows += env_rows
    else:
        rows.append(Row("training environment", WARN, "not checked (--skip-env-probe)"))
    rows += check_container(environ)
    rows += check_dataset(grid.fixed)
    rows += check_output(output_root, grid, params)
    rows += check_array_ranges(grid, pbs_script, slurm_script)
    return rows


def check_grid_values(grid_config: Optional[str], data_dir: Optional[str] = None, demo: bool = False) -> list[Row]:
    """Types and ranges of the grid file and the data flag (mitoseg.grid.grid_problems): one FAIL row per
    problem, so a bad value is seen before anything is queued; one PASS row otherwise."""
    source = grid_config or ("the demo grid" if demo else "the default grid")
    if grid_config:
        try:
            raw = G.read_grid_json(grid_config)
        except (OSError, ValueError) as err:
            return [Row("grid values", FAIL, f"{grid_config}: not a readable grid config ({err})")]
        problems = G.grid_problems(raw)
        if problems:
            return [Row("grid values", FAIL, f"{grid_config}: {text}") for text in problems]
    try:
        grid = R.base_grid(grid_config, data_dir, demo)
    except ValueError as err:
        return [Row("grid values", FAIL, str(err))]
    return [Row("grid values", PASS, f"{source}: {grid.size} cells, every axis and fixed setting of the right "
                                     "type and range, no repeated values")]


def format_table(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = [f"{'check':<{width}}  result  detail", "-" * (width + 60)]
    lines += [f"{r.check:<{width}}  {r.status:<6}  {r.detail}" for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, WARN, FAIL)}
    lines.append(f"\n{counts[PASS]} PASS, {counts[WARN]} WARN, {counts[FAIL]} FAIL"
                 + (": fix the FAIL rows before submitting." if counts[FAIL] else ": ready to submit."))
    return "\n".join(lines)


def main(args) -> int:
    """`run_study.py verify` (args from its parser)."""
    value_rows = check_grid_values(args.grid_config, args.data_dir, args.demo)
    if any(r.status == FAIL for r in value_rows):
        print(format_table(value_rows), flush=True)
        return 1
    grid = R.base_grid(args.grid_config, args.data_dir, args.demo)
    print(f"Verifying the setup for a study of {grid.size} cells (fixed settings: {json.dumps(grid.fixed, sort_keys=True)})",
          flush=True)
    rows = run_checks(grid, args.output_root, args.pbs_script, args.slurm_script,
                      env_probe=not args.skip_env_probe)
    rows = value_rows + rows
    print(format_table(rows), flush=True)
    return 1 if any(r.status == FAIL for r in rows) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="probe the training environment (used by run_study.py verify)")
    parser.add_argument("--probe", required=True, help="the grid's fixed settings as JSON")
    ns = parser.parse_args()
    print(json.dumps(probe(json.loads(ns.probe))), flush=True)
