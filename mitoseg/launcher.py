"""How a cell's Python is started: the repository's location, the TensorFlow container
($TF_CONTAINER run by apptainer/singularity, with the folders a cell needs bound) or this Python;
and how the scheduler's stop signals reach the training processes while they run.

Standard library only: an array element runs it with the *host* Python before the container.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

REPO_DIR = Path(__file__).resolve().parent.parent
CONTAINER_ENV = "TF_CONTAINER"          # path of the Singularity/Apptainer TensorFlow image
EXAMPLE_CONTAINER = "/apps/containers/tensorflow_2.16.1-cuda_12.5.0_24.06.sif"  # example only, site-specific


def container_runtime() -> Optional[str]:
    for name in ("apptainer", "singularity"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def study_binds(data_dir=None, study_dir=None) -> list[str]:
    """Host folders a cell reads or writes: the code, the study, the data. Apptainer mounts only the
    home and current folders by default, so anything else (a /scratch study, a /data stack) is
    invisible inside the container unless bound."""
    wanted = [REPO_DIR, study_dir, data_dir]
    out: list[str] = []
    for path in wanted:
        if path:
            text = str(Path(path).resolve())
            if text not in out:
                out.append(text)
    return out


def launcher(environ=None, binds: Iterable[str] = ()) -> tuple[list[str], Optional[str]]:
    """(command prefix that runs Python in the training environment, warning or None).

    $TF_CONTAINER set and present + apptainer/singularity found:
    `<runtime> exec --nv [--bind A,B] IMAGE python` (the image's Python: $CONTAINER_PYTHON, default
    `python`; $APPTAINER_BIND, if set, is honoured by apptainer itself). Otherwise this Python, with
    a warning."""
    env = os.environ if environ is None else environ
    image = env.get(CONTAINER_ENV)
    plain = [sys.executable]
    if not image:
        return plain, (f"warning: ${CONTAINER_ENV} is not set; running with {sys.executable} "
                       f"(set it to your TensorFlow image, e.g. {EXAMPLE_CONTAINER})")
    if not Path(image).is_file():
        return plain, f"warning: ${CONTAINER_ENV}={image} not found; running with {sys.executable}"
    runtime = container_runtime()
    if runtime is None:
        return plain, (f"warning: ${CONTAINER_ENV}={image} is set but neither apptainer nor singularity "
                       f"is on PATH (module load apptainer?); running with {sys.executable}")
    bind = ["--bind", ",".join(binds)] if binds else []
    return [runtime, "exec", "--nv", *bind, image, env.get("CONTAINER_PYTHON", "python")], None


@contextlib.contextmanager
def signals_forwarded(procs: Iterable) -> Iterator[None]:
    """While inside: SIGTERM/SIGINT sent to us (walltime, scancel, qdel) are passed on to every
    process of `procs`, so train_one.py can save its state and exit 3 (interrupted); SIGUSR1 (a
    pre-walltime warning, e.g. `#SBATCH --signal=B:USR1@300`) is passed on as SIGTERM."""
    procs = list(procs)

    def forward(signum, _frame):
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM if signum == signal.SIGUSR1 else signum)
            except OSError:
                pass
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        try:
            previous[sig] = signal.signal(sig, forward)
        except (ValueError, OSError):   # not the main thread
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
