#!/usr/bin/env bash
# The main job on its embedded default, on one machine: sets up .venv/, then runs the demo study
# (all 3 architectures x 2 learning rates x 2 batch sizes, tiny models, built-in synthetic EM data)
# through the local runner, then its confirmation stage (each architecture's validation-selected
# configuration with 2 fresh seeds x 2 folds of the data split), then the analysis with the architecture comparison, and
# prints where the report is.
set -euo pipefail
cd "$(dirname "$0")"
bash setup_env.sh
exec .venv/bin/python run_study.py local --demo "$@"
