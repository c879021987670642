#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine (Python packages into .venv/, and Debian's
# slurm-wlm for the real-scheduler tests), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash setup_env.sh
bash .ci/install_slurm.sh
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m pytest -q -ra tests "$@"
