"""mitoseg: the U-Net hyperparameter study for mitochondria segmentation (README.md, "Code layout").

The login-node side (submission, status, the array element before the container) runs with the
host's Python, which on older clusters is 3.6 (RHEL 7/8). Every module below uses 3.8 syntax and
library calls, so the package checks the version here, before any of them is imported, and says so
in one line with exit code 2 (bad input) instead of a SyntaxError. This file and the front-ends
(run_study.py, ...) must therefore parse on old Pythons: no f-strings, no annotations here.
"""
import sys

MIN_PYTHON = (3, 8)

if sys.version_info < MIN_PYTHON:
    sys.stderr.write("error: mitoseg-hpo needs Python >= %d.%d (this is %s at %s)\n" % (
        MIN_PYTHON + (".".join(str(n) for n in sys.version_info[:3]), sys.executable)))
    sys.exit(2)

# The layers, bottom to top: one folder each, and a module imports only its own layer and the ones
# before it (each folder's __init__ says what it owns; tests/test_structure.py checks the imports).
LAYERS = ("core", "data", "cell", "analysis", "predict", "report", "study", "cli")
# The layers a login node's Python without numpy imports (submit, status, an array element before
# its container, the commands' --help).
STANDARD_LIBRARY_LAYERS = ("core", "study", "cli")
