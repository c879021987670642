#!/usr/bin/env bash
# Print the interpreter for the oldest-stack tests: $OLDEST_PYTHON if set, else a Python 3.10
# (pyenv's, then one on PATH), else python3 (the README says which one ran).
set -euo pipefail
if [ -n "${OLDEST_PYTHON:-}" ]; then echo "$OLDEST_PYTHON"; exit 0; fi
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for candidate in $(ls -d "$root"/versions/3.10.*/bin/python 2>/dev/null | sort -V | tail -n 1) \
                 "$(command -v python3.10 || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; exit 0; fi
done
command -v python3
