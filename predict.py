#!/usr/bin/env python
"""Predict mitochondria with a trained model, or draw overlays of a study's best models.

Front-end of mitoseg.cli.predict (installed: the `mitoseg-predict` command); `python predict.py --help` lists the flags.
Kept free of newer syntax so that an old Python gets one line saying which Python is needed
(mitoseg/__init__.py) instead of a SyntaxError.
"""
import sys

from mitoseg.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
