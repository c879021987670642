#!/usr/bin/env python
"""Analyse a hyperparameter study: summary CSV, figures, statistics and reports.

Front-end of mitoseg.cli.analyze (installed: the `mitoseg-analyze` command); `python analyze_hyperparameter_results.py --help` lists the flags.
Kept free of newer syntax so that an old Python gets one line saying which Python is needed
(mitoseg/__init__.py) instead of a SyntaxError.
"""
import sys

from mitoseg.cli.analyze import main

if __name__ == "__main__":
    sys.exit(main())
