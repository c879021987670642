"""Which code produced a result: the project's version and, when the code runs from a git checkout,
its commit and whether the work tree was modified (results JSON `environment.code`, the analysis
outputs, `--version` of every command).

The version comes from the checkout's pyproject.toml when the package lives in one (a clone, or an
editable install: the installed metadata may belong to another copy), else from the installed
package's metadata. The commit comes from `git` when the package's parent folder is a git checkout
(its own `.git`, not one found further up: a virtualenv inside some repository is not that
repository's code), else from the build record a wheel built from a checkout carries
(mitoseg/build_info.json, written by setup.py), else None.

Standard library only (a login node's Python runs it).
"""
from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Optional

DISTRIBUTION = "mitoseg-hpo"
PACKAGE_DIR = Path(__file__).resolve().parents[1]   # mitoseg/ (this file is mitoseg/core/version.py)
CHECKOUT = PACKAGE_DIR.parent
BUILD_INFO = PACKAGE_DIR / "build_info.json"


def _git(*args: str) -> Optional[str]:
    """Output of `git -C CHECKOUT args`, or None when git is missing or refuses (e.g. a container
    without git, or a checkout owned by another user)."""
    try:
        proc = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state() -> tuple[Optional[str], Optional[bool]]:
    """(commit, work tree modified) of the checkout holding this package, or (None, None)."""
    if not (CHECKOUT / ".git").exists():
        return None, None
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None, None
    porcelain = _git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (None if porcelain is None else bool(porcelain.strip()))


def _checkout_version() -> Optional[str]:
    """The version in the checkout's pyproject.toml (tomllib is 3.11+: read the one key)."""
    try:
        text = (CHECKOUT / "pyproject.toml").read_text()
    except OSError:
        return None
    if f'name = "{DISTRIBUTION}"' not in text:
        return None
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return m.group(1) if m else None


def _build_record() -> dict:
    try:
        return json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=1)
def version_info() -> dict:
    """{"version": "0.3.0" or None, "git_commit": 40 hex digits or None, "git_dirty": bool or None}."""
    version = _checkout_version()
    if version is None:
        try:
            version = md.version(DISTRIBUTION)
        except md.PackageNotFoundError:
            version = None
    commit, dirty = git_state()
    if commit is None:
        built = _build_record()
        commit, dirty = built.get("git_commit"), built.get("git_dirty")
    return {"version": version, "git_commit": commit, "git_dirty": dirty}


def version_line(info: Optional[dict] = None) -> str:
    """'mitoseg-hpo 0.3.0 (git 1933160abcde, modified)': one line for --version and the reports."""
    info = info or version_info()
    if info["git_commit"] is None:
        where = "git commit unknown"
    else:
        where = f"git {info['git_commit'][:12]}" + {True: ", modified", False: "", None: ", modified?"}[info["git_dirty"]]
    return f"{DISTRIBUTION} {info['version'] or 'unknown version'} ({where})"
