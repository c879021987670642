#!/usr/bin/env bash
# Create a virtualenv and install a requirements file into it, once: reruns do nothing unless the
# file changed. Defaults: .venv/ from requirements.txt with python3 (the pinned, newest stack).
#   VENV=.venv-oldest REQUIREMENTS=requirements-oldest.txt PYTHON=python3.10 bash setup_env.sh
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
REQUIREMENTS=${REQUIREMENTS:-requirements.txt}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.requirements.sha256"
want=$( (sha256sum "$REQUIREMENTS"; "$PYTHON" --version) | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $VENV ($("$PYTHON" --version), packages from $REQUIREMENTS; a few minutes the first time)..."
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" --version)" != "$("$PYTHON" --version)" ]; then
  rm -rf "$VENV"   # made with another Python: start again
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS"
echo "$want" > "$stamp"
echo "environment ready: $VENV"
