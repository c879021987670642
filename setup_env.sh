#!/usr/bin/env bash
# Create .venv/ and install requirements.txt into it, once: reruns do nothing unless
# requirements.txt changed. Usage: source-free; other scripts call `bash setup_env.sh`.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $VENV (Python packages from requirements.txt; a few minutes the first time)..."
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
echo "$want" > "$stamp"
echo "environment ready: $VENV"
