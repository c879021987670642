"""How a cell's Python is started: the repository's location, the TensorFlow container
($TF_CONTAINER or the site profile's image, run by apptainer/singularity, with the folders a cell
needs bound; refused with one line when it cannot be used, never replaced by the host) or, when no
container is set, this Python;
and how the scheduler's stop signals reach the training processes while they run.

Standard library only: an array element runs it with the *host* Python before the container.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

from mitoseg.core import env_vars as E

REPO_DIR = Path(__file__).resolve().parents[2]   # the clone (this file is mitoseg/study/launcher.py)
CONTAINER_ENV = "TF_CONTAINER"          # the TensorFlow image: .sif file, sandbox folder or registry address
CONTAINER_PYTHON_ENV = "CONTAINER_PYTHON"   # the Python inside the image (default `python`)
EXAMPLE_CONTAINER = "/apps/containers/tensorflow_2.16.1-cuda_12.5.0_24.06.sif"  # example only, site-specific
# Addresses apptainer pulls itself (a path is checked here; an address only by the runtime).
IMAGE_SCHEMES = ("docker://", "docker-archive:", "docker-daemon:", "oras://", "library://", "shub://",
                 "oci-archive:", "https://", "http://")
PROBE_TIMEOUT_S = 900   # the first start of a docker:// address pulls and converts the image


class ContainerError(RuntimeError):
    """A container was asked for and cannot be used: one line naming it. Never a fall-back to the host."""


def container_runtime(environ=None) -> Optional[str]:
    path = E.read("PATH", environ)
    for name in ("apptainer", "singularity"):
        exe = shutil.which(name, path=path)
        if exe:
            return exe
    return None


def study_binds(data_dir=None, study_dir=None) -> list[str]:
    """Host folders a cell reads or writes: the code, the study, the data. Apptainer mounts only the home and current folders by default, so anything else (a
    /scratch study, a /data stack) is invisible inside the container unless bound."""
    wanted = [REPO_DIR, study_dir, data_dir]
    out: list[str] = []
    for path in wanted:
        if path:
            text = str(Path(path).resolve())
            if text not in out:
                out.append(text)
    return out


def container_choice(environ=None, site=None) -> tuple[Optional[str], str]:
    """(image or None, where it was set): $TF_CONTAINER wins over the site profile's `container`."""
    env = os.environ if environ is None else environ
    if E.read(CONTAINER_ENV, env):
        return E.read(CONTAINER_ENV, env), f"${CONTAINER_ENV}"
    if site is not None and site.container:
        return site.container, f"site profile {site.path}"
    return None, f"no container set (${CONTAINER_ENV} empty, no site profile container)"


def check_image(image: str, where: str, need_runtime: bool = True, environ=None) -> str:
    """The runtime that will run `image`; ContainerError when the image or a runtime is missing (no
    runtime and not `need_runtime`: a runtime's name, for a job whose module lines put it on PATH)."""
    if not image.startswith(IMAGE_SCHEMES):
        path = Path(image).expanduser()
        if not (path.is_file() or path.is_dir()):
            raise ContainerError(f"container {image} (from {where}) does not exist: not a .sif file, a sandbox "
                                 "folder or a docker:// / oras:// / library:// address; unset it to train with "
                                 "the host Python")
    runtime = container_runtime(environ)
    if not need_runtime:   # a job's module lines may put another one on PATH: looked up there, by name
        return os.path.basename(runtime) if runtime else "apptainer"
    if runtime is None:
        raise ContainerError(f"container {image} (from {where}) asked for, but neither apptainer nor singularity "
                             "is on PATH (module load apptainer?)")
    return runtime


def launcher(environ=None, binds: Iterable[str] = (), site=None, need_runtime: bool = True) -> tuple[list[str], str]:
    """(command prefix that runs Python in the training environment, one line saying which).

    A container set ($TF_CONTAINER, else the site profile's): `<runtime> exec --nv [--bind A,B]
    IMAGE python` (the image's Python: $CONTAINER_PYTHON, default `python`; $APPTAINER_BIND, if set,
    is honoured by apptainer itself); ContainerError when it cannot be used. None set: this Python,
    by choice."""
    env = os.environ if environ is None else environ
    image, where = container_choice(env, site)
    if not image:
        return [sys.executable], f"training with the host Python {sys.executable}: {where}"
    runtime = check_image(image, where, need_runtime, env)
    binds = list(binds) + [b for b in (site.binds if site is not None else []) if b not in binds]
    bind = ["--bind", ",".join(binds)] if binds else []
    python = E.read(CONTAINER_PYTHON_ENV, env)
    prefix = [runtime, "exec", "--nv", *bind, image, "python" if python is None else python]
    return prefix, f"container {image} (from {where}) via {runtime}"


def probe_container(prefix: list[str], env=None) -> str:
    """'python X.Y.Z at PATH' of the container's Python; ContainerError when the runtime cannot start it
    (a broken image, a bind source missing, no `python` inside)."""
    code = "import sys; print('python', sys.version.split()[0], 'at', sys.executable)"
    try:
        proc = subprocess.run([*prefix, "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env)
    except (OSError, subprocess.SubprocessError) as err:
        raise ContainerError(f"container {prefix[-2]}: {prefix[0]} could not start {prefix[-1]} ({err}); "
                             "nothing was trained") from None
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    if proc.returncode != 0 or not proc.stdout.startswith("python "):
        raise ContainerError(f"container {prefix[-2]}: {prefix[0]} could not start {prefix[-1]} (exit "
                             f"{proc.returncode}: {lines[-1].strip() if lines else 'no output'}); nothing was trained")
    return proc.stdout.strip()


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
