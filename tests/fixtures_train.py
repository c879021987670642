"""Real train_one.py runs for the tests: the tiny settings, and the cell that conftest.py's session
fixture `tiny_cell` trains once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY_TRAIN_ARGS = ["--epochs", "2", "--patch-size", "32", "--base-filters", "4", "--depth", "3",
                   "--synthetic-slices", "10", "--synthetic-size", "64"]
TINY_CELL_ARGS = ["--arch", "Attention_UNet", "--lr", "1e-3", "--batch-size", "4", "--seed", "3", "--deterministic",
                  *TINY_TRAIN_ARGS]
TINY_CELL_NAME = "exp_Attention_UNet_lr0.001_bs4_seed3"


@dataclass(frozen=True)
class TinyCell:
    out: Path                          # the --out-dir
    exp: Path                          # out / TINY_CELL_NAME
    proc: subprocess.CompletedProcess  # the train_one.py process (returncode, stdout, stderr)


def run_train_one(args, cwd=REPO, env=None, timeout=600) -> subprocess.CompletedProcess:
    """train_one.py in its own process, TensorFlow's start-up chatter off."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "train_one.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# A one-configuration study small enough to train with its confirmation stage in a test.
TINY_STUDY_GRID = {"architectures": ["UNet"], "learning_rates": [0.001], "batch_sizes": [8], "seeds": [1],
                   "fixed": {"epochs": 1, "base_filters": 4, "depth": 3, "patch_size": 64, "synthetic_slices": 16,
                             "synthetic_size": 64}}


def run_script(script, *args, cwd, timeout=900) -> subprocess.CompletedProcess:
    """One of the repository's scripts in its own process, as a user runs it from `cwd`."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          cwd=str(cwd), env=env, timeout=timeout)

