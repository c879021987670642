"""The software environment a cell runs in: the one list of packages whose versions are recorded
(what a cell and the analysis import) and the probes that read them. A cell's results JSON gets
`environment_info()` (with `code`: the project's version and git commit, mitoseg/core/version.py); the pre-flight trial (mitoseg/cell/preflight.py) imports each package of the same
list and reports its version. Standard library only; TensorFlow is imported only to list the GPUs.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import socket
from typing import Optional

from mitoseg.core import env_vars as E
from mitoseg.core.version import version_info

# import name -> distribution name (for the version): what a cell and the analysis import
PACKAGES = {"tensorflow": "tensorflow", "keras": "keras", "numpy": "numpy", "focal_loss": "focal-loss",
            "tifffile": "tifffile", "PIL": "pillow", "scipy": "scipy", "pandas": "pandas",
            "matplotlib": "matplotlib", "statsmodels": "statsmodels", "h5py": "h5py", "tensorboard": "tensorboard"}


def package_version(distribution: str) -> str:
    """The installed version of a distribution; importlib.metadata.PackageNotFoundError when absent."""
    return md.version(distribution)


def installed_versions() -> dict:
    """{distribution name: version, or None when not installed} for every package of PACKAGES,
    read from the package metadata (nothing is imported)."""
    versions: dict[str, Optional[str]] = {}
    for dist in PACKAGES.values():
        try:
            versions[dist] = package_version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return versions


def environment_info() -> dict:
    """What a cell's results JSON records under "environment": the code (version, git commit),
    package versions, Python, host, platform, device (GPU names or CPU), CPU count and the
    scheduler's job id."""
    try:
        import tensorflow as tf
        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # pragma: no cover - reported, never fatal
        gpus = []
    return {"code": version_info(), "packages": installed_versions(), "python": platform.python_version(), "host": socket.gethostname(),
            "platform": platform.platform(), "device": ("GPU: " + ", ".join(gpus)) if gpus else "CPU",
            "cpu_count": os.cpu_count(),
            "scheduler_job_id": E.read("PBS_JOBID") or E.read("SLURM_JOB_ID")}
