#!/usr/bin/env python
"""Run a hyperparameter study on a scheduler or on this machine.

Front-end of mitoseg.cli.study (installed: the `mitoseg-study` command); `python run_study.py --help` lists the flags.
Kept free of newer syntax so that an old Python gets one line saying which Python is needed
(mitoseg/__init__.py) instead of a SyntaxError.
"""
import sys

from mitoseg.cli.study import main

if __name__ == "__main__":
    sys.exit(main())
