"""Build step pyproject.toml cannot express: a wheel carries the job scripts (which live at the top
of the clone, where users `qsub` them) in mitoseg/jobs/, so `mitoseg-study submit` and `verify`
work from an installed package (mitoseg/study/commands.py), and the git commit it was built from in
mitoseg/build_info.json (mitoseg/core/version.py reads it when the code is not in a checkout)."""
import importlib.util
import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
JOB_SCRIPTS = ("pbs_hyperparameter_optimization.sh", "slurm_hyperparameter_optimization.sh",
               "pbs_setup_verification.sh", "slurm_setup_verification.sh")


def _version_module():
    """mitoseg/core/version.py loaded from this source tree (the build may not import the package)."""
    spec = importlib.util.spec_from_file_location("mitoseg_version", HERE / "mitoseg" / "core" / "version.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithJobScripts(build_py):
    def run(self):
        super().run()
        package = Path(self.build_lib) / "mitoseg"
        (package / "jobs").mkdir(parents=True, exist_ok=True)
        for name in JOB_SCRIPTS:
            shutil.copy2(HERE / name, package / "jobs" / name)
        commit, dirty = _version_module().git_state()
        (package / "build_info.json").write_text(json.dumps({"git_commit": commit, "git_dirty": dirty}) + "\n")


setup(cmdclass={"build_py": BuildWithJobScripts})
