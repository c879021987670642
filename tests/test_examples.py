"""Every grid file in examples/ is a valid grid with a comment block, says what it claims, and passes the
pre-flight check (directly and through both verification job scripts); examples/site_*.json are site
profiles (tests/test_site.py)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mitoseg.core import paths as P
from mitoseg.core import grid as G
from mitoseg.core.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.json") if not p.name.startswith("site_"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"gpu_full_study.json", "cpu_real_data_1h.json"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_a_valid_grid(path):
    raw = json.loads(path.read_text())
    assert isinstance(raw.get(G.COMMENT_KEY), list) and len(raw[G.COMMENT_KEY]) >= 3, "needs a comment block"
    grid = G.GridConfig.load(path)
    for cell in G.cells(grid):
        cell.train_config(grid).validate()
    assert "data_dir" not in grid.fixed, "the data folder comes from DATA_DIR / --data-dir, not the example"
    proc = subprocess.run([sys.executable, str(ROOT / "run_study.py"), "list", "--size", "--grid-config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and int(proc.stdout) == grid.size


def test_the_gpu_study_is_the_full_grid_with_three_seeds():
    grid = G.GridConfig.load(ROOT / "examples" / "gpu_full_study.json")
    full = TrainConfig()
    config = G.cells(grid)[0].train_config(grid)
    assert (config.patch_size, config.base_filters, config.depth, config.epochs) == \
        (full.patch_size, full.base_filters, full.depth, full.epochs) and config.augment
    default = G.default_grid()
    assert (grid.architectures, grid.learning_rates, grid.batch_sizes) == \
        (default.architectures, default.learning_rates, default.batch_sizes)
    assert len(grid.seeds) == 3 and grid.size == 108


def test_a_comment_key_is_accepted_but_must_be_text(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text(json.dumps({"_comment": {"not": "text"}, "seeds": [1]}))
    with pytest.raises(ValueError, match="_comment must be a string or a list of strings"):
        G.GridConfig.load(bad)
    bad.write_text(json.dumps({"_comments": "typo", "seeds": [1]}))
    with pytest.raises(ValueError, match="unknown grid key '_comments'"):
        G.GridConfig.load(bad)
    study = tmp_path / "study"
    G.init_study(study, G.GridConfig.load(ROOT / "examples" / "cpu_real_data_1h.json"))
    assert G.COMMENT_KEY not in json.loads((study / P.GRID_CONFIG_NAME).read_text())


@pytest.mark.parametrize("how", ["run_study.py", "pbs_setup_verification.sh", "slurm_setup_verification.sh"])
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_verify_passes_on_every_example(tmp_path, path, how):
    """The check a new user runs first: no FAIL on the project's own grids (the array range that
    `submit` sets is a note, the `_comment` key is the grid loader's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONTAINER", "DATA_DIR", "GRID_CONFIG", "MITOSEG_SITE")}
    env.update(PYTHON=sys.executable, HOME=str(tmp_path))
    cmd = ([sys.executable, str(ROOT / "run_study.py"), "verify"] if how == "run_study.py"
           else ["bash", str(ROOT / how)])
    proc = subprocess.run([*cmd, "--grid-config", str(path), "--skip-env-probe", "--output-root", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and " 0 FAIL" in proc.stdout, proc.stdout + proc.stderr
    assert re.search(r"^grid values\s+PASS", proc.stdout, re.M)
