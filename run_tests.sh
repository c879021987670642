#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs the tests twice, side by side.
#   1. .venv/ (requirements.txt: the newest supported stack, pinned): the whole suite.
#   2. .venv-oldest/ (requirements-oldest.txt: Python 3.10, TensorFlow 2.16.1, Keras 3.3.3, numpy 1.26,
#      the oldest end of pyproject.toml's range): the tests marked `oldest` (train, resume, predict,
#      analyse, pre-flight, models, versions).
# Also installs Debian's slurm-wlm for the real-scheduler tests. Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")"
# The three installs are independent and mostly wait for downloads and unpacking: run them side by
# side, then fail (after all have ended) if any failed; each prints its own error.
pids=()
bash setup_env.sh & pids+=($!)
VENV=.venv-oldest REQUIREMENTS=requirements-oldest.txt PYTHON="$(bash .ci/oldest_python.sh)" bash setup_env.sh & pids+=($!)
bash .ci/install_slurm.sh & pids+=($!)
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if [ "$failed" != 0 ]; then echo "error: setting up the test environment failed (see above)" >&2; exit 1; fi
export TF_CPP_MIN_LOG_LEVEL=3
export MITOSEG_OLDEST_PYTHON="$PWD/.venv-oldest/bin/python"   # the stand-in container's Python
# The two runs side by side (many tests wait on processes, schedulers and signals more than they
# compute); the oldest stack's output is printed after the newest's, and either failing fails.
oldest_log="$(mktemp)"
.venv-oldest/bin/python -m pytest -q -ra --durations=15 -p no:cacheprovider -m oldest tests "$@" > "$oldest_log" 2>&1 &
oldest_pid=$!
newest=0; .venv/bin/python -m pytest -q -ra --durations=15 tests "$@" || newest=$?
oldest=0; wait "$oldest_pid" || oldest=$?
echo "=== oldest supported stack: $(.venv-oldest/bin/python --version), tests marked 'oldest' ==="
cat "$oldest_log"; rm -f "$oldest_log"
if [ "$newest" != 0 ] || [ "$oldest" != 0 ]; then exit 1; fi
