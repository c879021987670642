#!/usr/bin/env bash
# The main job on its embedded default, on one machine: sets up .venv/, then runs the demo study
# (all 3 architectures x 2 learning rates at batch 8, 4 epochs, tiny models, built-in synthetic EM
# data) through the local runner (2 worker processes that import TensorFlow once), then its
# confirmation stage (each architecture's validation-selected configuration with 1 fresh seed x 3
# folds of the data split), then the analysis with the architecture comparison, and prints where the
# report is. About 3.5 min on an idle 2-core machine (bench/results/bench_demo_2026-12-05.md).
set -euo pipefail
cd "$(dirname "$0")"
bash setup_env.sh
exec .venv/bin/python run_study.py local --demo "$@"
