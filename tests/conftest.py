"""Shared fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def oldest_python() -> str:
    """The interpreter of the oldest supported stack (run_tests.sh builds .venv-oldest/ and sets
    $MITOSEG_OLDEST_PYTHON). Under CI its absence is a failure, elsewhere a skip with the reason."""
    path = os.environ.get("MITOSEG_OLDEST_PYTHON") or str(Path(__file__).resolve().parents[1] / ".venv-oldest/bin/python")
    if not os.access(path, os.X_OK):
        message = f"no oldest-stack Python at {path}: run `bash run_tests.sh` (it builds .venv-oldest/)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
